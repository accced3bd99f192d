"""Verifier node: the gateway. Serves /hola/ask and /hola/generate, queues requests, runs the
target model (HSD level 2) and streams every answer on /hola/response."""
import gc
import time

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.qos import QoSProfile, ReliabilityPolicy

from hola_ros.action import Generate
from hola_ros.core.engines import BACKENDS, DEVICES
from hola_ros.core.requests import Limits, RequestError, validate_request
from hola_ros.core.scheduler import Busy, Job, Outcome, Scheduler
from hola_ros.msg import ResponseChunk
from hola_ros.nodes.base import HolaNode, run_node
from hola_ros.nodes.clients import ClientNode, RemoteDrafter, RemoteRetriever
from hola_ros.nodes.convert import stats_to_msg
from hola_ros.srv import Ask, Cancel

PARAMS = {
    "model": "qwen2.5-coder-0.5b-instruct",  # packaged name | .gguf path | HF model dir | Lo-Bi artifact dir
    "backend": "auto",                  # auto (onnxruntime for GGUFs) | onnxruntime | torch | tensorrt
    "device": "cpu",                    # cpu | cuda | auto
    "dtype": "float32",
    "threads": 2,
    "max_new_tokens_default": 128,
    "max_new_tokens_limit": 1024,
    "max_prompt_bytes": 16384,
    "queue_size": 8,
    "concurrency": 1,
    "use_drafter": True,
    "use_retriever": True,
    "draft_timeout_s": 2.0,
    "retrieve_timeout_s": 15.0,
    "entropy_gate_tau": 0.0,            # > 0: the paper's lossy gate (flagged lossy); 0 = lossless
}
CHECKS = {
    "backend": (lambda v: v in BACKENDS, f"one of {', '.join(BACKENDS)}"),
    "device": (lambda v: v in DEVICES, f"one of {', '.join(DEVICES)}"),
    "dtype": (lambda v: v in ("float32", "bfloat16", "float16"), "one of float32, bfloat16, float16"),
    "threads": (lambda v: 1 <= v <= 256, "must be in [1, 256]"),
    "max_new_tokens_default": (lambda v: v >= 1, "must be >= 1"),
    "max_new_tokens_limit": (lambda v: v >= 1, "must be >= 1"),
    "max_prompt_bytes": (lambda v: v >= 1, "must be >= 1"),
    "queue_size": (lambda v: 0 <= v <= 10000, "must be in [0, 10000]"),
    "concurrency": (lambda v: 1 <= v <= 64, "must be in [1, 64]"),
    "draft_timeout_s": (lambda v: 0 < v <= 600, "must be in (0, 600]"),
    "retrieve_timeout_s": (lambda v: 0 < v <= 600, "must be in (0, 600]"),
    "entropy_gate_tau": (lambda v: v >= 0, "must be >= 0"),
}
RESPONSE_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
# a burst of callers must queue in DDS until an executor thread takes each request (then the
# scheduler answers "busy"): the default depth of 10 would drop requests silently
REQUEST_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


class VerifierNode(HolaNode):
    def __init__(self):
        super().__init__("hola_verifier", "verifier", PARAMS, CHECKS)
        self._response_pub = self.create_publisher(ResponseChunk, "/hola/response", RESPONSE_QOS)
        self._model = self._scheduler = self._peers = None
        self._ask_srv = self._cancel_srv = self._action = None
        self._invalid = 0
        self._last = {"tokens_per_s": 0.0, "acceptance_rate": 0.0}

    def executor_threads(self) -> int:
        # every queued or running request holds one executor thread while its caller waits
        return self.param("queue_size") + self.param("concurrency") + 4

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
        self._peers = ClientNode("hola_verifier_clients")
        self._drafter = RemoteDrafter(self._peers, self.param("draft_timeout_s"))
        self._retriever = RemoteRetriever(self._peers, self.param("retrieve_timeout_s"))
        self._scheduler = Scheduler(self._handle, self.param("queue_size"), self.param("concurrency"),
                                    on_finished=self._finished)
        group = ReentrantCallbackGroup()
        self._ask_srv = self.create_service(Ask, "/hola/ask", self._on_ask, qos_profile=REQUEST_QOS,
                                            callback_group=group)
        self._cancel_srv = self.create_service(Cancel, "/hola/cancel", self._on_cancel, qos_profile=REQUEST_QOS,
                                               callback_group=group)
        self._action = ActionServer(self, Generate, "/hola/generate", execute_callback=self._on_goal,
                                    goal_callback=lambda _goal: GoalResponse.ACCEPT,
                                    cancel_callback=lambda _handle: CancelResponse.ACCEPT, callback_group=group)

    def deactivate_resources(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop("the verifier is shutting down; request not served")
        for service in (self._ask_srv, self._cancel_srv):
            if service is not None:
                self.destroy_service(service)
        if self._action is not None:
            self._action.destroy()
        if self._peers is not None:
            self._peers.close()
        self._model = self._scheduler = self._peers = self._ask_srv = self._cancel_srv = self._action = None
        gc.collect()

    # -- requests ---------------------------------------------------------------------------
    def _on_ask(self, request, response):
        outcome, request_id = self._serve(request)
        response.success, response.error, response.request_id = outcome.success, outcome.error, request_id
        response.text, response.stats = outcome.text, stats_to_msg(outcome.stats)
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

    def _on_goal(self, goal_handle):
        def feedback(job: Job, sequence: int, token_ids: list[int], text: str, new_tokens: int):
            goal_handle.publish_feedback(Generate.Feedback(
                request_id=job.request_id, sequence=sequence, text_delta=text,
                block_tokens=len(token_ids), new_tokens=new_tokens))

        outcome, request_id = self._serve(goal_handle.request, feedback, lambda: goal_handle.is_cancel_requested)
        if goal_handle.is_cancel_requested and outcome.stats.get("stop_reason") == "cancelled":
            goal_handle.canceled()
        elif outcome.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return Generate.Result(success=outcome.success, error=outcome.error, request_id=request_id,
                               text=outcome.text, stats=stats_to_msg(outcome.stats))

    def _serve(self, msg, feedback=None, cancel_requested=None) -> tuple[Outcome, str]:
        """Validate, queue, wait for the one outcome. Runs on an executor thread of the caller."""
        scheduler = self._scheduler
        if scheduler is None:
            return Outcome(False, "the verifier is not active"), msg.request_id
        try:
            request = validate_request(msg, self.limits())
        except RequestError as exc:
            self._invalid += 1
            return Outcome(False, f"invalid request: {exc}"), msg.request_id
        job = Job(request)
        job.sequence, job.new_tokens, job.feedback = 0, 0, feedback
        try:
            scheduler.submit(job)
        except (Busy, RequestError) as exc:
            return Outcome(False, str(exc)), request.request_id
        while job.wait(0.1) is None:
            if cancel_requested is not None and cancel_requested():
                scheduler.cancel(request.request_id)
        return job.wait(), request.request_id

    def _handle(self, job: Job) -> Outcome:
        from hola_ros.core.pipeline import answer

        def on_block(token_ids, text):
            job.new_tokens += len(token_ids)
            if job.feedback is not None:
                job.feedback(job, job.sequence, token_ids, text, job.new_tokens)
            if text:
                self._response_pub.publish(ResponseChunk(request_id=job.request_id, sequence=job.sequence,
                                                         text_delta=text))
                job.sequence += 1

        tau = self.param("entropy_gate_tau")
        return answer(job.request, self._model,
                      drafter=self._drafter if self.param("use_drafter") else None,
                      retrieve=self._retriever if self.param("use_retriever") else None,
                      on_block=on_block, should_stop=lambda: job.cancelled,
                      generation_options={"entropy_gate_tau": tau} if tau > 0 else None)

    def _finished(self, job: Job, outcome: Outcome) -> None:
        """Exactly once per accepted request: the final chunk, with the stats."""
        now = time.monotonic()
        outcome.stats["queue_s"] = (job.started_at or now) - job.submitted_at
        outcome.stats["total_s"] = now - job.submitted_at
        if outcome.success:
            self._last = {k: float(outcome.stats.get(k, 0.0)) for k in self._last}
        self._response_pub.publish(ResponseChunk(
            request_id=job.request_id, sequence=getattr(job, "sequence", 0), done=True,
            success=outcome.success, error=outcome.error, stats=stats_to_msg(outcome.stats)))

    def telemetry_figures(self) -> dict:
        s = self._scheduler
        return {**self._last, "queue_depth": s.queue_depth if s else 0, "active_requests": s.active if s else 0,
                "requests_served": s.served if s else 0, "requests_failed": s.failed if s else 0,
                "requests_rejected": (s.rejected if s else 0) + self._invalid}


def main() -> int:
    return run_node(VerifierNode)


if __name__ == "__main__":
    raise SystemExit(main())
