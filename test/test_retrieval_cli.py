"""Retrieval, step 3: `hola-ros index`, calibration fitting and the thresholds YAML."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hola_ros.cli import main  # noqa: E402
from hola_ros.core.retrieval import calibrate, gsm8k  # noqa: E402
from hola_ros.core.retrieval.gate import load_thresholds, merge_thresholds, score_features  # noqa: E402


def test_index_cli_builds_appends_and_reports(tmp_path, capsys):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "pump.md").write_text("# Pump\n\nThe bilge pump P-7 must be primed with 2 litres of water before use.")
    out = tmp_path / "idx"
    assert main(["index", str(src), "-o", str(out), "--chunk-size", "50", "--overlap", "10"]) == 0
    assert "files added 1" in capsys.readouterr().out
    (src / "valve.txt").write_text("Valve V-3 is closed clockwise and must be checked every 30 days.")
    assert main(["index", str(src), "-o", str(out), "--query", "How do I close valve V-3?"]) == 0
    printed = capsys.readouterr().out
    assert "files added 1, replaced 0, unchanged 1" in printed
    decision = json.loads(printed[printed.index("{"):])
    assert decision["passages"][0]["source"] == "valve.txt" and decision["detail"]["gate"] == "evidence"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunking"]["size"] == 50 and len(manifest["sources"]) == 2


def test_index_cli_errors_are_clear(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    assert main(["index", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "idx")]) == 1
    assert "bad.jsonl:2: invalid JSON" in capsys.readouterr().err
    assert main(["index", str(tmp_path)]) == 2  # no --out
    assert main(["index", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "i"), "--chunk-size", "4"]) == 1
    assert "chunk size" in capsys.readouterr().err


def synthetic_rows(n=200, seed=0):
    """Retrieval helps exactly when the top similarity exceeds 0.5; a second step above 0.8."""
    rng = np.random.default_rng(seed)
    rows = []
    for sim, lg in zip(rng.uniform(0.1, 1.0, n), rng.normal(0, 1, n)):
        single = 1.0 - (0.3 if sim > 0.5 else -0.1)
        rows.append({"log_grad": lg, "top_sim": sim, "tokens": int(rng.integers(5, 40)), "nll_none": 1.0,
                     "nll_single": single, "nll_multi": single - (0.2 if sim > 0.8 else -0.05)})
    return rows


def test_fit_recovers_a_known_gate():
    rows = synthetic_rows()
    th, report = calibrate.fit(rows, margin=0.02)
    w = dict(zip(th["features"], th["weights"]))
    assert abs(w["top_sim"]) > 5 * abs(w["log_grad"])
    assert report["balanced_accuracy_level1"] > 0.97 and report["auc_label1"]["top_sim"] > 0.99
    assert 0.45 < th["sim_min"] < 0.55
    levels = [0 if s < th["delta1"] else 1 if s < th["delta2"] else 2
              for s in (score_features(r, th) for r in rows)]
    truth = [0 if r["top_sim"] <= 0.5 else 1 if r["top_sim"] <= 0.8 else 2 for r in rows]
    assert np.mean(np.array(levels) == np.array(truth)) > 0.9


def test_fit_without_any_gain_never_retrieves():
    rows = [dict(r, nll_single=1.5, nll_multi=1.6) for r in synthetic_rows(50)]
    th, report = calibrate.fit(rows)
    assert report["label1_positive_rate"] == 0 and th["delta2"] == 1.0
    assert all(score_features(r, th) < th["delta1"] for r in rows)


def test_thresholds_yaml_round_trip(tmp_path):
    th, report = calibrate.fit(synthetic_rows(60))
    path = tmp_path / "gate.yaml"
    calibrate.write_yaml(path, th, calibrate.provenance(command="test", report=report))
    loaded = load_thresholds(path)
    assert {k: loaded[k] for k in th} == th and loaded["file"] == str(path)
    document = yaml.safe_load(path.read_text())
    assert document["calibration"]["command"] == "test"
    assert {k: merge_thresholds(document)[k] for k in th} == th  # the whole file works as overrides too


def test_packaged_thresholds_are_valid_if_present():
    path = Path(__file__).resolve().parents[1] / "config" / "gate_thresholds.yaml"
    if not path.is_file():
        pytest.skip("not calibrated yet")
    th = load_thresholds(path)
    assert th["calibrated"] and 0 <= th["delta1"] <= th["delta2"] <= 1
    assert yaml.safe_load(path.read_text())["calibration"]["command"].startswith("hola-ros calibrate-gate")


def test_gsm8k_helpers(tmp_path):
    f = tmp_path / "train.jsonl"
    rows = [{"question": f"Q{i}: what is {i}+{i}?", "answer": f"{i}+{i} = <<{i}+{i}={2*i}>>{2*i}\n#### {2*i:,}"}
            for i in range(600, 610)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    ex = gsm8k.load(f)
    assert ex[0].rationale == "600+600 = 1200\nThe answer is 1200." and ex[0].answer == "1200"
    rest, held = gsm8k.split(ex, dev_fold=1, folds=5)
    assert [e.line for e in held] == [2, 7] and len(rest) == 8
    assert gsm8k.exact_match("... so she pays $1,200. The answer is 1,200.", "1200")
    assert gsm8k.exact_match("It costs 42 dollars", "42") and not gsm8k.exact_match("no idea", "42")
    assert not gsm8k.exact_match("The answer is 41.", "42")


def test_bench_corpus_is_distinct_and_sized(tmp_path):
    from hola_ros.cli.bench_rag import synthetic_corpus

    ex = [gsm8k.Example(i, f"Tom has {i} apples and buys {i + 3} more. How many now?",
                        f"{i} + {i + 3} = {2 * i + 3} apples in total\nThe answer is {2 * i + 3}.", str(2 * i + 3))
          for i in range(10, 20)]
    corpus = synthetic_corpus(ex, 250)
    assert len(corpus) == len(set(corpus)) == 250
    assert corpus[0] == ex[0].question and "The answer is" not in " ".join(corpus)
