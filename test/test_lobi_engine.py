"""Lo-Bi on the engine's own formats (lobi.engine_build): the budgeted bit search writes an engine that
load_engine serves; real model (SmolLM2-135M, whose tied output layer is its one 8-bit tensor)."""
import json
import re

import numpy as np
import pytest

from hola_ros.core import gguf_import
from lobi_helpers import write_calib

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the module builds two engines of SmolLM2 once

MODEL = "smollm2-135m-instruct"


def test_requantized_4bit_weights_sit_on_their_grid_with_a_bounded_error():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 96)) * rng.uniform(0.01, 1.0, (64, 1))).astype(np.float32)
    q = gguf_import.requantize_with_minima(w, 4)
    assert q.bits == 4 and q.block == 32 and q.mins is not None and q.codes.shape == (64, 3, 16)
    back = gguf_import.dequantized(q)
    span = w.reshape(64, 3, 32).max(-1) - w.reshape(64, 3, 32).min(-1)
    # half a step of the grid, or what a range shrunk by at most 10 % clips at either end
    assert np.all(np.abs(back - w).reshape(64, 3, 32).max(-1) <= span * (0.5 / 15 + 0.05) + 1e-6)
    assert np.square(back - w).sum() < 0.01 * np.square(w).sum()
    eight = gguf_import._requantize(w)  # noqa: SLF001 (the converter's own 8-bit requantization)
    assert np.square(gguf_import.dequantized(eight) - w).sum() < np.square(back - w).sum() / 50


@pytest.mark.parametrize("fmt", ["q4", "q4_128"])
def test_onnx_runtime_computes_with_the_weights_the_lobi_formats_stand_for(fmt):
    """MatMulNBits (float compute) on a requantized linear equals x @ dequantized(W)^T: codes, scales,
    minima and packed zero points are laid out as the kernel reads them."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from hola_ros.core.onnx_graph import IR_VERSION, OPSET, _Writer  # noqa: PLC2701

    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 384)).astype(np.float32)
    exact = gguf_import.requantize_zero_point(w, 8, 32)  # an 8-bit "exact" tensor, as Q6_K / Q5_0 are held
    q, fidelity = gguf_import.held_as(exact, "exact", fmt)
    assert fidelity == "near" and q.bits == 4 and q.block == (32 if fmt == "q4" else 128)
    writer = _Writer(None, None, None, accuracy_level=0)
    y = writer.matmul("x", q)
    graph = helper.make_graph(writer.g.nodes + [helper.make_node("Identity", [y], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 384])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 48])], writer.g.inits)
    model = helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    x = rng.standard_normal((1, 3, 384)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ gguf_import.dequantized(q).T, rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from hola_ros.core.lobi.engine_build import build_engine_artifacts

    root = tmp_path_factory.mktemp("lobi-engine")
    # 115 MB: below what moving the 8-bit output layer to 4 bits reaches (~133), so some blocks take q4_128
    targets = [(root / "roomy", 1000.0), (root / "tight", 115.0)]
    calib = write_calib(root / "calib.jsonl")  # the suite needs no data outside the checkout
    manifests = build_engine_artifacts(targets, model=MODEL, calib=calib, calib_size=12, heldout_seqs=3, threads=2)
    return dict(zip(("roomy", "tight"), zip((t[0] for t in targets), manifests)))


def test_a_budget_that_holds_every_exact_code_moves_nothing_and_changes_no_logit(built):
    path, manifest = built["roomy"]
    assert manifest["quant"]["requantized"] == [] and {b["format"] for b in manifest["blocks"].values()} == {"exact"}
    assert manifest["quality"]["kl_per_token"] == 0.0 and manifest["quality"]["top1_agreement"] == 1.0
    assert manifest["bytes"]["weights"] == manifest["bytes"]["reference_engine"]


def test_a_tight_budget_moves_blocks_to_cheaper_formats_and_the_engine_fits_it(built):
    path, manifest = built["tight"]
    moved = {name: b["format"] for name, b in manifest["blocks"].items() if b["format"] != "exact"}
    assert moved and all(b["error"] > 0 for name, b in manifest["blocks"].items() if name in moved)
    assert sorted(manifest["quant"]["requantized"]) == sorted(n for b in moved for n in manifest["blocks"][b]["linears"])
    assert manifest["bytes"]["weights"] <= manifest["quant"]["budget_mb"] * 1e6 < manifest["bytes"]["reference_engine"]
    assert 0 < manifest["quality"]["kl_per_token"] and manifest["quality"]["top1_agreement"] < 1.0
    assert manifest["row_invariant"] is True
    meta = json.loads((path / "meta.json").read_text())
    held = {"q4": r"4-bit/32 \+ minima", "q4_128": r"4-bit/(128|64) \+ zero points"}  # 576 inputs: blocks of 64
    for block, fmt in moved.items():
        for name in manifest["blocks"][block]["linears"]:
            assert re.fullmatch(held[fmt], meta["weights"][name]["as"]) and meta["weights"][name]["fidelity"] == "near"


def test_load_engine_serves_the_artifact_and_greedy_hsd_equals_its_plain_decoding(built):
    from hola_ros.core.engines import load_engine
    from hola_ros.core.hsd import GenerationConfig, generate

    path, manifest = built["tight"]
    model = load_engine(str(path), threads=2)
    assert model.info["manifest"]["quant"]["budget_mb"] == 115.0 and model.info["row_invariant"]
    prompt = model.chat_ids([{"role": "user", "content": "List three colours, then three colours again."}])
    ar = generate(model, prompt, GenerationConfig(mode="ar", max_new_tokens=40))
    hsd = generate(model, prompt, GenerationConfig(mode="hsd", max_new_tokens=40))
    assert hsd.token_ids == ar.token_ids and hsd.stats["exact"]


def test_calls_are_padded_to_even_rows_where_the_4bit_kernel_rounds_a_lone_row_differently(built):
    """MatMulNBits on 4-bit blocks of 64 or more computes rows in pairs and a left-over row on a
    kernel of its own: characterize finds the engine invariant only with every call padded to an
    even number of rows, and without the padding it is not."""
    from hola_ros.core.engines import _blocks_equal_steps, load_engine  # noqa: PLC2701

    path, manifest = built["tight"]
    assert "q4_128" in {b["format"] for b in manifest["blocks"].values()}
    model = load_engine(str(path), threads=2)
    assert model.info["row_multiple"] == 2 and model.info["row_invariant"]
    ids = model.encode("The quick brown fox jumps over the lazy dog. " * 3)
    assert _blocks_equal_steps(model, ids, blocks=(3, 4, 5, 7))
    model.info["row_multiple"] = 1  # the control: lone rows on the kernel's own one-row path
    assert not _blocks_equal_steps(model, ids, blocks=(4,))  # the one-token steps differ
    assert not _blocks_equal_steps(model, ids, blocks=(5,))


def test_the_same_engine_loaded_to_draft_is_neither_padded_nor_spinning_and_output_stays_exact(built):
    """A drafter's rows need no invariance (the target checks every token it proposes): loaded as level 1
    the padded engine runs lone rows on their own kernel, its threads sleep between calls (they share
    the cores with the target's), and greedy HSD with it still equals the target's plain decoding."""
    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.engines import load_engine, load_l1
    from hola_ros.core.hsd import GenerationConfig, generate

    path, _ = built["tight"]
    target = load_engine(str(path), threads=2)
    l1 = load_l1(str(path), threads=2)
    assert l1.info["drafter"] and l1.info["row_invariant"] is None and l1.info["row_multiple"] == 1
    assert target.info["row_multiple"] == 2 and not target.info.get("drafter")

    def spins(model) -> bool:
        options = model.new_session().sess.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # not set: ONNX Runtime's default, spinning
            return True
    assert not spins(l1) and spins(target)
    prompt = target.encode("Write the numbers from one to twenty in words: one, two, three,")
    ar = generate(target, prompt, GenerationConfig(mode="ar", max_new_tokens=32))
    hsd = generate(target, prompt, GenerationConfig(mode="hsd", max_new_tokens=32, adaptive_draft=False, draft_len=4),
                   drafter=LocalDrafter(ngram=False, model=l1))
    assert hsd.token_ids == ar.token_ids and hsd.stats["exact"]
    assert hsd.stats["proposed_per_level"]["L1"] > 0


def test_a_budget_below_every_block_at_4_bits_is_refused_with_the_minimum(tmp_path, capsys):
    from hola_ros.cli import main

    assert main(["lobi", "build", "--model", MODEL, "--budget-mb", "60", "--calib", str(write_calib(tmp_path / "c.jsonl")),
                 "--calib-size", "8", "--seq-len", "32", "--heldout-seqs", "1", "--out", str(tmp_path / "x"), "--json"]) == 2
    assert re.search(r"budget 60.00 MB is below the smallest possible model \(\d+\.\d+ MB", capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
    assert main(["lobi", "build", "--model", MODEL, "--budget-mb", "130", "--lowrank"]) == 2  # a torch-build option


def test_the_engine_graph_goes_to_tensorrt_where_it_exists_and_says_why_not_here(built):
    import onnxruntime as ort

    from hola_ros.core.engines import load_engine
    from hola_ros.core.hsd import GenerationConfig, generate

    path, _ = built["tight"]
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="no TensorRT and CUDA providers here"):
            load_engine(str(path), backend="tensorrt")
        pytest.skip("no TensorRT here: onnxruntime has no TensorrtExecutionProvider (PyPI's tensorrt packages "
                    "cannot install on these machines; JetPack's onnxruntime-gpu on a Jetson has it)")
    trt = load_engine(str(path), backend="tensorrt")
    assert trt.info["providers"][0] == "TensorrtExecutionProvider"
    prompt = trt.chat_ids([{"role": "user", "content": "Name a colour."}])
    out = generate(trt, prompt, GenerationConfig(mode="hsd", max_new_tokens=16))
    assert out.token_ids and out.stats["exact"] == trt.info["row_invariant"]  # probed on TensorRT, not assumed


def test_a_lobi_spec_names_the_built_engine_or_says_how_to_build_it(tmp_path, monkeypatch):
    from hola_ros.core.engines import load_engine
    from hola_ros.core.model_store import lobi_engine_dir

    monkeypatch.setenv("HOLA_ROS_CACHE", str(tmp_path))
    assert lobi_engine_dir("qwen2.5-coder-1.5b-instruct@1150mb") == tmp_path / "lobi" / "qwen2.5-coder-1.5b-instruct-1150mb"
    assert lobi_engine_dir("qwen2.5-coder-1.5b-instruct") is None and lobi_engine_dir("a@b@1mb") is None
    with pytest.raises(FileNotFoundError, match=r"hola-ros lobi build --model smollm2-135m-instruct --budget-mb 120"):
        load_engine("smollm2-135m-instruct@120mb")
