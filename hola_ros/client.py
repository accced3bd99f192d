"""hola_ros.client: ask the HOLA node graph from robot code.

    client = HolaClient(node, namespace="robot1")        # None: the node's own namespace
    future = client.ask("Where is dock CD-5?", on_delta=print, timeout_s=60)
    ...                                                  # your executor spins `node`
    answer = future.result()                             # an Answer, never an exception

The client speaks the graph's public interfaces (hola/ask, the stream on hola/response, hola/cancel,
the verifier's hola/telemetry), so it needs nothing a plain ROS client lacks. Every ask ends with
exactly one Answer: the verifier's, or a clear failure when the service does not appear, the
deadline passes (the request is then cancelled on the verifier) or the verifier falls silent.
"""
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.task import Future

from hola_ros.interfaces import (ASK, CANCEL, DOCUMENTS, REQUEST_QOS, RESPONSE, RESPONSE_QOS, TELEMETRY, TELEMETRY_QOS,
                                 resolve)
from hola_ros.msg import ResponseChunk, Telemetry
from hola_ros.nodes.convert import msg_to_dict
from hola_ros.srv import Ask, Cancel, Documents

TICK_S = 0.1
FINAL_CHUNK_GRACE_S = 5.0   # the final chunk is published before the service answer; allow for reordering
ASK_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "retrieval_mode", "decoding_mode", "stop",
              "session_id", "system_prompt", "json_schema", "grammar", "grammar_syntax", "tools", "tool_choice")


@dataclass
class Answer:
    success: bool
    error: str = ""
    request_id: str = ""
    text: str = ""
    stats: dict = field(default_factory=dict)
    chunks: int = 0            # streamed chunks received, the final one included
    timed_out: bool = False    # no answer before the deadline (or the service never appeared)
    tool_calls: list = field(default_factory=list)  # [{"name": ..., "arguments": {...}}]: validated calls


def _as_json_text(value):
    """Ask fields that carry JSON take it as text or as Python data."""
    return value if isinstance(value, str) else json.dumps(value)


class VerifierLiveness:
    """Which verifier processes are alive, from their telemetry. A request's verifier that falls
    silent (killed, restarted, link down: DDS may keep a dead server "ready" for many seconds, and
    a respawned one answers only new requests) means the request died with it."""

    def __init__(self, silence_s: float):
        self.silence_s = silence_s
        self.last_seen: dict[str, float] = {}
        self.state: dict[str, str] = {}
        self.why_not_ready: dict[str, str] = {}
        self.watched: set[str] = set()

    def on_telemetry(self, msg) -> None:
        if msg.role == "verifier":
            self.last_seen[msg.instance_id] = time.monotonic()
            self.state[msg.instance_id] = msg.state
            self.why_not_ready[msg.instance_id] = "" if msg.ready else (msg.not_ready_reason or "not ready")

    def _alive(self) -> set[str]:
        now = time.monotonic()
        return {i for i, seen in list(self.last_seen.items()) if now - seen < self.silence_s}

    def active(self) -> bool:
        return any(self.state[i] == "active" for i in self._alive())

    def ready(self) -> bool:
        """A live verifier reports ready: active, and its retriever answers (or it uses none)."""
        return any(self.state[i] == "active" and not self.why_not_ready[i] for i in self._alive())

    def describe(self) -> str:
        states = sorted({self.state[i] + (f", not ready: {self.why_not_ready[i]}" if self.why_not_ready[i] else "")
                         for i in self._alive()})
        return f"verifier state: {'; '.join(states)}" if states else "no verifier telemetry"

    def watch_live(self) -> None:
        self.watched = self._alive()

    def gone(self) -> bool:
        now = time.monotonic()
        return bool(self.watched) and all(now - self.last_seen[i] > self.silence_s for i in self.watched)


class PendingAnswer(Future):
    """The future of one ask. result() is its Answer; deltas() yields the streamed text as it
    arrives and ends with the answer (another thread must be spinning the node meanwhile)."""

    def __init__(self, request_id: str, executor):
        super().__init__(executor=executor)
        self.request_id = request_id
        self._deltas: queue.SimpleQueue = queue.SimpleQueue()

    def deltas(self):
        while (text := self._deltas.get()) is not None:
            yield text


@dataclass
class _Request:
    msg: Ask.Request
    future: PendingAnswer
    deadline: float
    timeout_s: float
    on_delta: object = None
    deltas: list = field(default_factory=list)
    call: Future | None = None          # the hola/ask call once sent
    response: Ask.Response | None = None
    final_by: float = 0.0               # after the response: how long to wait for the final chunk
    final_seen: bool = False


class HolaClient:
    """Ask / stream / cancel against one graph. `namespace` is the graph's (as given to `hola-ros
    up --namespace`); None resolves the names in `node`'s own namespace. `liveness_s`: fail a
    request whose verifier sends no telemetry for that long (keep it above the telemetry period)."""

    def __init__(self, node, namespace: str | None = None, liveness_s: float = 10.0):
        self._node = node
        name = (lambda n: n) if namespace is None else (lambda n: resolve(n, namespace))
        self._lock = threading.Lock()
        self._pending: dict[str, _Request] = {}
        self._ready_waits: list[tuple[Future, float]] = []
        self._matched = False
        self.liveness = VerifierLiveness(liveness_s)
        group = MutuallyExclusiveCallbackGroup()
        self._ask = node.create_client(Ask, name(ASK), qos_profile=REQUEST_QOS, callback_group=group)
        self._cancel = node.create_client(Cancel, name(CANCEL), qos_profile=REQUEST_QOS, callback_group=group)
        self._documents = node.create_client(Documents, name(DOCUMENTS), callback_group=group)
        self.ask_service = node.resolve_service_name(name(ASK))
        self.documents_service = node.resolve_service_name(name(DOCUMENTS))
        # the stream is complete only if this subscription matched the verifier's publisher first
        self._subscriptions = [
            node.create_subscription(ResponseChunk, name(RESPONSE), self._on_chunk, RESPONSE_QOS, callback_group=group,
                                     event_callbacks=SubscriptionEventCallbacks(matched=self._on_matched)),
            node.create_subscription(Telemetry, name(TELEMETRY), self.liveness.on_telemetry, TELEMETRY_QOS,
                                     callback_group=group)]
        self._timer = node.create_timer(TICK_S, self._tick, callback_group=group)
        self._timer.cancel()  # runs only while requests are pending

    def ready(self) -> bool:
        """The graph is ready (its verifier is active and reports ready: the retriever answers, so
        document questions are grounded), serves hola/ask, and our stream subscription is connected."""
        return self._ask.service_is_ready() and self._matched and self.liveness.ready()

    def wait_ready(self, timeout_s: float = 300.0) -> Future:
        """A future that completes with True once `ready()`, or False after `timeout_s` (your
        executor spins the node meanwhile: `rclpy.spin_until_future_complete(node, future)`)."""
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        future = Future(executor=self._node.executor)
        with self._lock:
            self._ready_waits.append((future, time.monotonic() + timeout_s))
            self._timer.reset()
        return future

    def ask(self, prompt: str, *, timeout_s: float = 300.0, on_delta=None, request_id: str = "",
            **fields) -> PendingAnswer:
        """Send `prompt` once the graph is ready (within the timeout). `fields`: the other Ask
        request fields (max_new_tokens, temperature, top_p, top_k, seed, retrieval_mode,
        decoding_mode, stop, session_id, system_prompt, json_schema, grammar, grammar_syntax, tools,
        tool_choice; json_schema and tools also as Python data). `on_delta(text)` is called for each
        streamed piece."""
        unknown = sorted(set(fields) - set(ASK_FIELDS))
        if unknown:
            raise TypeError(f"unknown Ask field(s) {', '.join(unknown)}; known: {', '.join(ASK_FIELDS)}")
        for name in ("json_schema", "tools"):
            if name in fields:
                fields[name] = _as_json_text(fields[name])
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        msg = Ask.Request(prompt=prompt, request_id=request_id or uuid.uuid4().hex, **fields)
        future = PendingAnswer(msg.request_id, self._node.executor)
        with self._lock:
            if msg.request_id in self._pending:
                raise ValueError(f"request id {msg.request_id!r} is already pending in this client")
            self._pending[msg.request_id] = _Request(msg, future, time.monotonic() + timeout_s, timeout_s, on_delta)
            self._timer.reset()
        return future

    def cancel(self, request: "PendingAnswer | str") -> Future:
        """Ask the verifier to cancel (queued or running); the ask's future then completes with
        error 'cancelled' and the partial text. Returns the future of the hola/cancel call."""
        request_id = request.request_id if isinstance(request, PendingAnswer) else str(request)
        return self._cancel.call_async(Cancel.Request(request_id=request_id))

    def documents(self, op: str, paths=()) -> Future:
        """Change what the graph answers from while it runs: `op` add (ingest files or folders into
        the retriever's index), remove (drop indexed files at or under the paths) or list. The
        future's result is the hola/documents response (success, error, added, replaced, removed,
        sources, total_passages, ...); the paths are on the retriever's machine."""
        if op not in ("add", "remove", "list"):
            raise ValueError(f"unknown op {op!r}: use add, remove or list")
        if not self._documents.service_is_ready():  # a request sent before discovery would be lost
            future = Future(executor=self._node.executor)
            future.set_result(Documents.Response(success=False, error=f"service {self.documents_service} is not "
                                                 "available (is the retriever running and active?)"))
            return future
        return self._documents.call_async(Documents.Request(op=op, paths=[str(p) for p in paths]))

    def destroy(self) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for request in pending:
            self._finish(request, Answer(False, "the client was destroyed", request.msg.request_id))
        for future, _deadline in self._ready_waits:
            if not future.done():
                future.set_result(False)
        self._node.destroy_timer(self._timer)
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._node.destroy_client(self._ask)
        self._node.destroy_client(self._cancel)
        self._node.destroy_client(self._documents)

    # -- callbacks ----------------------------------------------------------------------------
    def _on_matched(self, info) -> None:
        self._matched = info.current_count > 0

    def _on_chunk(self, msg) -> None:
        with self._lock:
            request = self._pending.get(msg.request_id)
            if request is None:
                return
            if msg.done:
                request.final_seen = True
            elif msg.text_delta:
                request.deltas.append(msg.text_delta)
        if request is not None and msg.text_delta and not msg.done:
            request.future._deltas.put(msg.text_delta)
            if request.on_delta is not None:
                try:
                    request.on_delta(msg.text_delta)
                except Exception as exc:  # the caller's display failing must not lose the answer
                    self._node.get_logger().error(f"on_delta raised {type(exc).__name__}: {exc}")

    def _tick(self) -> None:
        now = time.monotonic()
        ready = self.ready()
        with self._lock:
            requests = list(self._pending.values())
            waits, self._ready_waits = self._ready_waits, [(f, t) for f, t in self._ready_waits
                                                           if not ready and now < t and not f.done()]
            if not requests and not self._ready_waits:
                self._timer.cancel()
        for future, deadline in waits:
            if not future.done() and (ready or now >= deadline):
                future.set_result(ready)
        for request in requests:
            answer = self._advance(request, now)
            if answer is not None:
                self._finish(request, answer)

    def _advance(self, request: _Request, now: float) -> Answer | None:
        """The request's next step; its Answer once it is over."""
        rid = request.msg.request_id
        if request.call is None:
            if self.ready():
                self.liveness.watch_live()
                request.call = self._ask.call_async(request.msg)
            elif now >= request.deadline:
                return Answer(False, self._not_ready_reason(request.timeout_s), rid, timed_out=True)
            return None
        if request.response is None and request.call.done():
            request.response = request.call.result()
            accepted = request.response.success or request.deltas  # accepted requests end with a final chunk
            request.final_by = min(request.deadline, now + FINAL_CHUNK_GRACE_S) if accepted else now
        if request.response is not None:
            return self._answer(request) if request.final_seen or now >= request.final_by else None
        if now >= request.deadline:
            self._abandon(request)
            return Answer(False, f"no answer within {request.timeout_s:g} s (request cancelled on the verifier)",
                          rid, "".join(request.deltas), timed_out=True)
        if self.liveness.gone():
            self._abandon(request)
            return Answer(False, f"the verifier went away before answering (no telemetry for "
                                 f"{self.liveness.silence_s:g} s: node stopped, restarted or unreachable)",
                          rid, "".join(request.deltas))
        return None

    def _not_ready_reason(self, timeout_s: float) -> str:
        if not self._ask.service_is_ready():
            return (f"service {self.ask_service} not available within {timeout_s:g} s "
                    "(is the graph running? start it with `hola-ros up`)")
        return f"the graph was not ready within {timeout_s:g} s ({self.liveness.describe()})"

    def _abandon(self, request: _Request) -> None:
        self._ask.remove_pending_request(request.call)
        self._cancel.call_async(Cancel.Request(request_id=request.msg.request_id))  # best effort

    def _answer(self, request: _Request) -> Answer:
        r = request.response
        chunks = len(request.deltas) + (1 if request.final_seen else 0)
        calls = [{"name": c.name, "arguments": json.loads(c.arguments_json or "{}")} for c in r.tool_calls]
        return Answer(r.success, r.error, r.request_id, r.text, msg_to_dict(r.stats), chunks, tool_calls=calls)

    def _finish(self, request: _Request, answer: Answer) -> None:
        with self._lock:
            self._pending.pop(request.msg.request_id, None)
        if answer.chunks == 0:
            answer.chunks = len(request.deltas) + (1 if request.final_seen else 0)
        request.future._deltas.put(None)
        request.future.set_result(answer)
