import pytest
import torch

t = torch.from_numpy  # engine sessions return numpy logits

from lobi_helpers import save_tiny, write_calib


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from hola_ros.core.lobi import build_artifact

    root = tmp_path_factory.mktemp("onnx")
    base = save_tiny(root / "base", low_rank_mlp=True)
    out = root / "lobi"
    # a budget that forces a mix of 4/8/16-bit blocks so every export path is exercised
    manifest = build_artifact(out, budget_mb=0.075, model=str(base), calib=write_calib(root / "c.jsonl"),
                              calib_size=24, seq_len=32, search_seqs=4, lowrank=True, rank_tol=0.05, group=16, export=("onnx", "tensorrt"))
    return out, manifest, base


def _export(path, manifest, flavour, acc):
    from hola_ros.core.lobi import onnx_backend

    model = onnx_backend.build_graph(path, manifest, flavour, acc)
    rel = f"onnx/test-{flavour}-{acc}.onnx"
    (path / rel).write_bytes(model.SerializeToString())
    return onnx_backend.session_factory(path, {"path": rel, "flavour": flavour}, threads=1)


def _reference(path):
    from hola_ros.core.lobi import load_artifact

    return load_artifact(path, backend="torch", verify_base=False)


def test_budget_mixed_bits(art):
    bits = {b["bits"] for b in art[1]["blocks"].values()}
    assert len(bits) >= 2, bits


@pytest.mark.parametrize("flavour", ["nbits", "dense"])
def test_onnx_matches_torch_with_incremental_cache_and_rollback(art, flavour):
    path, manifest, _ = art
    ref = _reference(path)
    ids = list(range(40, 80))
    with torch.inference_mode():
        full = ref.model(input_ids=torch.tensor([ids])).logits[0]
    scale = full.abs().max().item()
    sess = _export(path, manifest, flavour, 0)()
    prefill = t(sess.forward(ids[:20]))
    assert prefill.shape == (20, ref.vocab_size) and prefill.dtype == torch.float32
    assert torch.allclose(prefill, full[:20], atol=1e-4 * scale)
    for i in range(20, 26):  # one token at a time through the cache
        step = t(sess.forward([ids[i]]))
        assert torch.allclose(step[0], full[i], atol=1e-4 * scale)
    block = t(sess.forward(ids[26:30]))  # a verification-sized block
    assert torch.allclose(block, full[26:30], atol=1e-4 * scale)
    sess.rollback(22)
    assert sess.length == 22
    sess.forward([5, 6, 7])  # wrong continuation, then back again
    sess.rollback(22)
    again = t(sess.forward(ids[22:34], last_only=True))
    assert again.shape == (1, ref.vocab_size)
    assert torch.allclose(again[0], full[33], atol=1e-4 * scale)
    with pytest.raises(ValueError):
        sess.rollback(sess.length + 1)


def test_fast_kernels_stay_close_and_load_artifact_picks_onnxruntime(art):
    from hola_ros.core.lobi import load_artifact

    path, manifest, base = art
    assert manifest["exports"]["onnx"]["accuracy_level"] == 4
    draft = load_artifact(path, base=str(base))
    assert draft.info["backend"] == "onnxruntime" and draft.model is None
    ref = _reference(path)
    ids = draft.encode("How many wheels do 4 robots have if each robot")
    got = t(draft.new_session().forward(ids))
    with torch.inference_mode():
        want = ref.model(input_ids=torch.tensor([ids])).logits[0]
    # accuracy level 4 quantizes activations to int8 inside MatMulNBits: close, not exact
    assert ((got - want).norm() / want.norm()).item() < 0.05
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() > 0.9


def test_provider_selection():
    from hola_ros.core.lobi.onnx_backend import select_providers

    cpu = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(cpu, "nbits") == cpu
    assert select_providers(gpu, "dense") == gpu
    assert select_providers(gpu, "nbits") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(gpu, "dense", prefer="CUDAExecutionProvider") == ["CUDAExecutionProvider",
                                                                            "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="not available"):
        select_providers(cpu, "dense", prefer="TensorrtExecutionProvider")


def test_tensorrt_cache_keys_and_automatic_backend(art):
    from hola_ros.core.lobi.artifact import auto_backend
    from hola_ros.core.lobi.trt_backend import engine_key, engine_path

    path, manifest, _ = art
    dense = manifest["exports"]["onnx_dense"]
    assert dense["flavour"] == "dense" and (path / dense["path"]).is_file()
    key = engine_key(dense["sha256"], "fp16", "10.3", "sm87")
    assert key.startswith(dense["sha256"][:16])
    assert len({key, engine_key(dense["sha256"], "fp32", "10.3", "sm87"), engine_key(dense["sha256"], "fp16", "10.4",
                "sm87"), engine_key("0" * 64, "fp16", "10.3", "sm87")}) == 4
    assert engine_path(path, dense["sha256"], "fp16", "10.3", "sm87").parent == path / "trt"
    with pytest.raises(ValueError):
        engine_key(dense["sha256"], "int3", "10.3", "sm87")
    assert auto_backend(path, manifest, trt_ok=True) == "tensorrt"
    assert auto_backend(path, manifest, trt_ok=False) == "onnxruntime"
    no_exports = dict(manifest, exports={})
    assert auto_backend(path, no_exports, trt_ok=True) == "torch"


def test_tensorrt_engine_runs_like_torch(art):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA device")
    from hola_ros.core.lobi import load_artifact

    path, _, base = art
    engine = load_artifact(path, backend="tensorrt", base=str(base))
    ref = _reference(path)
    ids = list(range(40, 60))
    with torch.inference_mode():
        full = ref.model(input_ids=torch.tensor([ids])).logits[0]
    sess = engine.new_session()
    got = torch.cat([t(sess.forward(ids[:12])), t(sess.forward(ids[12:16])), t(sess.forward(ids[16:]))])
    assert ((got - full).norm() / full.norm()).item() < 0.02  # fp16 engine
    sess.rollback(12)
    assert torch.allclose(t(sess.forward(ids[12:16])), got[12:16], atol=1e-2 * full.abs().max().item())


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_compressed_drafter_inside_hsd_keeps_greedy_output_identical(art, backend):
    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.hsd import GenerationConfig, generate
    from hola_ros.core.lobi import load_artifact
    from hola_ros.core.engines import load_engine

    path, _, base = art
    target = load_engine(str(base))
    draft = load_artifact(path, backend=backend, base=target)
    prompt = target.encode("The robot moves to the kitchen and picks up 3 red cups. Then it")
    ar = generate(target, prompt, GenerationConfig(max_new_tokens=40, mode="ar"))
    # a fixed draft length: what is tested here is exactness with a compressed drafter, not whether it pays
    hsd = generate(target, prompt, GenerationConfig(max_new_tokens=40, adaptive_draft=False),
                   drafter=LocalDrafter(ngram=False, model=draft))
    assert hsd.token_ids == ar.token_ids and len(ar.token_ids) > 0
    assert hsd.stats["proposed_per_level"]["L1"] > 0
    assert hsd.stats["acceptance_rate"] > 0.3  # a close copy of the target, so most drafts pass
