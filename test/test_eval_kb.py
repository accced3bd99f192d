"""KB evaluation: the committed question set, judging, retrieval recall, the run (retrieval only and
through the pipeline on a tiny model), resuming, the CLI, and the gate calibration's fit."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hola_ros.core.evaluation import kb, kb_gate  # noqa: E402
from hola_ros.core.evaluation.runner import ResultsFile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QA = ROOT / "data" / "kb_eval" / "questions.jsonl"


def test_committed_question_set_is_balanced_and_its_facts_are_in_the_documents():
    from hola_ros.core.retrieval.chunking import ChunkingConfig, chunk_text

    items = kb.load_items(QA, "all")
    assert len(items) >= 40
    for split in ("tune", "heldout"):
        half = kb.load_items(QA, split)
        assert {it.kind for it in half} == set(kb.KINDS) and abs(len(half) - len(items) / 2) <= 2
    passages = [c for f in sorted((ROOT / "data" / "kb").glob("*.md"))
                for c in chunk_text(f.read_text(), ChunkingConfig(), markdown=True)]
    for it in items:
        for fact in it.facts:  # a typo in a fact would make recall fail for the wrong reason
            assert any(kb.matches(fact, p) for p in passages), (it.id, fact)
        if it.answerable:  # the reference answer passes its own judge
            assert kb.judge(it, it.answer), it.id
    assert all(kb.judge(it, it.answer) for it in items if it.kind == "unanswerable")


@pytest.mark.parametrize("record,match", [
    ({"id": "a", "kind": "trivia", "split": "tune", "question": "q", "accept": ["x"]}, "kind must be one of"),
    ({"id": "a", "kind": "general", "split": "dev", "question": "q", "accept": ["x"]}, "split must be tune or heldout"),
    ({"id": "a", "kind": "general", "split": "tune", "question": "q"}, "needs accepted answer fragments"),
    ({"id": "a", "kind": "single", "split": "tune", "question": "q", "accept": ["x"]}, "needs the facts"),
    ({"id": "a", "kind": "general", "split": "tune", "question": "q", "accept": ["re:(unclosed"]},
     "bad regular expression"),
    ({"id": "a", "kind": "general", "split": "tune"}, "not a KB question"),
])
def test_malformed_questions_fail_with_file_line_and_reason(tmp_path, record, match):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"id": "ok", "kind": "general", "split": "tune", "question": "hi", "accept": ["hello"]})
                 + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=rf"qa.jsonl:2: .*{match}"):
        kb.load_items(f)
    f.write_text('{"id": "ok", "kind": "general", "split": "tune", "question": "hi", "accept": ["hello"]}\n' * 2)
    with pytest.raises(ValueError, match="duplicate id"):
        kb.load_items(f)
    with pytest.raises(ValueError, match="split must be one of"):
        kb.load_items(f, "dev")


def test_judging_fragments_refusals_and_cited_sources():
    item = kb.KBItem("s", "single", "tune", "q", accept=["re:0[.,]8 ?m/s", "Zone C"], facts=["x"])
    assert kb.judge(item, "In  zone c the limit is 0,8 m/s [03-speed-limits.md].")
    assert not kb.judge(item, "The limit is 0.8 m/s.")  # every fragment is needed
    unanswerable = kb.KBItem("u", "unanswerable", "tune", "q")
    for text in ("The documents do not say.", "The documents don't mention the password.",
                 "This is not covered by the documents.", "There is no information about the canteen."):
        assert kb.judge(unanswerable, text) and kb.is_refusal(text), text
    for text in ("The password is bw-2024.", "Clean the plates; do not push the robot onto them.",
                 "Only a supervisor may change it."):
        assert not kb.is_refusal(text), text
    assert kb.cited_source("Use CD-5 [02-charging-docks.md].", ["02-charging-docks.md"])
    assert kb.cited_source("See 02-charging-docks for details.", ["02-charging-docks.md"])
    assert not kb.cited_source("Use CD-5.", ["02-charging-docks.md"])
    assert kb.facts_found(kb.KBItem("m", "multi", "t", "q", accept=["a"], facts=["E-214 | docking", "re:CD-[56]"]),
                          "| E-214 |  docking failed |\nCD-5") == 2 - 1 + 1


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kb") / "run"
    settings = kb.KBSettings(data=str(QA), configs=("off", "single", "auto"), split="heldout", retrieval_only=True,
                             out=str(out))
    items = kb.load_items(QA, "heldout")
    results = ResultsFile(out / "results.jsonl")
    resources = kb.KBResources(settings)
    summary = kb.evaluate(settings, items, resources, results, log=lambda m: None)
    return settings, items, resources, results, summary


def test_retrieval_only_run_measures_recall_tokens_and_levels_and_resumes(retrieval_run):
    settings, items, resources, results, summary = retrieval_run
    answerable = [it for it in items if it.answerable]
    assert summary["off"]["retrieval_recall"] == 0.0 and summary["off"]["levels"] == {"0": len(items)}
    single = summary["single"]
    assert single["levels"] == {"1": len(items)} and single["mean_context_tokens"] > 0
    rows = {r["id"]: r for r in results.rows() if r["config"] == "single"}
    found = sum(rows[it.id]["facts_found"] for it in answerable)
    assert single["retrieval_recall"] == round(found / sum(len(it.facts) for it in answerable), 4)
    assert "accuracy" not in single  # nothing was generated
    assert sum(summary["auto"]["levels"].values()) == len(items)
    before = len(results.rows())
    assert kb.evaluate(settings, items, resources, results, log=lambda m: None) == summary  # resumed: no new rows
    assert len(results.rows()) == before


def test_answer_run_through_the_pipeline_on_a_tiny_model(retrieval_run, tmp_path):
    from helpers_tiny import tiny_model

    _, items, resources, _, _ = retrieval_run
    settings = kb.KBSettings(data=str(QA), configs=("off", "auto"), split="heldout", max_new_tokens=6,
                             out=str(tmp_path / "run"))
    answered = kb.KBResources(settings, target=tiny_model(seed=0, sharpen=4.0),
                              retrievers={"evidence": resources._retrievers["evidence"]})
    picked = [next(it for it in items if it.kind == k) for k in kb.KINDS]
    summary = kb.evaluate(settings, picked, answered, ResultsFile(tmp_path / "run" / "results.jsonl"),
                          log=lambda m: None)
    for config in ("off", "auto"):
        fig = summary[config]
        assert fig["n"] == 4 and 0.0 <= fig["accuracy"] <= 1.0 and fig["latency_p50_s"] > 0
        assert set(fig["accuracy_by_kind"]) == set(kb.KINDS)
    assert summary["off"]["levels"] == {"-1": 4} and summary["off"]["errors"] == 0  # retrieval not attempted
    # the tiny model's 1024-byte context cannot hold the passages: those rows say so, the run goes on
    failed = [r for r in ResultsFile(tmp_path / "run" / "results.jsonl").rows() if not r["ok"]]
    assert all(r["config"] == "auto" and "context holds" in r["error"] and not r["correct"] for r in failed)


def test_summary_figures_from_rows():
    items = [kb.KBItem(i, k, "heldout", "q", accept=["a"], facts=["f"] if k in ("single", "multi") else [])
             for i, k in (("a", "single"), ("b", "multi"), ("c", "unanswerable"), ("d", "general"))]
    base = {"config": "auto", "retrievals": 1, "retrieval_s": 0.01, "ok": True, "new_tokens": 5, "cited_source": True}
    rows = [base | {"id": "a", "kind": "single", "level": 1, "context_tokens": 100, "sources": ["x.md"],
                    "facts_found": 1, "facts_total": 1, "correct": True, "refused": False, "latency_s": 2.0},
            base | {"id": "b", "kind": "multi", "level": 2, "context_tokens": 200, "sources": ["x.md"],
                    "facts_found": 1, "facts_total": 2, "correct": False, "refused": False, "latency_s": 4.0},
            base | {"id": "c", "kind": "unanswerable", "level": 1, "context_tokens": 90, "sources": ["y.md"],
                    "facts_found": 0, "facts_total": 0, "correct": True, "refused": True, "latency_s": 1.0},
            base | {"id": "d", "kind": "general", "level": 0, "context_tokens": 0, "sources": [],
                    "facts_found": 0, "facts_total": 0, "correct": True, "refused": False, "latency_s": 1.0}]
    fig = kb.summarize(rows, items, ["auto"])["auto"]
    assert fig["accuracy"] == 0.75 and fig["answerable_accuracy"] == 0.5 and fig["correct_refusals"] == 1.0
    assert fig["retrieval_recall"] == round(2 / 3, 4) and fig["all_facts_in_context"] == 0.5
    assert fig["levels"] == {"0": 1, "1": 2, "2": 1} and fig["latency_mean_s"] == 2.0
    assert fig["false_refusals"] == 0.0 and fig["accuracy_per_s"] == 0.375


def test_evidence_gate_fit_separates_general_from_documented_questions():
    def row(kind, sim, recall1=1.0, missing=0, recall2=1.0):
        return {"kind": kind, "top_sim": sim, "known": 0.5, "phrases": 0, "identifiers": 0, "recall1": recall1,
                "missing": {str(s): missing for s in kb_gate.SHARES}, "recall2": {str(s): recall2 for s in kb_gate.SHARES}}

    rows = ([row("general", s) for s in (0.1, 0.15, 0.2)] + [row("single", s) for s in (0.5, 0.6, 0.7)]
            + [row("unanswerable", 0.45)] + [row("single", 0.55, recall1=0.0, missing=2, recall2=1.0)])
    th, report = kb_gate.fit_evidence(rows)
    assert 0.2 < th["sim_min"] <= 0.45 and th["missing_min"] == 2
    assert report["level_counts"] == {"0": 3, "1": 4, "2": 1}
    objective = report["objective_mean_utility_minus_cost"]
    assert objective["gate_in_sample"] > max(objective["always_single"], objective["always_off"])
    assert kb_gate.utilities("general", 1.0, 1.0) == [1.0, 0.0, 0.0]


def test_cli_refuses_bad_input_clearly(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "hola_ros.cli", "eval", "kb", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=300)

    bad = cli("--data", str(QA), "--configs", "single,sometimes", "--out", str(tmp_path / "a"))
    assert bad.returncode == 2 and "unknown configurations ['sometimes']" in bad.stderr
    missing = cli("--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "b"))
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("/**/hola_verifier: [unclosed\n")
    profile = cli("--data", str(QA), "--profile", str(broken), "--out", str(tmp_path / "c"))
    assert profile.returncode == 2 and "broken.yaml: not valid YAML" in profile.stderr


def test_a_profile_gives_the_kb_run_its_model_l1_and_general_prompt():
    from hola_ros.cli._eval_kb import profile_settings

    quality = profile_settings(ROOT / "config" / "quality.yaml")
    assert quality["model"] == "qwen2.5-coder-1.5b-instruct@1000mb" and not quality.get("l1")
    assert "warehouse robots" in quality["general_prompt"]
    default = profile_settings(ROOT / "config" / "hola.yaml")
    assert default["general_prompt"] == "" and default["document_lookup"] is True  # the default graph: none
