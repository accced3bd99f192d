"""Evaluate decoding configurations on GSM8K (exact match) or ARC (multiple choice), resumably.

Configurations, all greedy by default and all through `pipeline.answer` (the verifier's path):
  ar            the target alone, plain decoding
  hsd           HOLA lossless: L0 n-gram + L1 drafter (default an int8 copy), verified by the target
  hsd_rag       hsd + AdaComp-RAG auto gate over GSM8K-train worked examples (evaluated items excluded)
  lobi          a Lo-Bi artifact served as the target, plain decoding (skipped without --lobi)
  entropy_gate  hsd + the paper's entropy gate (tau 1.5): LOSSY, flagged as such

Every sample appends one JSON line to `results.jsonl` (flushed and fsynced) keyed by
(config, item id), so a run that is stopped resumes where it stopped and counts each sample once.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from hola_ros.package_data import gsm8k_train

from . import answers
from .choices import ChoiceItem, extract_label, letter_prompt, load_arc, score_by_likelihood

CONFIGS = ("ar", "hsd", "hsd_rag", "lobi", "entropy_gate")
TASKS = ("gsm8k", "arc")
DEFAULT_RAG_SOURCE = str(gsm8k_train())
PAPER_TAU = 1.5
WARMUP_TOKENS = 8
# the settings that change what a sample's result means: a resumed run must match them
_RUN_KEYS = ("task", "data_sha256", "model", "max_new_tokens", "l1", "lobi", "tau", "temperature", "seed",
             "rag_source", "gate_thresholds")


@dataclass
class EvalSettings:
    task: str
    data: str
    configs: tuple[str, ...] = ("ar", "hsd")
    model: str | None = None
    limit: int | None = None
    offset: int = 0
    seed: int = 0
    max_new_tokens: int | None = None  # None: 256 for gsm8k, 16 for arc
    l1: str | None = "int8"  # L1 drafter of hsd / hsd_rag / entropy_gate (None: L0 only)
    lobi: str | None = None
    tau: float = PAPER_TAU
    temperature: float = 0.0
    rag_source: str | None = DEFAULT_RAG_SOURCE
    threads: int | None = None
    out: str = "results/eval"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        unknown = [c for c in self.configs if c not in CONFIGS]
        if unknown or not self.configs:
            raise ValueError(f"unknown configurations {unknown}: choose from {', '.join(CONFIGS)}")
        if self.max_new_tokens is None:
            self.max_new_tokens = 256 if self.task == "gsm8k" else 16

    def run_key(self) -> dict:
        d = asdict(self) | {"data_sha256": _sha256(self.data), "model": self.model or "default",
                            "gate_thresholds": gate_fingerprint() if self.rag_source else None}
        return {k: d[k] for k in _RUN_KEYS}


def gate_fingerprint() -> str:
    """Hash of the AdaComp gate thresholds in force: re-calibrating them changes hsd_rag's decisions."""
    import hashlib

    from hola_ros.core.retrieval.gate import load_thresholds

    values = {k: v for k, v in load_thresholds().items() if k != "file"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Item:
    id: str
    question: str  # the prompt the configurations answer (ARC: with the labelled choices)
    gold: str
    choice: ChoiceItem | None = None


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _norm(question: str) -> str:
    return " ".join(question.lower().split())


def rag_index_questions(rag_source) -> set[str]:
    """Questions whose worked examples the hsd_rag index holds (every fold of the source but 0)."""
    from hola_ros.core.retrieval import gsm8k

    rest, _ = gsm8k.split(gsm8k.load(rag_source))
    return {_norm(e.question) for e in rest}


def load_items(settings: EvalSettings) -> tuple[list[Item], dict]:
    """The evaluated items and how they were chosen.

    GSM8K items whose question is in the retrieval index are left out for every configuration,
    so hsd_rag never retrieves the item's own solution and all configurations see the same items;
    then --offset skips, --seed shuffles and --limit cuts.
    """
    info: dict = {"data": str(settings.data)}
    if settings.task == "gsm8k":
        items = _gsm8k_items(settings.data)
        if settings.rag_source and Path(settings.rag_source).is_file():
            indexed = rag_index_questions(settings.rag_source)
            kept = [it for it in items if _norm(it.question) not in indexed]
            info["excluded_in_rag_index"] = len(items) - len(kept)
            items = kept
    else:
        items = [Item(c.id, letter_prompt(c), c.answer, c) for c in load_arc(settings.data)]
    info["eligible"] = len(items)
    items = items[settings.offset:]
    random.Random(settings.seed).shuffle(items)
    if settings.limit is not None:
        items = items[:settings.limit]
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{settings.data}: item ids are not unique")
    info.update(offset=settings.offset, seed=settings.seed, n=len(items))
    return items, info


def _gsm8k_items(path) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            try:
                gold = answers.gold_answer(rec["answer"])
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{Path(path).name}:{n}: {exc}") from None
            items.append(Item(str(rec.get("id", f"line{n}")), rec["question"].strip(), answers.format_number(gold)))
    return items


class ResultsFile:
    """Append-only JSONL of per-sample rows; a torn last line (killed mid-write) is ignored."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "config" in row and "id" in row:
                out.append(row)
        return out

    def done(self) -> set[tuple[str, str]]:
        return {(r["config"], r["id"]) for r in self.rows()}

    def append(self, row: dict) -> None:
        last = b""
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                last = f.read(1)
        with open(self.path, "a", encoding="utf-8") as f:
            if last and last != b"\n":  # a torn line must not swallow this row
                f.write("\n")
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def check_run(out_dir, settings: EvalSettings) -> None:
    """Refuse to mix samples of different settings in one results file."""
    meta = Path(out_dir) / "run.json"
    key = settings.run_key()
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old.get("lobi") is None and key["lobi"] is not None:
            # a run without an artifact has no lobi rows, so adding one later changes no sample's meaning
            old["lobi"] = key["lobi"]
            meta.write_text(json.dumps(old, indent=1) + "\n")
        diff = {k: (old.get(k), key[k]) for k in key if old.get(k) != key[k]}
        if diff:
            raise ValueError(f"{out_dir} holds a run with other settings {diff}; use another --out")
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(key, indent=1) + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Resources:
    """What the configurations need, loaded on first use; tests pass in-memory objects instead."""

    def __init__(self, settings: EvalSettings, target=None, l1=None, retrieve=None, lobi_target=None):
        self.settings = settings
        self._target, self._l1, self._retrieve, self._lobi = target, l1, retrieve, lobi_target
        self._l1_loaded = l1 is not None

    def target(self):
        if self._target is None:
            from hola_ros.core.engines import load_engine

            self._target = load_engine(self.settings.model, threads=self.settings.threads)
        return self._target

    def l1(self):
        if not self._l1_loaded:
            from hola_ros.core.engines import load_l1

            self._l1 = load_l1(self.settings.l1, self.settings.model, threads=self.settings.threads)
            self._l1_loaded = True
        return self._l1

    def drafter(self):
        from hola_ros.core.drafters import LocalDrafter

        return LocalDrafter(ngram=True, model=self.l1())

    def retrieve(self):
        if self._retrieve is None:
            from hola_ros.core.engines import load_engine
            from hola_ros.core.retrieval import gsm8k
            from hola_ros.core.retrieval.adacomp import AdaCompRetriever

            index_dir, _ = gsm8k.build_index(self.settings.rag_source, progress=True)
            target = self.target()
            gate_lm = load_engine(self.settings.model, backend="torch", packed=False,  # the gate needs gradients
                                  threads=self.settings.threads)
            self._retrieve = AdaCompRetriever(index_dir, gate_model=gate_lm,
                                              count_tokens=lambda t: len(target.encode(t))).retrieve
        return self._retrieve

    def lobi_target(self):
        if self._lobi is None:
            from hola_ros.core.lobi import load_artifact

            self._lobi = load_artifact(self.settings.lobi, threads=self.settings.threads)
        return self._lobi


def skip_reason(name: str, settings: EvalSettings, resources: Resources) -> str | None:
    if name == "lobi" and not (settings.lobi or resources._lobi is not None):
        return "no Lo-Bi artifact given (--lobi DIR; build one with `hola-ros lobi build`)"
    if name == "entropy_gate" and not (settings.l1 or resources._l1 is not None):
        return "the entropy gate reads the L1 drafter's entropies: it needs --l1 (L0 n-gram tokens carry none)"
    if name == "hsd_rag" and resources._retrieve is None and not (
            settings.rag_source and Path(settings.rag_source).is_file()):
        return f"no retrieval source ({settings.rag_source})"
    return None


def _request(item: Item, config: str, settings: EvalSettings, n: int):
    from hola_ros.core.requests import GenerationRequest

    return GenerationRequest(prompt=item.question, request_id=f"{config}-{n}", max_new_tokens=settings.max_new_tokens,
                             temperature=settings.temperature, seed=settings.seed,
                             retrieval_mode="auto" if config == "hsd_rag" else "off",
                             decoding_mode="ar" if config in ("ar", "lobi") else "hsd")


def run_sample(config: str, item: Item, n: int, settings: EvalSettings, resources: Resources) -> dict:
    from hola_ros.core.pipeline import answer

    target = resources.lobi_target() if config == "lobi" else resources.target()
    kwargs = {}
    if config in ("hsd", "hsd_rag", "entropy_gate"):
        kwargs["drafter"] = resources.drafter()
    if config == "hsd_rag":
        kwargs["retrieve"] = resources.retrieve()
    if config == "entropy_gate":
        kwargs["generation_options"] = {"entropy_gate_tau": settings.tau}
    cpu0 = time.process_time()
    outcome = answer(_request(item, config, settings, n), target, **kwargs)
    cpu_s = time.process_time() - cpu0
    st = outcome.stats
    row = {"config": config, "id": item.id, "question": item.question, "ok": outcome.success, "text": outcome.text,
           "error": None if outcome.success else outcome.error, "gold": item.gold,
           "latency_s": round(st.get("total_s", math.nan), 4),
           "gen_s": round(st.get("prefill_s", 0.0) + st.get("decode_s", 0.0), 4),
           "retrieval_s": round(st.get("retrieval_s", 0.0), 4), "cpu_s": round(cpu_s, 4),
           "prompt_tokens": st.get("prompt_tokens"), "new_tokens": st.get("new_tokens", 0),
           "acceptance_rate": st.get("acceptance_rate"), "proposed": sum(st.get("proposed_per_level", {}).values()),
           "mean_accepted_block": st.get("mean_accepted_block"), "lossy": bool(st.get("lossy")),
           "gate_overrides": st.get("gate_overrides", 0), "retrieval_level": st.get("retrieval_level", -1),
           "context_tokens": st.get("context_tokens", 0), "stop_reason": st.get("stop_reason"),
           "flags": st.get("flags", []), "peak_rss_mb": round(peak_rss_mb(), 1), "pid": os.getpid()}
    if settings.task == "gsm8k":
        pred = answers.extract_final(outcome.text or "")
        row.update(pred=answers.format_number(pred),
                   correct=bool(outcome.success and pred is not None and pred == answers.parse_number(item.gold)))
    else:
        label = extract_label(outcome.text or "", item.choice)
        t0 = time.perf_counter()
        lik = score_by_likelihood(target, item.choice)
        row.update(pred=label, correct=label == item.gold, pred_loglik=lik["pred"],
                   correct_loglik=lik["correct"], loglik_scores=lik["scores"],
                   loglik_s=round(time.perf_counter() - t0, 4))
    return row


def run_config(config: str, items: list[Item], settings: EvalSettings, resources: Resources, results: ResultsFile,
               log: Callable[[str], None] = lambda m: None, on_row: Callable[[dict], None] | None = None) -> int:
    """Evaluate the items not yet in `results`; returns how many were added."""
    done = results.done()
    todo = [(n, it) for n, it in enumerate(items) if (config, it.id) not in done]
    if todo:
        log(f"{config}: {len(items) - len(todo)} of {len(items)} done before, {len(todo)} to go")
        # one short untimed answer first: model loads, kernel selection and the embedder's first call
        # would otherwise land in the first sample's latency
        run_sample(config, todo[0][1], -1, replace(settings, max_new_tokens=WARMUP_TOKENS), resources)
    for k, (n, item) in enumerate(todo, 1):
        row = run_sample(config, item, n, settings, resources)
        results.append(row)
        log(f"{config} [{k}/{len(todo)}] {item.id}: pred={row['pred']} gold={item.gold} "
            f"{'OK' if row['correct'] else '--'} {row['new_tokens']} tok {row['latency_s']:.1f}s")
        if on_row is not None:
            on_row(row)
    return len(todo)


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    pos = (len(values) - 1) * q / 100  # linear interpolation, as numpy's default
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(values[lo] + (values[hi] - values[lo]) * (pos - lo), 4)


def summarize(rows: list[dict], items: list[Item], configs, skipped: dict | None = None,
              task: str = "gsm8k") -> dict:
    """Per configuration figures over the current items; ratios against `ar` item by item."""
    ids = {it.id for it in items}
    by = {c: {r["id"]: r for r in rows if r["config"] == c and r["id"] in ids} for c in configs}
    out = {}
    for c in configs:
        if skipped and c in skipped:
            out[c] = {"skipped": skipped[c], "n": 0, "accuracy": None, "latency_p50_s": None, "tokens_per_s": None}
            continue
        rs = list(by[c].values())
        if not rs:
            out[c] = {"n": 0, "accuracy": None, "latency_p50_s": None, "tokens_per_s": None, "missing": len(ids)}
            continue
        lat = [r["latency_s"] for r in rs]
        gen_s = sum(r["gen_s"] for r in rs)
        cpu_s = sum(r["cpu_s"] for r in rs)
        toks = sum(r["new_tokens"] for r in rs)
        proposed = sum(r["proposed"] for r in rs)
        accepted = sum((r["acceptance_rate"] or 0.0) * r["proposed"] for r in rs)
        levels: dict[str, int] = {}
        for r in rs:
            key = "off" if r["retrieval_level"] < 0 else str(r["retrieval_level"])
            levels[key] = levels.get(key, 0) + 1
        fig = {"n": len(rs), "correct": sum(bool(r["correct"]) for r in rs),
               "accuracy": round(sum(bool(r["correct"]) for r in rs) / len(rs), 4),
               "latency_p50_s": _pct(lat, 50), "latency_p95_s": _pct(lat, 95),
               "tokens_per_s": round(toks / gen_s, 3) if gen_s > 0 else None,
               "tokens_per_cpu_s": round(toks / cpu_s, 3) if cpu_s > 0 else None,
               "mean_new_tokens": round(toks / len(rs), 1),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
               "acceptance_rate": round(accepted / proposed, 4) if proposed else None,
               "retrieval_levels": levels,
               "mean_retrieval_s": round(statistics.mean(r["retrieval_s"] for r in rs), 4),
               "lossy": any(r["lossy"] for r in rs), "errors": sum(not r["ok"] for r in rs),
               "missing": len(ids) - len(rs)}
        if task == "arc":  # the standard ARC scoring (likelihood) leads; the letter scoring comes beside it
            fig["correct_letter"], fig["accuracy_letter"] = fig["correct"], fig["accuracy"]
            fig["correct"] = sum(bool(r["correct_loglik"]) for r in rs)
            fig["accuracy_loglik"] = fig["accuracy"] = round(fig["correct"] / len(rs), 4)
            fig["unparsed_letters"] = sum(r["pred"] is None for r in rs)
        ar = by.get("ar", {})
        pairs = [(ar[i], r) for i, r in by[c].items() if i in ar]
        if c != "ar" and pairs:
            fig["paired_with_ar"] = len(pairs)
            fig["speedup_vs_ar"] = round(sum(a["gen_s"] for a, _ in pairs) / max(sum(r["gen_s"] for _, r in pairs),
                                                                                  1e-9), 3)
            fig["speedup_vs_ar_median"] = round(statistics.median(
                a["gen_s"] / r["gen_s"] for a, r in pairs if r["gen_s"] > 0), 3)
            fig["same_text_as_ar"] = round(sum(a["text"] == r["text"] for a, r in pairs) / len(pairs), 4)
            fig["same_answer_as_ar"] = round(sum(a["pred"] == r["pred"] for a, r in pairs) / len(pairs), 4)
        out[c] = fig
    return out


def evaluate(settings: EvalSettings, resources: Resources | None = None, log: Callable[[str], None] = print,
             on_row: Callable[[dict], None] | None = None, items: list[Item] | None = None) -> dict:
    """Run the settings' configurations in this process and return the summary."""
    resources = resources or Resources(settings)
    if items is None:
        items, _ = load_items(settings)
    check_run(settings.out, settings)
    results = ResultsFile(Path(settings.out) / "results.jsonl")
    skipped = {}
    for c in settings.configs:
        reason = skip_reason(c, settings, resources)
        if reason:
            skipped[c] = reason
            log(f"{c}: skipped ({reason})")
            continue
        run_config(c, items, settings, resources, results, log=log, on_row=on_row)
    return summarize(results.rows(), items, settings.configs, skipped, settings.task)
