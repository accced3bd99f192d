import itertools
import json

import pytest
import torch

from lobi_helpers import save_tiny, write_calib


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "base", low_rank_mlp=True)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return write_calib(tmp_path_factory.mktemp("calib") / "calib.jsonl")


@pytest.fixture(scope="module")
def built(tiny_dir, calib, tmp_path_factory):
    from hola_ros.core.lobi import build_artifact

    out = tmp_path_factory.mktemp("art") / "lobi"
    manifest = build_artifact(out, budget_mb=1.0, model=str(tiny_dir), calib=calib, calib_size=24, seq_len=32,
                              search_seqs=4, lowrank=True, rank_tol=0.05, group=16, command="test build")
    return out, manifest


def test_lowrank_error_falls_as_rank_rises_and_matches_measured_error():
    from hola_ros.core.lobi.lowrank import factors, spectrum

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=gen)
    x = torch.randn(400, 64, generator=gen) @ torch.randn(64, 64, generator=gen)  # correlated inputs
    spec = spectrum(w, x.T @ x)
    errs = [spec.error(r) for r in range(1, 49)]
    assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:]))
    assert errs[0] > 0.3 and errs[-1] < 1e-6
    for r in (4, 16, 32):
        a, b = factors(w, spec, r)
        measured = ((x @ (w - b @ a).T).norm() / (x @ w.T).norm()).item()
        assert measured == pytest.approx(spec.error(r), rel=1e-3, abs=1e-5)


def test_singular_gram_is_damped_until_it_factors_and_an_indefinite_one_is_refused():
    from hola_ros.core.lobi.lowrank import spectrum

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(32, 64, generator=gen)
    x = torch.randn(8, 64, generator=gen)  # fewer calibration tokens than input features
    gram = x.T @ x
    gram -= 1e-3 * gram.diagonal().mean() * torch.eye(64)  # rounding pushed it below zero
    with pytest.raises(RuntimeError):  # the undamped matrix does not factor
        torch.linalg.cholesky(gram.double() + 1e-6 * gram.diagonal().mean().double() * torch.eye(64).double())
    spec = spectrum(w, gram)
    assert spec.error(64) == pytest.approx(0.0, abs=1e-6) and 0 < spec.error(4) < 1
    with pytest.raises(ValueError, match="not positive definite even with damping"):
        spectrum(w, -torch.eye(64))


def test_choose_rank_leaves_dense_when_low_rank_does_not_pay():
    from hola_ros.core.lobi.lowrank import choose_rank, spectrum

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 64, generator=gen)
    full = spectrum(torch.randn(64, 64, generator=gen), x.T @ x)
    assert choose_rank(full, (64, 64), tol=0.05, pay_ratio=0.6, step=8) is None
    low = spectrum(torch.randn(64, 4, generator=gen) @ torch.randn(4, 64, generator=gen), x.T @ x)
    assert choose_rank(low, (64, 64), tol=0.05, pay_ratio=0.6, step=8) == 8


def test_quantize_error_and_bytes():
    from hola_ros.core.lobi.quant import nbytes, quantize

    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(2))
    errs = {}
    for bits in (4, 8, 16):
        q = quantize(w, bits, group=32)
        errs[bits] = ((q.dequantize() - w).norm() / w.norm()).item()
        stored = sum(t.numel() * t.element_size() for t in q.tensors("x").values())
        assert stored == nbytes((40, 96), bits, 32)
    assert errs[16] < errs[8] < errs[4] < 0.15


def test_bit_search_is_the_budgeted_optimum_and_refuses_impossible_budgets():
    from hola_ros.core.lobi.quant import BudgetError, search_bits

    gen = torch.Generator().manual_seed(3)
    errors, costs = {}, {}
    for i in range(5):
        size = int(torch.randint(50_000, 200_000, (1,), generator=gen))
        e4 = float(torch.rand(1, generator=gen)) * 0.1
        errors[f"b{i}"] = {4: e4, 8: e4 / 20, 16: e4 / 400}
        costs[f"b{i}"] = {4: size // 2, 8: size, 16: 2 * size}
    for budget in (400_000, 700_000, 1_200_000, 10_000_000):
        chosen = search_bits(errors, costs, budget, unit=1000)
        assert sum(costs[b][chosen[b]] for b in chosen) <= budget
        best = min((sum(errors[b][k] for b, k in zip(errors, combo)), combo)
                   for combo in itertools.product((4, 8, 16), repeat=5)
                   if sum(costs[b][k] for b, k in zip(errors, combo)) <= budget - 5000)  # rounding slack
        assert sum(errors[b][chosen[b]] for b in chosen) <= best[0] + 1e-12
    assert set(search_bits(errors, costs, 10_000_000).values()) == {16}
    with pytest.raises(BudgetError, match="smallest possible model"):
        search_bits(errors, costs, sum(c[4] for c in costs.values()) - 1)


def test_build_writes_a_manifest_that_round_trips(built, tiny_dir):
    from hola_ros.core.lobi import is_artifact, read_manifest
    from hola_ros.core.lobi.artifact import model_dir_sha256

    out, manifest = built
    assert is_artifact(out) and not is_artifact(tiny_dir)
    assert read_manifest(out) == json.loads(json.dumps(manifest))
    assert manifest["base"]["sha256"] == model_dir_sha256(tiny_dir)
    assert manifest["build_command"] == "test build"
    assert manifest["calibration"]["samples"] == 24 and manifest["calibration"]["tokens"] > 0
    ranks = {n: l["rank"] for n, l in manifest["layers"].items()}
    # the MLPs were made nearly rank 8, attention is random (full rank): only the MLPs pay
    assert all(ranks[n] == 16 for n in ranks if ".mlp." in n)
    assert all(ranks[n] is None for n in ranks if ".self_attn." in n)
    assert manifest["bytes"]["weights"] <= 1.0e6
    assert set(b["bits"] for b in manifest["blocks"].values()) <= {4, 8, 16}
    assert manifest["bytes"]["weights_file"] >= manifest["bytes"]["weights"]
    assert manifest["error"]["top1_agreement"] > 0.8


def test_load_artifact_torch_matches_the_base_model(built, tiny_dir):
    import numpy as np

    from hola_ros.core.engines import load_engine
    from hola_ros.core.lobi import load_artifact

    out, _ = built
    draft = load_artifact(out, backend="torch", base=str(tiny_dir))
    target = load_engine(str(tiny_dir))
    assert draft.vocab_size == target.vocab_size and 256 in draft.eos_token_ids
    ids = draft.encode("The robot moves to the kitchen and picks up")
    ld = draft.new_session().forward(ids)
    lt = target.new_session().forward(ids)
    assert ld.shape == lt.shape
    agree = float((ld.argmax(-1) == lt.argmax(-1)).mean())
    assert agree > 0.8
    assert float(np.linalg.norm(ld - lt) / np.linalg.norm(lt)) < 0.2


def test_budget_too_small_is_refused(tiny_dir, calib, tmp_path):
    from hola_ros.core.lobi import build_artifact
    from hola_ros.core.lobi.quant import BudgetError

    with pytest.raises(BudgetError, match="below the smallest possible model"):
        build_artifact(tmp_path / "x", budget_mb=0.01, model=str(tiny_dir), calib=calib, calib_size=8,
                       seq_len=32, search_seqs=2, group=16)
    assert not (tmp_path / "x").exists()


def test_mismatched_base_is_refused(built, tmp_path):
    from hola_ros.core.lobi import BaseMismatch, load_artifact

    other = save_tiny(tmp_path / "other", seed=1)
    with pytest.raises(BaseMismatch, match="was built from base model"):
        load_artifact(built[0], backend="torch", base=str(other))
