"""KB evaluation: questions over a document index, judged by accepted answer fragments.

Data: JSONL, one question per line:
  id        unique id
  kind      single (one fact), multi (several facts), unanswerable (about the documents' subject,
            answer not in them: a correct answer says so), general (not about the documents:
            greetings, arithmetic, general knowledge)
  split     tune or heldout (thresholds and prompts are tuned on one, figures reported on the other)
  question  the question
  answer    a reference answer (for reading, and for the gradient gate's NLL calibration)
  accept    answer fragments that must all occur in the answer; plain text = substring, "re:..." =
            regular expression; case-insensitive, whitespace-normalised
  facts     fragments (same syntax) that must occur in the context given to the model: the gold
            passage's facts, for retrieval recall

Configurations are retrieval modes of the same pipeline (`pipeline.answer`, the verifier's path):
off, single, multi, auto (the retriever's default gate) and auto_gradient (the paper's gradient
gate on `gate_model`). Rows go to <out>/results.jsonl (resumable, as the other evals).
"""
from __future__ import annotations

import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

KINDS = ("single", "multi", "unanswerable", "general")
SPLITS = ("tune", "heldout", "all")
KB_CONFIGS = ("off", "single", "multi", "auto", "auto_gradient")
# a plain statement that the documents do not hold the answer
REFUSAL = re.compile(
    r"(documents?|manual|context|passages?|texts?|information)\b[^.]{0,40}?\b(do(es)?\s*n[o']?t|not|no|never)\b"
    r"[^.]{0,30}?\b(say|said|contain|mention|cover|include|specify|provide|state|give|list|answer|information)"
    r"|\bnot (in|covered by|mentioned in|stated in|found in|specified in|given in) the (documents?|context|manual)"
    r"|\bno (information|mention|details?)\b|\bI (do not|don't|cannot|can't) (know|find|say)\b", re.IGNORECASE)


@dataclass
class KBItem:
    id: str
    kind: str
    split: str
    question: str
    answer: str = ""
    accept: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def answerable(self) -> bool:
        return self.kind in ("single", "multi")


def load_items(path, split: str = "all") -> list[KBItem]:
    """The items of `split`; a malformed line fails with the file, the line and the reason."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    items, ids = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
                item = KBItem(**{k: rec[k] for k in ("id", "kind", "split", "question")},
                              **{k: rec[k] for k in ("answer", "accept", "facts") if k in rec})
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{where}: not a KB question ({type(e).__name__}: {e}); "
                                 "need id, kind, split, question[, answer, accept, facts]") from None
            _check_item(item, where, ids)
            ids.add(item.id)
            if split in ("all", item.split):
                items.append(item)
    if not items:
        raise ValueError(f"{path}: no questions in split {split!r}")
    return items


def _check_item(item: KBItem, where: str, ids: set) -> None:
    if item.kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, not {item.kind!r}")
    if item.split not in SPLITS[:2]:
        raise ValueError(f"{where}: split must be tune or heldout, not {item.split!r}")
    if item.id in ids:
        raise ValueError(f"{where}: duplicate id {item.id!r}")
    if item.kind != "unanswerable" and not item.accept:
        raise ValueError(f"{where}: a {item.kind} question needs accepted answer fragments (accept)")
    if item.answerable and not item.facts:
        raise ValueError(f"{where}: an answerable question needs the facts its context must hold (facts)")
    for fragment in item.accept + item.facts:
        if fragment.startswith("re:"):
            try:
                re.compile(fragment[3:])
            except re.error as e:
                raise ValueError(f"{where}: bad regular expression {fragment!r}: {e}") from None


def _normalise(text: str) -> str:
    return " ".join(text.replace("**", "").split())


def matches(fragment: str, text: str) -> bool:
    text = _normalise(text)
    if fragment.startswith("re:"):
        return re.search(fragment[3:], text, re.IGNORECASE) is not None
    return _normalise(fragment).lower() in text.lower()


def is_refusal(answer: str) -> bool:
    return REFUSAL.search(_normalise(answer)) is not None


def judge(item: KBItem, answer: str) -> bool:
    """Correct: every accepted fragment occurs; for an unanswerable question, a plain refusal."""
    if item.kind == "unanswerable":
        return is_refusal(answer)
    return all(matches(f, answer) for f in item.accept)


def facts_found(item: KBItem, context: str) -> int:
    return sum(matches(f, context) for f in item.facts)


def cited_source(answer: str, sources: list[str]) -> bool:
    """The answer names one of the documents it was given (file name, with or without extension)."""
    low = answer.lower()
    return any(s.lower() in low or Path(s).stem.lower() in low for s in sources)


# ---- running one configuration ------------------------------------------------------------------
@dataclass
class KBSettings:
    data: str
    configs: tuple[str, ...] = ("off", "single", "auto")
    split: str = "heldout"
    model: str | None = None
    index: str | None = None  # None: the packaged demo KB's index
    retrieval_only: bool = False
    decoding: str = "hsd"  # hsd (L0 n-gram drafter, lossless) or ar
    l1: str | None = None  # level-1 drafter (the quality profile's 0.5B under a 1.5B target)
    gate_model: str = "smollm2-135m-instruct"  # LM of auto_gradient
    general_prompt: str = ""  # the verifier's general_prompt (system prompt at retrieval level 0)
    document_lookup: bool = True  # the verifier's document_lookup (a table row or FAQ entry answers without a generation)
    max_new_tokens: int = 96
    budget_tokens: int | None = None  # None: the retriever's default
    thresholds: str | None = None  # a gate thresholds YAML; None: the packaged one
    threads: int | None = None
    limit: int | None = None
    out: str = "results/eval/kb"

    def __post_init__(self):
        unknown = [c for c in self.configs if c not in KB_CONFIGS]
        if unknown or not self.configs:
            raise ValueError(f"unknown configurations {unknown}: choose from {', '.join(KB_CONFIGS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")
        if self.decoding not in ("hsd", "ar"):
            raise ValueError(f"decoding must be hsd or ar, not {self.decoding!r}")

    def run_key(self) -> dict:
        """The settings that change what a row means: a resumed run must match them."""
        from .runner import _sha256, gate_fingerprint

        d = asdict(self)
        for k in ("configs", "limit", "out", "threads", "split"):
            d.pop(k)
        return d | {"data_sha256": _sha256(self.data), "model": self.model or "default",
                    "gate_thresholds": self.thresholds or gate_fingerprint()}


def context_text(stats: dict) -> str:
    return "\n\n".join(s["text"] for s in stats.get("sources", []))


def row_for(config: str, item: KBItem, stats: dict, text: str | None, ok: bool = True,
            error: str | None = None) -> dict:
    sources = [s["source"] for s in stats.get("sources", [])]
    found = facts_found(item, context_text(stats))
    row = {"config": config, "id": item.id, "kind": item.kind, "question": item.question,
           "level": stats.get("retrieval_level", -1), "context_tokens": stats.get("context_tokens", 0),
           "retrievals": stats.get("retrievals", 0), "sources": sources, "facts_found": found,
           "facts_total": len(item.facts), "retrieval_s": round(stats.get("retrieval_s", 0.0), 4),
           "ok": ok, "error": error, "flags": stats.get("flags", [])}
    if text is not None:
        row.update(text=text, correct=ok and judge(item, text), refused=is_refusal(text),
                   cited_source=cited_source(text, sources), latency_s=round(stats.get("total_s", math.nan), 4),
                   new_tokens=stats.get("new_tokens", 0), stop_reason=stats.get("stop_reason"))
    return row


def retrieval_stats(decision, seconds: float) -> dict:
    """The answer stats a pipeline run would carry about retrieval, for retrieval-only rows."""
    return {"retrieval_level": decision.level, "context_tokens": decision.context_tokens,
            "retrievals": decision.retrievals, "retrieval_s": seconds,
            "sources": [{"text": p.text, "source": p.source} for p in decision.passages]}


def summarize(rows: list[dict], items: list[KBItem], configs) -> dict:
    ids = {it.id for it in items}
    out = {}
    for c in configs:
        rs = [r for r in rows if r["config"] == c and r["id"] in ids]
        if not rs:
            out[c] = {"n": 0, "missing": len(ids)}
            continue
        answerable = [r for r in rs if r["kind"] in ("single", "multi")]
        levels: dict[str, int] = {}
        for r in rs:
            levels[str(r["level"])] = levels.get(str(r["level"]), 0) + 1
        fig = {"n": len(rs), "missing": len(ids) - len(rs), "levels": dict(sorted(levels.items())),
               "retrieval_recall": _ratio(sum(r["facts_found"] for r in answerable),
                                          sum(r["facts_total"] for r in answerable)),
               "all_facts_in_context": _ratio(sum(r["facts_found"] == r["facts_total"] for r in answerable),
                                              len(answerable)),
               "mean_context_tokens": round(statistics.mean(r["context_tokens"] for r in rs), 1),
               "retrieval_p50_ms": round(1e3 * statistics.median(r["retrieval_s"] for r in rs), 2)}
        judged = [r for r in rs if "correct" in r]
        if judged:
            fig.update(_answer_figures(judged))
        out[c] = fig
    return out


def _answer_figures(rs: list[dict]) -> dict:
    by_kind = {k: [r for r in rs if r["kind"] == k] for k in KINDS}
    lat = [r["latency_s"] for r in rs if not math.isnan(r["latency_s"])]
    grounded = [r for r in rs if r["kind"] in ("single", "multi") and r["sources"]]
    fig = {"accuracy": _ratio(sum(r["correct"] for r in rs), len(rs)),
           "correct": sum(r["correct"] for r in rs),
           "accuracy_by_kind": {k: _ratio(sum(r["correct"] for r in v), len(v)) for k, v in by_kind.items() if v},
           "answerable_accuracy": _ratio(sum(r["correct"] for r in rs if r["kind"] in ("single", "multi")),
                                         len(by_kind["single"]) + len(by_kind["multi"])),
           "correct_refusals": _ratio(sum(r["correct"] for r in by_kind["unanswerable"]), len(by_kind["unanswerable"])),
           "false_refusals": _ratio(sum(r["refused"] for r in rs if r["kind"] != "unanswerable"),
                                    sum(r["kind"] != "unanswerable" for r in rs)),
           "cites_source": _ratio(sum(r["cited_source"] for r in grounded), len(grounded)),
           "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
           "latency_mean_s": round(statistics.mean(lat), 3) if lat else None,
           "mean_new_tokens": round(statistics.mean(r["new_tokens"] for r in rs), 1),
           "errors": sum(not r["ok"] for r in rs)}
    if fig["latency_mean_s"]:
        fig["accuracy_per_s"] = round(fig["accuracy"] / fig["latency_mean_s"], 4)
    return fig


def _ratio(a, b):
    return round(a / b, 4) if b else None


def run_item(config: str, item: KBItem, settings: KBSettings, resources) -> dict:
    """One question under one configuration: retrieval only, or the whole answer."""
    if settings.retrieval_only:
        from hola_ros.core.retrieval.adacomp import gather_context

        t0 = time.perf_counter()
        decision = gather_context(item.question, _mode(config), resources.retrieve(config), follow_up=None)
        return row_for(config, item, retrieval_stats(decision, time.perf_counter() - t0), None)
    from hola_ros.core.pipeline import answer
    from hola_ros.core.requests import GenerationRequest

    request = GenerationRequest(prompt=item.question, request_id=f"{config}-{item.id}",
                                max_new_tokens=settings.max_new_tokens, temperature=0.0,
                                retrieval_mode=_mode(config), decoding_mode=settings.decoding)
    outcome = answer(request, resources.target(), drafter=resources.drafter(),
                     retrieve=None if config == "off" else resources.retrieve(config),
                     general_prompt=settings.general_prompt, document_lookup=settings.document_lookup)
    return row_for(config, item, outcome.stats, outcome.text or "", outcome.success, outcome.error)


def _mode(config: str) -> str:
    return "auto" if config.startswith("auto") else config


class KBResources:
    """Target, drafter and one retriever per gate, loaded on first use; tests pass stand-ins."""

    def __init__(self, settings: KBSettings, target=None, retrievers: dict | None = None):
        self.settings = settings
        self._target, self._drafter, self._retrievers = target, None, dict(retrievers or {})

    def target(self):
        if self._target is None:
            from hola_ros.core.engines import load_engine

            self._target = load_engine(self.settings.model, threads=self.settings.threads)  # None: the served default
        return self._target

    def drafter(self):
        """HSD: the L0 n-gram drafter (plus the L1 model when given); lossless, so answers equal AR's."""
        if self.settings.decoding != "hsd":
            return None
        if self._drafter is None:
            from hola_ros.core.drafters import LocalDrafter
            from hola_ros.core.engines import load_l1

            l1 = load_l1(self.settings.l1, self.settings.model, threads=self.settings.threads)
            self._drafter = LocalDrafter(ngram=True, model=l1)
        return self._drafter

    def retrieve(self, config: str):
        gate = "gradient" if config == "auto_gradient" else "evidence"
        if gate not in self._retrievers:
            self._retrievers[gate] = self._load_retriever(gate)
        return self._retrievers[gate].retrieve

    def _load_retriever(self, gate: str):
        """As the retriever node builds it: the evidence gate, or the gradient gate on gate_model."""
        from hola_ros.core.retrieval.adacomp import AdaCompRetriever, default_index_dir
        from hola_ros.core.retrieval.gate import load_thresholds

        gate_lm = None
        if gate == "gradient":
            from hola_ros.core.engines import load_engine

            gate_lm = load_engine(self.settings.gate_model, backend="torch", threads=self.settings.threads,
                                  packed=False)  # the gate needs gradients
        kwargs = {} if self.settings.budget_tokens is None else {"budget_tokens": self.settings.budget_tokens}
        return AdaCompRetriever(self.settings.index or default_index_dir(), gate_model=gate_lm,
                                thresholds=load_thresholds(self.settings.thresholds) if self.settings.thresholds
                                else None, threads=self.settings.threads, **kwargs)


def evaluate(settings: KBSettings, items: list[KBItem], resources: KBResources, results,
             log: Callable[[str], None] = print) -> dict:
    from dataclasses import replace

    done = results.done()
    for config in settings.configs:
        todo = [it for it in items if (config, it.id) not in done]
        if todo and not settings.retrieval_only:  # untimed warm-up: model loads, first calls
            run_item(config, todo[0], replace(settings, max_new_tokens=4), resources)
        for k, item in enumerate(todo, 1):
            row = run_item(config, item, settings, resources)
            results.append(row)
            verdict = "" if "correct" not in row else (" OK" if row["correct"] else " --")
            log(f"{config} [{k}/{len(todo)}] {item.id} level {row['level']} facts "
                f"{row['facts_found']}/{row['facts_total']}{verdict} {row.get('latency_s', row['retrieval_s'])}s")
    return summarize(results.rows(), items, settings.configs)
