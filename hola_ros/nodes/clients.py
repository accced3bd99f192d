"""The verifier's view of the other nodes: the engine's Drafter protocol and retrieve() call over
ROS services, each call with a deadline, so a missing node means degraded service, never a hang."""
import json
import threading
import time

from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from hola_ros.core.protocol import DraftProposal, DrafterUnavailable
from hola_ros.srv import Draft, Retrieve

POLL_S = 0.05
GONE_GRACE_S = 0.5  # a server that left the graph (deactivated, killed) will not answer


class ClientNode:
    """A plain node with its own executor thread: replies to our calls are processed even while
    every thread of the gateway's executor is blocked serving requests."""

    def __init__(self, context_node_name: str):
        import rclpy

        # not the process's --ros-args: a global __node:= remap would give it the gateway's name
        self.node = rclpy.create_node(context_node_name, use_global_arguments=False)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{context_node_name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:  # SIGINT/SIGTERM: the process is stopping
            pass

    def call(self, client, request, timeout_s: float):
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

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=2)
        self.node.destroy_node()


class RemoteDrafter:
    """protocol.Drafter over /hola/draft."""

    def __init__(self, clients: ClientNode, timeout_s: float, service: str = "/hola/draft"):
        self._clients = clients
        self._client = clients.node.create_client(Draft, service)
        self._timeout_s = timeout_s

    def _call(self, op: int, request_id: str, tokens=(), max_tokens: int = 0):
        request = Draft.Request(op=op, request_id=request_id, tokens=[int(t) for t in tokens], max_tokens=max_tokens)
        response = self._clients.call(self._client, request, self._timeout_s)
        if response is None:
            raise DrafterUnavailable(f"drafter did not answer within {self._timeout_s:.1f} s")
        if not response.success:
            raise DrafterUnavailable(f"drafter error: {response.error}")
        return response

    def open(self, request_id: str, prompt_ids: list[int]) -> None:
        self._call(Draft.Request.OPEN, request_id, prompt_ids)

    def propose(self, request_id: str, accepted_delta: list[int], max_tokens: int) -> DraftProposal:
        r = self._call(Draft.Request.PROPOSE, request_id, accepted_delta, max_tokens)
        return DraftProposal(tokens=list(r.tokens), levels=list(r.levels),
                             entropies=[float(e) for e in r.entropies], draft_s=r.draft_s)

    def close(self, request_id: str) -> None:
        try:
            self._call(Draft.Request.CLOSE, request_id)
        except DrafterUnavailable:
            pass  # the drafter evicts abandoned requests itself


class RetrieverUnavailable(RuntimeError):
    pass


class RemoteRetriever:
    """retrieve(query, mode, budget) -> RetrievalDecision over /hola/retrieve."""

    def __init__(self, clients: ClientNode, timeout_s: float, service: str = "/hola/retrieve"):
        self._clients = clients
        self._client = clients.node.create_client(Retrieve, service)
        self._timeout_s = timeout_s

    def __call__(self, query: str, mode: str, budget: int | None = None):
        from hola_ros.core.retrieval.adacomp import Passage, RetrievalDecision

        request = Retrieve.Request(query=query, mode=mode, budget_tokens=-1 if budget is None else int(budget))
        response = self._clients.call(self._client, request, self._timeout_s)
        if response is None:
            raise RetrieverUnavailable(f"retriever did not answer within {self._timeout_s:.1f} s")
        if not response.success:
            raise RetrieverUnavailable(f"retriever error: {response.error}")
        return RetrievalDecision(level=int(response.level), score=float(response.complexity_score),
                                 passages=[Passage(text=p.text, source=p.source, score=float(p.score), tokens=int(p.tokens))
                                           for p in response.passages],
                                 context_tokens=int(response.context_tokens), retrievals=int(response.retrievals),
                                 detail=json.loads(response.detail_json) if response.detail_json else {})
