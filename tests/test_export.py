"""``scoresde export``: weights-only safetensors + config.json that load_pretrained rebuilds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scoresde.cli import main
from scoresde.training import CheckpointError, load_checkpoint, load_pretrained


def test_export_rebuilds_the_ema_model_and_samples_the_same(ckpt, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--ckpt", ckpt, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["ema"] is True and config["data"]["name"] == "moons"

    sde, model, score_fn, meta = load_pretrained(out, "cpu")
    _, ref_model, ref_score, _ = load_pretrained(ckpt, "cpu")
    state, ref_state = model.state_dict(), ref_model.state_dict()
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    assert meta["ema"] and meta["step"] == 3 and meta["data"]["shape"] == [2]
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    assert torch.equal(score_fn(x, t), ref_score(x, t))

    common = ["sample", "--n", "5", "--steps", "4", "--solver", "ddim", "--seed", "1"]
    assert main([*common, "--ckpt", ckpt, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--ckpt", str(out), "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy")
    )


def test_export_raw_weights_and_bad_inputs(ckpt, tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["export", "--ckpt", ckpt, "--out", str(raw), "--no-ema"]) == 0
    _, model, _, meta = load_pretrained(raw, "cpu", ema=False)
    weights = load_checkpoint(ckpt)["model"]
    assert not meta["ema"] and all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "ema")]) == 0
    with pytest.raises(ValueError, match="only the EMA weights"):
        load_pretrained(tmp_path / "ema", "cpu", ema=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_pretrained(empty)
    (raw / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_pretrained(raw, "cpu", ema=False)
    assert main(["export", "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_check_ckpt_against_the_models_own_reference(ckpt, tmp_path, capsys):
    """ODE errors shrink with NFE against the dopri5 reference; the export checks the same."""
    from scoresde.model_check import check_model

    sde, _, score_fn, _ = load_pretrained(ckpt, "cpu")
    result = check_model(
        sde, score_fn, (2,), ["ddim", "ode_heun", "euler_maruyama"], (5, 9, 17), n=64
    )
    ddim = [r["pathwise"] for r in result["records"] if r["solver"] == "ddim"]
    assert ddim[0] > ddim[1] > ddim[2] > 0
    heun = [r["pathwise"] for r in result["records"] if r["solver"] == "ode_heun"]
    assert heun[0] > heun[1] > heun[2] and heun[2] < ddim[2]
    assert 0.5 < result["orders"]["ddim"][0] < 1.6  # first order (few steps: pre-asymptotic)
    em = [r for r in result["records"] if r["solver"] == "euler_maruyama"]
    assert all(np.isnan(r["pathwise"]) and r["sliced_w2"] > 0 for r in em)
    out = tmp_path / "export"
    assert main(["export", "--ckpt", ckpt, "--out", str(out)]) == 0
    args = ["check", "--ckpt", str(out), "--solvers", "ddim", "--nfe", "5", "9", "--samples", "32"]
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "pathwise RMSE" in printed and "Empirical order" in printed
    assert all((tmp_path / "c" / f"model_check.{ext}").exists() for ext in ("json", "csv", "png"))
