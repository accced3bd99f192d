import json

from lobi_helpers import save_tiny, write_calib


def test_cli_build_with_recovery_and_onnx_then_show(tmp_path, capsys):
    from hola_ros.cli import main
    from hola_ros.core.lobi import load_artifact, read_manifest

    base = save_tiny(tmp_path / "base", low_rank_mlp=True)
    calib = write_calib(tmp_path / "c.jsonl")
    args = ["lobi", "build", "--model", str(base), "--calib", str(calib), "--calib-size", "24", "--seq-len", "32",
            "--search-seqs", "4", "--lowrank", "--rank-tol", "0.05", "--group", "16", "--recovery-s", "2", "--export", "onnx"]
    assert main(args + ["--budget-mb", "0.06,0.2", "--out", str(tmp_path / "arts")]) == 0
    out = capsys.readouterr().out
    assert "Lo-Bi blocks" in out and "top-1 agreement" in out
    small, large = (read_manifest(tmp_path / "arts" / f"base-{b}mb") for b in ("0.06", "0.2"))
    assert small["bytes"]["weights"] <= 0.06e6 < large["bytes"]["weights"] <= 0.2e6
    assert small["base"]["sha256"] == large["base"]["sha256"]
    assert small["build_command"].startswith("hola-ros lobi build")
    assert small["lowrank"]["recovery"]["steps"] > 0
    assert small["error"]["block_error_sum"] > large["error"]["block_error_sum"]
    draft = load_artifact(tmp_path / "arts" / "base-0.06mb")
    assert draft.info["backend"] == "onnxruntime"
    assert draft.new_session().forward([1, 2, 3], last_only=True).shape == (1, 300)

    assert main(["lobi", "show", str(tmp_path / "arts" / "base-0.2mb"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quant"]["budget_mb"] == 0.2
    assert main(["lobi", "export", str(tmp_path / "arts" / "base-0.2mb"), "--to", "tensorrt"]) == 0
    exported = read_manifest(tmp_path / "arts" / "base-0.2mb")
    assert exported["exports"]["onnx_dense"]["flavour"] == "dense" and "onnx" in exported["exports"]
    assert exported["bytes"]["on_disk"] > large["bytes"]["on_disk"]

    assert main(args + ["--budget-mb", "0.001", "--out", str(tmp_path / "none")]) == 2
    assert "below the smallest possible model" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_lora_recovery_lowers_the_distillation_loss():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hola_ros.core.lobi.lowrank import factors, spectrum
    from hola_ros.core.lobi.recovery import recover

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    seqs = torch.randint(0, 64, (8, 16))
    eye = torch.eye(32)
    parts = {}
    for lin in ("gate_proj", "up_proj"):  # full-rank weights cut to rank 4: a large error to recover
        w = model.get_submodule(f"model.layers.0.mlp.{lin}").weight
        a, b = factors(w, spectrum(w, eye), 4)
        parts[f"model.layers.0.mlp.{lin}"] = {"a": a, "b": b}
    before = {n: (p["a"].clone(), p["b"].clone()) for n, p in parts.items()}
    report = recover(model, parts, seqs, lambda name: eye, seconds=1.0, rank=4, lr=3e-2, batch=8)
    assert report["steps"] >= 1 and report["layers"] == 2
    assert report["kl_after_adapters"] < report["kl_before"]
    for n, p in parts.items():
        assert p["a"].shape == before[n][0].shape and p["b"].shape == before[n][1].shape
        assert not torch.equal(p["b"] @ p["a"], before[n][1] @ before[n][0])
