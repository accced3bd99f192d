"""Report generator on a tiny model: tables agree with the rows, plots are PNGs, absent peers are said absent."""
import re

import pytest

from helpers_tiny import tiny_model
from hola_ros.core.drafters import LocalDrafter
from hola_ros.core.evaluation import report
from hola_ros.core.evaluation.runner import EvalSettings, Resources, ResultsFile, evaluate, load_items
from test_eval_runner import write_gsm8k


@pytest.fixture(scope="module")
def measurements(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    target = tiny_model(seed=0, sharpen=4.0)
    s = EvalSettings(task="gsm8k", data=str(write_gsm8k(tmp / "gsm.jsonl")), configs=("ar", "hsd", "lobi"),
                     max_new_tokens=24, l1=None, rag_source=None, out=str(tmp / "eval"))
    summary = {"configs": evaluate(s, Resources(s, target=target), log=lambda m: None),
               "items": {"n": 5}, "meta": {"settings": vars(s)}}
    summary["rows"] = ResultsFile(tmp / "eval" / "results.jsonl").rows()
    prompts = [target.encode(it.question) for it in load_items(s)[0][:2]]
    sweep = report.draft_sweep(target, prompts, lambda: LocalDrafter(ngram=True), lengths=(1, 4), max_new_tokens=16)
    return {"meta": {"command": "test", "date": "now", "cpus": 2, "load_average": [1.0, 1.0, 1.0],
                     "load_average_end": [1.0, 1.0, 1.0]},
            "eval": summary, "bench": {"error": "not run in tests"}, "lobi_bench": None, "lobi_bits": {"8": 3, "4": 1},
            "draft_sweep": {"drafter": "L0 n-gram", "prompts": 2, "max_new_tokens": 16, "rows": sweep}}


def test_report_tables_match_the_rows(measurements, tmp_path):
    md = report.build_report(measurements, tmp_path).read_text()
    rows = measurements["eval"]["rows"]
    ar = {r["id"]: r for r in rows if r["config"] == "ar"}
    hsd = [r for r in rows if r["config"] == "hsd"]
    speedup = sum(ar[r["id"]]["gen_s"] for r in hsd) / sum(r["gen_s"] for r in hsd)
    line = next(x for x in md.splitlines() if x.startswith("| hsd vs ar |"))
    # the report keeps the ratio at 3 decimals and shows 2 (rounding twice: 0.8749 -> 0.875 -> 0.88)
    assert f"| 5 | {round(speedup, 3):.2f}x |" in line and line.endswith("| 100% |")  # lossless: identical output
    acc = sum(r["correct"] for r in ar.values())
    assert re.search(rf"^\| ar \| 5 \| {acc / 5:.3f} \({acc}/5\) \|", md, flags=re.M)
    assert "| lobi | 0 | skipped: no Lo-Bi artifact" in md
    assert "Not run: not run in tests." in md
    assert "8-bit: 3" in md and "(75% at 8 bits" in md
    for k in (1, 4):
        assert re.search(rf"^\| {k} \| \d\.\d{{3}} \| \d+ \|", md, flags=re.M)


def test_plots_are_pngs(measurements, tmp_path):
    report.build_report(measurements, tmp_path)
    for name in report.PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_acceptance_sweep_fixed_lengths(measurements):
    rows = measurements["draft_sweep"]["rows"]
    assert [r["draft_len"] for r in rows] == [1, 4]
    assert all(0.0 <= r["acceptance_rate"] <= 1.0 and r["proposed"] > 0 for r in rows)
    assert rows[1]["proposed"] >= rows[0]["proposed"]  # longer drafts propose more tokens
