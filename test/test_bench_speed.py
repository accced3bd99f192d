"""The speed benchmark compares like with like: same prompts and token counts, each system in its
own process, ratios against llama.cpp computed from this run, failures reported, not invented."""
import os
import sys

import pytest

from hola_ros.core.evaluation import speed
from lobi_helpers import save_tiny


def _run(system, set_name, i, tokens, seconds, ttft, **extra):
    """One timed run as speed._timed_run records it."""
    return {"set": set_name, "prompt": i, "prompt_tokens": 5, "new_tokens": len(tokens), "seconds": seconds,
            "ttft_s": ttft, "decode_tokens_per_s": (len(tokens) - 1) / (seconds - ttft), "cpu_s": seconds,
            "tokens": tokens, **extra}


def test_summary_ratios_identity_and_agreement_come_from_the_runs():
    results = {
        "llamacpp": {"system": "llamacpp", "peak_rss_mb": 200.0, "runs": [
            _run("llamacpp", "passage", 0, [1, 2, 3, 4, 5], 1.0, 0.2), _run("llamacpp", "passage", 1, [5, 6, 7, 8, 9], 1.0, 0.2)]},
        "ar": {"system": "ar", "peak_rss_mb": 250.0, "runs": [
            _run("ar", "passage", 0, [1, 2, 9, 9, 9], 2.0, 0.4, teacher_forced_agreement=0.75),
            _run("ar", "passage", 1, [5, 6, 7, 8, 9], 2.0, 0.4, teacher_forced_agreement=1.0)]},
        "hsd_l0": {"system": "hsd_l0", "peak_rss_mb": 260.0, "runs": [
            _run("hsd_l0", "passage", 0, [1, 2, 9, 9, 9], 0.5, 0.1, acceptance_rate=0.5, mean_accepted_block=2.0),
            _run("hsd_l0", "passage", 1, [5, 6, 7, 8, 9], 0.5, 0.1, acceptance_rate=0.7, mean_accepted_block=3.0)]},
        "lobi_ar": {"system": "lobi_ar", "peak_rss_mb": 240.0, "runs": [
            _run("lobi_ar", "passage", 0, [1, 2, 3, 3, 3], 1.0, 0.2), _run("lobi_ar", "passage", 1, [5, 6, 7, 8, 9], 1.0, 0.2)]},
        "lobi_hsd_l0": {"system": "lobi_hsd_l0", "peak_rss_mb": 240.0, "runs": [
            _run("lobi_hsd_l0", "passage", 0, [1, 2, 3, 3, 3], 0.5, 0.1, acceptance_rate=0.5, mean_accepted_block=2.0),
            _run("lobi_hsd_l0", "passage", 1, [5, 6, 7, 8, 9], 0.5, 0.1, acceptance_rate=0.5, mean_accepted_block=2.0)]},
        "hsd_l1": {"system": "hsd_l1", "error": "the hsd_l1 process failed (signal 4)"},
    }
    s = speed.summarize(results, ["passage"])["passage"]
    assert s["llamacpp"]["decode_tokens_per_s"] == 5.0 and s["ar"]["decode_tokens_per_s"] == 2.5
    assert s["ar"]["decode_tokens_per_s_x_llamacpp"] == 0.5 and s["hsd_l0"]["decode_tokens_per_s_x_llamacpp"] == 2.0
    assert s["hsd_l0"]["median_tokens_per_s_x_llamacpp"] == 2.0 and s["ar"]["ttft_x_llamacpp"] == 0.5
    assert s["hsd_l0"]["decode_tokens_per_s_x_ar"] == 4.0 and s["hsd_l0"]["same_as_ar"] is True
    assert s["lobi_ar"]["decode_tokens_per_s_x_ar"] == 2.0  # the Lo-Bi engine against the GGUF engine's AR
    assert s["lobi_hsd_l0"]["same_as_ar"] is True  # against its own engine's plain decoding, not the GGUF's
    assert s["hsd_l0"]["acceptance"] == pytest.approx(0.6) and s["hsd_l0"]["tokens_per_pass"] == 2.5
    assert s["ar"]["first_divergence_vs_llamacpp"] == 3.5  # (2 + 5) / 2
    assert s["ar"]["teacher_forced_agreement"] == pytest.approx(0.875)
    assert "hsd_l1" not in s
    md = speed.markdown({"spec": "m.gguf", "l1": None, "max_new_tokens": 4, "threads": 2, "time": "now",
                         "load_avg_end": [0.5, 0.5, 0.5], "results": results, "summary": {"passage": s}})
    assert "| passage | hsd_l0 | 10.00 | 2.00 | 4.00 | 0.100 | 2.00 | 10.00 | 2.00 |" in md
    assert "- hsd_l1: the hsd_l1 process failed (signal 4)" in md


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("speed") / "tiny", seed=1)


def test_a_real_run_each_system_in_its_own_process(tiny_dir):
    from hola_ros.core.engines import load_tokenizer
    from hola_ros.core.models import chat_ids

    tok = load_tokenizer(str(tiny_dir))
    prompts = {"passage": [chat_ids(tok, [{"role": "user", "content": "The robot picks up 3 red cups. " * 4}])],
               "gsm8k": [chat_ids(tok, [{"role": "user", "content": "How many wheels do 4 robots have?"}])]}
    warm = [chat_ids(tok, [{"role": "user", "content": "How many wheels do 3 robots have?"}])]
    report = speed.run(str(tiny_dir), prompts, ["llamacpp", "ar", "hsd_l0"], max_new_tokens=12, threads=1,
                       log=lambda m: None, ignore_eos=True, warm_prompts=warm)
    res = report["results"]
    assert res["hsd_l0"]["warm_answers"] == 1 and res["ar"]["warm_answers"] == 0 and report["warm_answers"] == 1
    assert "is not a GGUF file" in res["llamacpp"]["error"]
    for system in ("ar", "hsd_l0"):
        assert [r["new_tokens"] for r in res[system]["runs"]] == [12, 12]  # equal token counts, EOS suppressed
        assert res[system]["peak_rss_mb"] > 50
    assert set(res["ar"]["curve_s"]) == {str(b) for b in speed.CURVE_ROWS} and "curve_s" not in res["hsd_l0"]
    summary = report["summary"]
    assert summary["passage"]["hsd_l0"]["same_as_ar"] is True
    assert summary["gsm8k"]["ar"]["decode_tokens_per_s_x_llamacpp"] is None  # no peer row, no invented ratio
    assert all(r["ttft_s"] <= r["seconds"] for r in res["hsd_l0"]["runs"])


def test_a_crashing_peer_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, tiny_dir):
    """A llama.cpp build that dies of SIGILL (an instruction the VM does not allow) costs its own row only."""
    fake = tmp_path / "fake" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "_logger.py").write_text("def set_verbose(v):\n    pass\n")
    (fake / "llama_cpp.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]))
    got = speed.spawn({"system": "llamacpp", "spec": str(gguf), "l1": None, "prompts": {"passage": [[1, 2, 3]]},
                       "max_new_tokens": 4, "threads": 1, "curve": False, "reference": None}, log=lambda m: None)
    assert got["error"] == "the llamacpp process failed (signal 4)" and "runs" not in got
    assert sys.modules.get("llama_cpp") is None or "fake" not in str(sys.modules["llama_cpp"])
