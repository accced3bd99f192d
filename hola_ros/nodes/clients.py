"""The verifier's view of the other nodes: the engine's Drafter protocol and retrieve() call over
ROS services, each call with a deadline, so a missing node means degraded service, never a hang.

The calls are made from the gateway's worker threads; the replies are taken by the gateway's own
executor (its handlers never block, so a thread is always free for them)."""
import json
import threading
import time
from typing import Callable

from hola_ros.core.protocol import DraftProposal, DrafterUnavailable, TargetCost
from hola_ros.interfaces import DRAFT, RETRIEVE
from hola_ros.nodes.convert import passage_from_msg
from hola_ros.srv import Draft, Retrieve

POLL_S = 0.05
GONE_GRACE_S = 0.5  # a server that left the graph (deactivated, killed) will not answer
PROBE_TIMEOUT_S = 5.0  # a readiness probe unanswered this long is dropped and sent again


def call_with_deadline(client, request, timeout_s: float):
    """The response, or None when the service is absent, leaves, or misses the deadline."""
    if not client.service_is_ready():
        return None
    done = threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _f: done.set())
    deadline = time.monotonic() + timeout_s
    gone_since = None
    while not done.wait(min(POLL_S, max(0.0, deadline - time.monotonic()))):
        now = time.monotonic()
        if client.service_is_ready():
            gone_since = None
        else:
            gone_since = gone_since or now
        if now >= deadline or (gone_since is not None and now - gone_since >= GONE_GRACE_S):
            client.remove_pending_request(future)
            return None
    return future.result()


class RemoteDrafter:
    """protocol.Drafter over hola/draft; `timeout_s()` is read at every call (a live parameter)."""

    def __init__(self, node, timeout_s: Callable[[], float], callback_group):
        self._client = node.create_client(Draft, DRAFT, callback_group=callback_group)
        self._timeout_s = timeout_s

    def _call(self, op: int, request_id: str, tokens=(), max_tokens: int = 0, **fields):
        request = Draft.Request(op=op, request_id=request_id, tokens=[int(t) for t in tokens], max_tokens=max_tokens,
                                **fields)
        timeout = self._timeout_s()
        response = call_with_deadline(self._client, request, timeout)
        if response is None:
            raise DrafterUnavailable(f"drafter did not answer within {timeout:.1f} s")
        if not response.success:
            raise DrafterUnavailable(f"drafter error: {response.error}")
        return response

    def open(self, request_id: str, prompt_ids: list[int], target: TargetCost | None = None) -> None:
        costs = {} if target is None else dict(
            target_row_s=float(target.row_s), cost_rows=[int(b) for b in target.curve],
            cost_ratios=[float(c) for c in target.curve.values()])
        self._call(Draft.Request.OPEN, request_id, prompt_ids, **costs)

    def propose(self, request_id: str, accepted_delta: list[int], max_tokens: int,
                target_row_s: float | None = None) -> DraftProposal:
        r = self._call(Draft.Request.PROPOSE, request_id, accepted_delta, max_tokens,
                       target_row_s=float(target_row_s or 0.0))
        return DraftProposal(tokens=list(r.tokens), levels=list(r.levels),
                             entropies=[float(e) for e in r.entropies], draft_s=r.draft_s,
                             level_s=[float(x) for x in r.level_s])

    def close(self, request_id: str) -> None:
        try:
            self._call(Draft.Request.CLOSE, request_id)
        except DrafterUnavailable:
            pass  # the drafter evicts abandoned requests itself


class RetrieverUnavailable(RuntimeError):
    pass


class RemoteRetriever:
    """retrieve(query, mode, budget) -> RetrievalDecision over hola/retrieve, and whether the
    retriever answers: `reachable` (its service is up and answered the last probe or call) and
    `answered` (it has answered this process at least once: the graph got past its start-up).
    The retriever creates its service only once its index is loaded and a warm-up retrieval ran,
    so an answer to a probe (mode off: no search) means its documents can be consulted."""

    def __init__(self, node, timeout_s: Callable[[], float], callback_group):
        self._client = node.create_client(Retrieve, RETRIEVE, callback_group=callback_group)
        self._timeout_s = timeout_s
        self.reachable = self.answered = False
        self._probe, self._probe_sent = None, 0.0

    def check(self) -> bool:
        """Called periodically: updates and returns `reachable`. A probe goes out only while the
        retriever is not known to answer, so a serving graph carries no probe traffic."""
        if not self._client.service_is_ready():
            self.reachable = False
            self._drop_probe()
        elif not self.reachable and self._probe is None:
            self._probe, self._probe_sent = self._client.call_async(
                Retrieve.Request(query="readiness probe", mode="off")), time.monotonic()
            self._probe.add_done_callback(self._probed)
        elif self._probe is not None and time.monotonic() - self._probe_sent > PROBE_TIMEOUT_S:
            self._drop_probe()
        return self.reachable

    def _probed(self, future) -> None:
        if future is self._probe:
            self._probe = None
            self._answer(future.result() is not None and future.result().success)

    def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            self._client.remove_pending_request(probe)

    def _answer(self, ok: bool) -> None:
        self.reachable = ok
        self.answered = self.answered or ok

    def __call__(self, query: str, mode: str, budget: int | None = None):
        from hola_ros.core.retrieval.adacomp import RetrievalDecision

        request = Retrieve.Request(query=query, mode=mode, budget_tokens=-1 if budget is None else int(budget))
        if not self._client.service_is_ready():
            self._answer(False)
            raise RetrieverUnavailable(f"the retriever is not serving: no {self._client.srv_name} service")
        timeout = self._timeout_s()
        response = call_with_deadline(self._client, request, timeout)
        self._answer(response is not None)
        if response is None:
            raise RetrieverUnavailable(f"retriever did not answer within {timeout:.1f} s")
        if not response.success:
            raise RetrieverUnavailable(f"retriever error: {response.error}")
        return RetrievalDecision(level=int(response.level), score=float(response.complexity_score),
                                 passages=[passage_from_msg(p) for p in response.passages],
                                 context_tokens=int(response.context_tokens), retrievals=int(response.retrievals),
                                 detail=json.loads(response.detail_json) if response.detail_json else {})
