"""Drafter node: HSD levels 0 (n-gram over prompt + passages + output, and earlier answers) and 1 (a cheap model with
the target's tokenizer) behind hola/draft. State is per request id, freed on CLOSE, and the
oldest open requests are evicted beyond max_open_requests (a verifier that died never closes)."""
import collections
import gc
import threading

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from hola_ros.core.engines import BACKENDS, DEVICES
from hola_ros.core.protocol import TargetCost
from hola_ros.interfaces import DRAFT
from hola_ros.nodes.base import HolaNode, run_node
from hola_ros.nodes.params import ACTIVATION, DTYPES, Param
from hola_ros.srv import Draft

PARAMS = {
    "ngram": Param(True, "level 0: n-gram / prompt-lookup drafts over prompt, passages and output",
                   applies=ACTIVATION),
    "answer_history_tokens": Param(20000, "level 0 also copies from the n-grams of earlier answers: the tokens of "
                                   "them it keeps (the older half dropped when full); 0: off",
                                   range=(0, 1000000), applies=ACTIVATION),
    "l1_model": Param("", "level 1: a model with the target's tokenizer (packaged name, Hugging Face directory, "
                      ".gguf) or a Lo-Bi artifact directory; empty: off", applies=ACTIVATION),
    "backend": Param("auto", "engine of the level-1 model: auto (onnxruntime for GGUFs), onnxruntime, torch, "
                     "tensorrt (Lo-Bi artifacts)", choices=BACKENDS, applies=ACTIVATION),
    "device": Param("cpu", "device of the level-1 model", choices=DEVICES, applies=ACTIVATION),
    "dtype": Param("float32", "dtype of the level-1 model", choices=DTYPES, applies=ACTIVATION),
    "threads": Param(2, "CPU threads of the level-1 model", range=(1, 256), applies=ACTIVATION),
    "max_open_requests": Param(32, "open request states kept; the oldest are evicted beyond it",
                               range=(1, 10000)),
}


class DrafterNode(HolaNode):
    def __init__(self, **node_options):
        super().__init__("hola_drafter", "drafter", PARAMS, **node_options)
        self._drafter = self._srv = None
        self._open: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._proposals = self._draft_s = 0.0

    def activate_resources(self) -> None:
        from hola_ros.core.drafters import LocalDrafter
        from hola_ros.core.engines import load_engine

        spec = self.param("l1_model")
        model = load_engine(spec, backend=self.param("backend"), dtype=self.param("dtype"), threads=self.param("threads"),
                            device=self.param("device"), drafter=True) if spec else None
        self._drafter = LocalDrafter(ngram=self.param("ngram"), model=model,
                                     history_tokens=self.param("answer_history_tokens"))
        self._srv = self.create_service(Draft, DRAFT, self._on_draft,
                                        callback_group=MutuallyExclusiveCallbackGroup())

    def deactivate_resources(self) -> None:
        if self._srv is not None:
            self.destroy_service(self._srv)
        with self._lock:
            for request_id in list(self._open):
                self._drafter.close(request_id)
            self._open.clear()
        self._drafter = self._srv = None
        gc.collect()

    def _on_draft(self, request, response):
        drafter = self._drafter
        if drafter is None:
            response.success, response.error = False, "the drafter is not active"
            return response
        rid = request.request_id
        try:
            with self._lock:
                if request.op == Draft.Request.OPEN:
                    if rid in self._open:
                        drafter.close(rid)
                    drafter.open(rid, list(request.tokens), target_cost(request))
                    self._open[rid] = None
                    while len(self._open) > self.param("max_open_requests"):
                        drafter.close(self._open.popitem(last=False)[0])
                elif request.op == Draft.Request.PROPOSE:
                    if rid not in self._open:
                        raise KeyError(f"unknown request id {rid!r} (not opened, closed, or evicted)")
                    proposal = drafter.propose(rid, list(request.tokens), int(request.max_tokens),
                                               request.target_row_s or None)
                    response.tokens = [int(t) for t in proposal.tokens]
                    response.levels = [int(lv) for lv in proposal.levels]
                    response.entropies = [float(e) for e in proposal.entropies]
                    response.draft_s = float(proposal.draft_s)
                    response.level_s = [float(x) for x in proposal.level_s]
                    self._proposals += 1
                    self._draft_s += proposal.draft_s
                elif request.op == Draft.Request.CLOSE:
                    if self._open.pop(rid, "absent") is None:
                        drafter.close(rid)
                else:
                    raise ValueError(f"unknown op {request.op}")
            response.success = True
        except Exception as exc:  # a bad call fails that call, never the node
            response.success, response.error = False, f"{type(exc).__name__}: {exc}"
        return response

    def telemetry_figures(self) -> dict:
        return {"active_requests": len(self._open), "requests_served": int(self._proposals),
                "tokens_per_s": self._proposals / self._draft_s if self._draft_s > 0 else 0.0}


def target_cost(request) -> TargetCost | None:
    """The target's costs an OPEN carries, if the verifier sent them."""
    if request.target_row_s <= 0 or not len(request.cost_rows):
        return None
    return TargetCost(float(request.target_row_s), dict(zip((int(b) for b in request.cost_rows),
                                                            (float(c) for c in request.cost_ratios))))


def main() -> int:
    return run_node(DrafterNode)


if __name__ == "__main__":
    raise SystemExit(main())
