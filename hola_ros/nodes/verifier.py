"""Verifier node: the gateway. Serves hola/ask, hola/generate and hola/cancel, queues requests,
runs the target model (HSD level 2) and streams every answer on hola/response.

No request holds an executor thread while it waits: a handler validates and queues its job, then
awaits the job's future, which a scheduler worker completes; the executor's few threads stay free
for new requests, cancels, lifecycle, parameters and the replies of the drafter and retriever."""
import gc
import time

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from hola_ros.action import Generate
from hola_ros.core.engines import BACKENDS, DEVICES
from hola_ros.core.kvcache import PromptCache
from hola_ros.core.requests import Limits, RequestError, validate_request
from hola_ros.core.scheduler import Busy, Job, Outcome, Scheduler
from hola_ros.core.sessions import Conversations, SessionBusy
from hola_ros.interfaces import ASK, CANCEL, GENERATE, REQUEST_QOS, RESPONSE, RESPONSE_QOS
from hola_ros.msg import ResponseChunk
from hola_ros.nodes.base import HolaNode, run_node
from hola_ros.nodes.clients import RemoteDrafter, RemoteRetriever
from hola_ros.nodes.convert import stats_to_msg, tool_calls_to_msg
from hola_ros.nodes.params import ACTIVATION, DTYPES, Param
from hola_ros.srv import Ask, Cancel

READINESS_PERIOD_S = 0.5  # how often the verifier checks that the retriever answers

PARAMS = {
    "model": Param("qwen2.5-coder-0.5b-instruct", "served model: packaged name, .gguf file, Hugging Face model "
                   "directory or Lo-Bi artifact directory", applies=ACTIVATION),
    "backend": Param("auto", "engine: auto (onnxruntime for GGUFs, quantized weights), onnxruntime, torch, "
                     "tensorrt (Lo-Bi artifacts)", choices=BACKENDS, applies=ACTIVATION),
    "device": Param("cpu", "device of the target", choices=DEVICES, applies=ACTIVATION),
    "dtype": Param("float32", "dtype of the target's weights on the torch backend", choices=DTYPES,
                   applies=ACTIVATION),
    "threads": Param(2, "CPU threads of the target", range=(1, 256), applies=ACTIVATION),
    "max_new_tokens_default": Param(128, "new tokens of a request that asks for -1", range=(1, 131072)),
    "max_new_tokens_limit": Param(1024, "requests asking for more new tokens are refused", range=(1, 131072)),
    "max_prompt_bytes": Param(16384, "longer prompts are refused", range=(1, 16 * 2**20)),
    "queue_size": Param(8, "requests waiting beyond those decoding; a request beyond both gets a busy answer",
                        range=(0, 10000)),
    "concurrency": Param(1, "requests decoding at once (worker threads)", range=(1, 64), applies=ACTIVATION),
    "use_drafter": Param(True, "consult the drafter node (HSD); false: plain decoding"),
    "use_retriever": Param(True, "consult the retriever node; false: no retrieval"),
    "draft_timeout_s": Param(2.0, "deadline of one draft call; missed: decoding goes on without drafts, "
                             "flagged degraded", range=(0.001, 600.0)),
    "retrieve_timeout_s": Param(15.0, "deadline of one retrieval call; missed: the answer says the documents "
                                "could not be consulted (or, with ungrounded_fallback, comes without them), "
                                "flagged degraded", range=(0.001, 600.0)),
    "ready_wait_s": Param(30.0, "while the graph starts (the retriever has not answered yet), a question that needs "
                          "the documents waits this long from its arrival for the retriever, then is refused "
                          "as not ready", range=(0.0, 3600.0)),
    "ungrounded_fallback": Param(False, "when the documents cannot be consulted (retriever down, failing or late), "
                                 "answer from the model alone, flagged retriever_unavailable; false: answer that "
                                 "the documents could not be consulted"),
    "general_prompt": Param("", "system prompt of questions answered without documents (retrieval level 0); "
                            "empty: the chat template's default"),
    "document_lookup": Param(True, "a question about a code (E-214, CD-5) that keys a retrieved table row, or "
                             "one that a retrieved FAQ entry asks, is answered with that row or entry, "
                             "without a generation (stop reason table_row / faq_entry)"),
    "prompt_cache_entries": Param(4, "KV states of earlier prompts kept so that a prompt prefills only what it "
                                  "does not share with them (the system turn); 0: off", range=(0, 1024),
                                  applies=ACTIVATION),
    "prompt_cache_tokens": Param(2048, "tokens those KV states hold in all (least recently used dropped first)",
                                 range=(1, 1048576), applies=ACTIVATION),
    "max_sessions": Param(16, "conversations (requests' session_id) kept: their turns, and their KV state in the "
                          "prompt cache; the least recently used is dropped beyond this", range=(1, 100000),
                          applies=ACTIVATION),
    "session_max_tokens": Param(4096, "tokens of earlier turns a conversation keeps (oldest turns dropped first)",
                                range=(1, 1048576), applies=ACTIVATION),
    "entropy_gate_tau": Param(0.0, "> 0: the paper's lossy entropy gate (answers flagged lossy); 0: lossless",
                              range=(0.0, 100.0)),
}


class GatewayJob(Job):
    """A scheduler job with what the gateway streams and the future its handler awaits."""

    def __init__(self, request, future, feedback=None):
        super().__init__(request)
        self.future, self.feedback = future, feedback
        self.sequence = self.new_tokens = 0
        self.conversation = None  # sessions.Conversation of a request with a session_id


class VerifierNode(HolaNode):
    def __init__(self, **node_options):
        super().__init__("hola_verifier", "verifier", PARAMS, **node_options)
        self._response_pub = self.create_publisher(ResponseChunk, RESPONSE, RESPONSE_QOS)
        self._model = self._scheduler = self._prompt_cache = self._conversations = None
        self._invalid = 0
        self._last = {"tokens_per_s": 0.0, "acceptance_rate": 0.0}
        # the interfaces live as long as the process: while not active they answer so, at once
        requests = ReentrantCallbackGroup()
        self.create_service(Ask, ASK, self._on_ask, qos_profile=REQUEST_QOS, callback_group=requests)
        self.create_service(Cancel, CANCEL, self._on_cancel, qos_profile=REQUEST_QOS, callback_group=requests)
        self._action = ActionServer(self, Generate, GENERATE, execute_callback=self._on_goal,
                                    goal_callback=lambda _goal: GoalResponse.ACCEPT,
                                    cancel_callback=self._on_cancel_goal, callback_group=requests)
        peers = ReentrantCallbackGroup()
        self._drafter = RemoteDrafter(self, lambda: self.param("draft_timeout_s"), peers)
        self._retriever = RemoteRetriever(self, lambda: self.param("retrieve_timeout_s"), peers)
        self.create_timer(READINESS_PERIOD_S, self._watch_retriever, callback_group=peers)

    def _watch_retriever(self) -> None:
        if self.state_label == "active" and self.param("use_retriever"):
            self._retriever.check()

    def not_ready_reason(self) -> str:
        why = super().not_ready_reason()
        if not why and self.param("use_retriever") and not self._retriever.reachable:
            return ("the retriever does not answer (starting, or down)" if self._retriever.answered
                    else "waiting for the retriever (the documents are not loaded yet)")
        return why

    def limits(self) -> Limits:
        return Limits(max_new_tokens_default=self.param("max_new_tokens_default"),
                      max_new_tokens_limit=self.param("max_new_tokens_limit"),
                      max_prompt_bytes=self.param("max_prompt_bytes"))

    def activate_resources(self) -> None:
        from hola_ros.core.engines import load_engine

        self._model = load_engine(self.param("model"), backend=self.param("backend"), dtype=self.param("dtype"),
                                  threads=self.param("threads"), device=self.param("device"))
        if not self._model.info.get("row_invariant"):
            self.get_logger().warning(f"{self._model.name}: verified blocks are not bitwise equal to one-token steps "
                                      "on this engine; greedy HSD answers are flagged exact: false")
        entries = self.param("prompt_cache_entries")
        self._prompt_cache = PromptCache(self._model, entries, self.param("prompt_cache_tokens")) if entries else None
        cache = self._prompt_cache
        self._conversations = Conversations(self.param("max_sessions"), self.param("session_max_tokens"),
                                            on_evict=cache.drop if cache is not None else None,
                                            count_tokens=lambda text: len(self._model.encode(text)))
        self._scheduler = Scheduler(self._handle, self.param("queue_size"), self.param("concurrency"),
                                    on_finished=self._finished)

    def deactivate_resources(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop("the verifier is shutting down; request not served")
        if self._prompt_cache is not None:
            self._prompt_cache.clear()
        self._model = self._scheduler = self._prompt_cache = self._conversations = None
        gc.collect()

    def parameters_changed(self, names: set[str]) -> None:
        if "queue_size" in names and self._scheduler is not None:
            self._scheduler.set_queue_size(self.param("queue_size"))

    # -- requests ---------------------------------------------------------------------------
    async def _on_ask(self, request, response):
        outcome, request_id = await self._serve(request)
        response.success, response.error, response.request_id = outcome.success, outcome.error, request_id
        response.text, response.stats = outcome.text, stats_to_msg(outcome.stats)
        response.tool_calls = tool_calls_to_msg(outcome.tool_calls)
        return response

    def _on_cancel(self, request, response):
        scheduler = self._scheduler
        if scheduler is None:
            response.success, response.error = False, "the verifier is not active"
        elif scheduler.cancel(request.request_id):
            response.success = True
        else:
            response.success, response.error = False, f"no request with id {request.request_id!r} is queued or running"
        return response

    async def _on_goal(self, goal_handle):
        goal = goal_handle.request
        # the goal's own id names the request when the caller gave none, so a cancel can find it
        goal.request_id = goal.request_id or bytes(goal_handle.goal_id.uuid).hex()

        def feedback(job: GatewayJob, token_ids: list[int], text: str):
            goal_handle.publish_feedback(Generate.Feedback(
                request_id=job.request_id, sequence=job.sequence, text_delta=text,
                block_tokens=len(token_ids), new_tokens=job.new_tokens))

        outcome, request_id = await self._serve(goal, feedback)
        if goal_handle.is_cancel_requested and outcome.stats.get("stop_reason") == "cancelled":
            goal_handle.canceled()
        elif outcome.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return Generate.Result(success=outcome.success, error=outcome.error, request_id=request_id,
                               text=outcome.text, stats=stats_to_msg(outcome.stats),
                               tool_calls=tool_calls_to_msg(outcome.tool_calls))

    def _on_cancel_goal(self, goal_handle) -> CancelResponse:
        if self._scheduler is not None:
            self._scheduler.cancel(goal_handle.request.request_id)
        return CancelResponse.ACCEPT

    async def _serve(self, msg, feedback=None) -> tuple[Outcome, str]:
        """Validate, queue, and await the one outcome (or the reason it was not queued)."""
        scheduler = self._scheduler
        if scheduler is None or self.state_label != "active":
            return Outcome(False, f"not ready: the verifier is not active (state: {self.state_label})"), msg.request_id
        try:
            request = validate_request(msg, self.limits())
        except RequestError as exc:
            self._invalid += 1
            return Outcome(False, f"invalid request: {exc}"), msg.request_id
        job = GatewayJob(request, self.executor.create_future(), feedback)
        try:
            if request.session_id:
                job.conversation = self._conversations.begin(request.session_id, request.system_prompt)
            scheduler.submit(job)
        except (Busy, RequestError, SessionBusy) as exc:
            if job.conversation is not None:
                self._conversations.end(job.conversation)
            return Outcome(False, str(exc)), request.request_id
        return await job.future, request.request_id

    def _handle(self, job: GatewayJob) -> Outcome:
        """Runs on a scheduler worker thread."""
        from hola_ros.core.pipeline import answer

        refused = self._await_documents(job)
        if refused is not None:
            return refused

        def on_block(token_ids, text):
            job.new_tokens += len(token_ids)
            if job.feedback is not None:
                job.feedback(job, token_ids, text)
            if text:
                self._response_pub.publish(ResponseChunk(request_id=job.request_id, sequence=job.sequence,
                                                         text_delta=text))
                job.sequence += 1

        tau = self.param("entropy_gate_tau")
        return answer(job.request, self._model,
                      drafter=self._drafter if self.param("use_drafter") else None,
                      retrieve=self._retriever if self.param("use_retriever") else None,
                      on_block=on_block, should_stop=lambda: job.cancelled,
                      generation_options={"entropy_gate_tau": tau} if tau > 0 else None,
                      general_prompt=self.param("general_prompt"), document_lookup=self.param("document_lookup"),
                      prompt_cache=self._prompt_cache, ungrounded_fallback=self.param("ungrounded_fallback"),
                      conversation=job.conversation)

    def _await_documents(self, job: GatewayJob) -> Outcome | None:
        """While the graph starts (the retriever has never answered this verifier), a question that
        may need the documents waits for the retriever up to ready_wait_s from its arrival, then is
        refused as not ready: never answered from the model's memory because a node was still
        loading. None: go on. (Later, a missing retriever gets the documents-unavailable answer.)"""
        if (job.request.retrieval_mode == "off" or not self.param("use_retriever") or self._retriever.answered
                or self.param("ungrounded_fallback")):
            return None
        deadline = job.submitted_at + self.param("ready_wait_s")
        while not self._retriever.reachable and not job.cancelled and time.monotonic() < deadline:
            time.sleep(READINESS_PERIOD_S / 5)
        if self._retriever.reachable:
            return None
        if job.cancelled:
            return Outcome(False, "cancelled", stats={"stop_reason": "cancelled"})
        waited = time.monotonic() - job.submitted_at
        return Outcome(False, f"not ready: the documents are not loaded yet (no answer from the retriever in "
                              f"{waited:.0f} s); ask again once `hola-ros status` shows the graph ready",
                       stats={"stop_reason": "not_ready", "flags": ["not_ready"], "retrieval_level": -1})

    def _finished(self, job: GatewayJob, outcome: Outcome) -> None:
        """Exactly once per accepted request: the final chunk, then the awaiting handler resumes."""
        now = time.monotonic()
        outcome.stats["queue_s"] = (job.started_at or now) - job.submitted_at
        outcome.stats["total_s"] = now - job.submitted_at
        if job.conversation is not None and self._conversations is not None:
            self._conversations.end(job.conversation)
            outcome.stats["session"] = {"id": job.conversation.session_id, "turns": len(job.conversation.turns) // 2}
        if outcome.success:
            self._last = {k: float(outcome.stats.get(k, 0.0)) for k in self._last}
        self._response_pub.publish(ResponseChunk(
            request_id=job.request_id, sequence=job.sequence, done=True,
            success=outcome.success, error=outcome.error, stats=stats_to_msg(outcome.stats)))
        job.future.set_result(outcome)
        executor = self.executor
        if executor is not None:
            executor.wake()  # a future completed off the executor does not wake it by itself

    def telemetry_figures(self) -> dict:
        s = self._scheduler
        return {**self._last, "queue_depth": s.queue_depth if s else 0, "active_requests": s.active if s else 0,
                "requests_served": s.served if s else 0, "requests_failed": s.failed if s else 0,
                "requests_rejected": (s.rejected if s else 0) + self._invalid}


def main() -> int:
    return run_node(VerifierNode)


if __name__ == "__main__":
    raise SystemExit(main())
