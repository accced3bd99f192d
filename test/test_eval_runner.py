"""Runner on tiny random models: configurations, resumable results, item selection, CLI contract."""
import json
import subprocess
import sys

import pytest

from helpers_tiny import tiny_model
from hola_ros.core.evaluation import runner
from hola_ros.core.evaluation.runner import EvalSettings, Resources, ResultsFile, evaluate, load_items
from hola_ros.core.retrieval.adacomp import Passage, RetrievalDecision

# original GSM8K-format problems
QUESTIONS = [
    ("A robot moves 4 boxes per hour for 3 hours. How many boxes does it move?", "4 * 3 = 12\n#### 12"),
    ("A shelf holds 20 cups and 7 break. How many are left?", "20 - 7 = 13\n#### 13"),
    ("Each of 5 chargers serves 6 robots. How many robots are served?", "5 * 6 = 30\n#### 30"),
    ("A battery costs $1,250 and a spare costs $250. What do both cost?", "1250 + 250 = 1500\n#### 1,500"),
    ("A route of 9 km is split into 3 equal legs. How long is a leg?", "9 / 3 = 3\n#### 3"),
]


def write_gsm8k(path, rows=QUESTIONS):
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return path


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0, sharpen=4.0)  # peaked enough that the n-gram drafter gets accepted


def settings(tmp_path, **kw):
    base = dict(task="gsm8k", data=str(write_gsm8k(tmp_path / "gsm.jsonl")), configs=("ar", "hsd"),
                max_new_tokens=24, l1=None, rag_source=None, out=str(tmp_path / "run"))
    return EvalSettings(**(base | kw))


def test_ar_and_lossless_hsd(tmp_path, target):
    s = settings(tmp_path)
    summary = evaluate(s, Resources(s, target=target), log=lambda m: None)
    rows = ResultsFile(tmp_path / "run" / "results.jsonl").rows()
    assert len(rows) == 10
    ar = {r["id"]: r for r in rows if r["config"] == "ar"}
    hsd = [r for r in rows if r["config"] == "hsd"]
    assert all(r["text"] == ar[r["id"]]["text"] for r in hsd)  # lossless: same output as AR
    assert summary["hsd"]["same_text_as_ar"] == 1.0 and summary["hsd"]["paired_with_ar"] == 5
    assert summary["hsd"]["acceptance_rate"] is not None and summary["ar"]["acceptance_rate"] is None
    for c in ("ar", "hsd"):
        fig = summary[c]
        assert fig["n"] == 5 and fig["accuracy"] == sum(r["correct"] for r in rows if r["config"] == c) / 5
        assert fig["latency_p50_s"] > 0 and fig["tokens_per_s"] > 0 and fig["peak_rss_mb"] > 0
        assert fig["retrieval_levels"] == {"off": 5}


def test_interrupted_run_resumes_without_loss_or_repeat(tmp_path, target):
    s = settings(tmp_path)
    seen = []

    def stop_after_three(row):
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(s, Resources(s, target=target), log=lambda m: None, on_row=stop_after_three)
    results = ResultsFile(tmp_path / "run" / "results.jsonl")
    first = results.rows()
    assert len(first) == 3
    with open(results.path, "a") as f:
        f.write('{"config": "hsd", "id": "torn')  # killed in the middle of a write
    added = []
    summary = evaluate(s, Resources(s, target=target), log=lambda m: None, on_row=added.append)
    rows = results.rows()
    keys = [(r["config"], r["id"]) for r in rows]
    assert len(added) == 7 and len(keys) == 10 and len(set(keys)) == 10
    assert rows[:3] == first  # nothing rewritten
    assert summary["ar"]["n"] == summary["hsd"]["n"] == 5
    assert evaluate(s, Resources(s, target=target), log=lambda m: None, on_row=added.append) == summary
    assert len(added) == 7  # a finished run adds nothing


def test_resume_refuses_other_settings(tmp_path, target):
    s = settings(tmp_path, limit=1)
    evaluate(s, Resources(s, target=target), log=lambda m: None)
    s2 = settings(tmp_path, limit=1, max_new_tokens=25)
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate(s2, Resources(s2, target=target), log=lambda m: None)
    # an artifact may join a run that had none (it had no lobi rows), but not replace another one
    runner.check_run(s.out, settings(tmp_path, lobi="art-a"))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["lobi"] == "art-a"
    with pytest.raises(ValueError, match="lobi"):
        runner.check_run(s.out, settings(tmp_path, lobi="art-b"))


def test_resume_refuses_recalibrated_gate(tmp_path, monkeypatch):
    s = settings(tmp_path, rag_source=str(write_gsm8k(tmp_path / "src.jsonl")))
    monkeypatch.setattr(runner, "gate_fingerprint", lambda: "before")
    runner.check_run(s.out, s)
    runner.check_run(s.out, s)
    monkeypatch.setattr(runner, "gate_fingerprint", lambda: "after")
    with pytest.raises(ValueError, match="gate_thresholds"):
        runner.check_run(s.out, s)


def test_rag_lobi_and_entropy_gate_configurations(tmp_path, target):
    calls = []

    def retrieve(query, mode, budget):
        calls.append((query, mode))
        return RetrievalDecision(1, 0.9, [Passage("Q: 2 robots move 2 boxes. A: 4 boxes.", "ex", 0.8, 20)], 20, 1)

    s = settings(tmp_path, configs=("ar", "hsd_rag", "lobi", "entropy_gate"), l1="tiny-l1", limit=3)
    res = Resources(s, target=target, l1=tiny_model(seed=0, sharpen=4.0, layers=1), retrieve=retrieve,
                    lobi_target=tiny_model(seed=1, sharpen=4.0))
    summary = evaluate(s, res, log=lambda m: None)
    rows = ResultsFile(tmp_path / "run" / "results.jsonl").rows()
    rag = [r for r in rows if r["config"] == "hsd_rag"]
    ar = {r["id"]: r for r in rows if r["config"] == "ar"}
    assert {q for q, _ in calls} == {r["question"] for r in rag} and all(mode == "auto" for _, mode in calls)
    assert summary["hsd_rag"]["retrieval_levels"] == {"1": 3}
    assert all(r["prompt_tokens"] > ar[r["id"]]["prompt_tokens"] for r in rag)  # the passage is in the prompt
    assert summary["entropy_gate"]["lossy"] and not summary["hsd_rag"]["lossy"]
    assert summary["lobi"]["n"] == 3 and summary["lobi"]["same_text_as_ar"] < 1.0  # another model answered


def test_skipped_configurations_say_why(tmp_path, target):
    s = settings(tmp_path, configs=("ar", "lobi", "entropy_gate", "hsd_rag"), limit=1)
    summary = evaluate(s, Resources(s, target=target), log=lambda m: None)
    assert "--lobi" in summary["lobi"]["skipped"] and "--l1" in summary["entropy_gate"]["skipped"]
    assert "retrieval source" in summary["hsd_rag"]["skipped"] and summary["ar"]["n"] == 1


def test_items_in_the_rag_index_are_never_evaluated(tmp_path):
    source_rows = [(f"Source question number {i}?", f"x\n#### {i}") for i in range(10)]
    source = write_gsm8k(tmp_path / "source.jsonl", source_rows)
    # folds by position: rows 0 and 5 are held out (fold 0), the others are indexed
    data = write_gsm8k(tmp_path / "data.jsonl", [source_rows[0], source_rows[3], source_rows[5], QUESTIONS[0]])
    s = EvalSettings(task="gsm8k", data=str(data), rag_source=str(source), out=str(tmp_path / "r"))
    items, info = load_items(s)
    assert sorted(it.question for it in items) == sorted([source_rows[0][0], source_rows[5][0], QUESTIONS[0][0]])
    assert info["excluded_in_rag_index"] == 1
    a, _ = load_items(EvalSettings(**(vars(s) | {"seed": 1, "limit": 2})))
    b, _ = load_items(EvalSettings(**(vars(s) | {"seed": 1, "limit": 2})))
    assert [i.id for i in a] == [i.id for i in b] and len(a) == 2


def test_arc_reports_both_scorings(tmp_path, target):
    from test_eval_choices import write_arc

    s = EvalSettings(task="arc", data=str(write_arc(tmp_path / "arc.jsonl")), configs=("ar",), l1=None,
                     rag_source=None, max_new_tokens=4, out=str(tmp_path / "arc"))
    summary = evaluate(s, Resources(s, target=target), log=lambda m: None)
    rows = ResultsFile(tmp_path / "arc" / "results.jsonl").rows()
    assert summary["ar"]["accuracy_loglik"] == sum(r["correct_loglik"] for r in rows) / 2
    assert summary["ar"]["accuracy_letter"] == sum(r["correct"] for r in rows) / 2
    assert summary["ar"]["correct"] == sum(r["correct_loglik"] for r in rows)  # counts what `accuracy` measures
    assert summary["ar"]["accuracy"] == summary["ar"]["accuracy_loglik"]
    assert all(set(r["loglik_scores"]) == {"A", "B", "C", "D"} or set(r["loglik_scores"]) == {"1", "2", "3", "4"}
               for r in rows)


def test_cli_contract_one_json_object(tmp_path):
    from lobi_helpers import save_tiny

    model_dir = save_tiny(tmp_path / "tiny-hf")
    data = write_gsm8k(tmp_path / "gsm.jsonl")
    cmd = [sys.executable, "-m", "hola_ros.cli", "eval", "gsm8k", "--data", str(data), "--limit", "2",
           "--model", str(model_dir), "--configs", "ar,hsd,lobi", "--l1", "none", "--rag-source", "none",
           "--max-new-tokens", "8", "--threads", "1", "--out", str(tmp_path / "out"), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert set(result) == {"ar", "hsd", "lobi"}
    for c in ("ar", "hsd"):
        assert result[c]["n"] == 2 and {"accuracy", "latency_p50_s", "tokens_per_s"} <= set(result[c])
    assert "skipped" in result["lobi"]
    pids = {r["config"]: r["pid"] for r in ResultsFile(tmp_path / "out" / "results.jsonl").rows()}
    assert pids["ar"] != pids["hsd"]  # one process per configuration: peak RSS is its own
