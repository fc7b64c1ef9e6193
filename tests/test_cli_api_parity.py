"""The CLI gives the Python API's numbers for the same seed and flags, and every flag takes effect.

Only observable outputs are compared (``samples.npy``, ``results.json``, the ``--json`` of
``likelihood``), against the documented API route: ``load_pretrained`` + ``solvers.sample`` with
``x_T = sde.prior_sample(shape, generator=torch.Generator().manual_seed(seed))`` and the same
generator for the solver noise; ``run_study``; ``log_likelihood``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import solvers
from scoresde import VESDE, VPSDE
from scoresde.cli import main
from scoresde.guidance import classifier_free_guidance
from scoresde.harness import run_study
from scoresde.training import load_pretrained

TINY_MLP = ["--hidden", "16", "--depth", "1", "--batch", "64", "--no-progress"]
TINY_UNET = ["--channels", "16", "--channel-mult", "1,2", "--num-res-blocks", "1", "--attn", "4"]
TINY_UNET += ["--batch", "8", "--no-progress"]


@pytest.fixture(scope="module")
def moons_ckpt(tmp_path_factory):
    """A tiny moons model whose EMA (decay 0.5 over 20 steps) differs from its raw weights."""
    run = tmp_path_factory.mktemp("moons")
    args = ["train", "--data", "moons", "--steps", "20", "--seed", "3", "--ema", "0.5"]
    assert main([*args, "--out", str(run), *TINY_MLP]) == 0
    return str(run / "checkpoint.pt")


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits")
    # no LR warm-up, so that 4 steps move the label embedding enough for guidance to show
    args = ["train", "--data", "digits", "--cond", "--steps", "4", "--seed", "1", "--warmup", "1"]
    args += ["--lr", "5e-3"]
    assert main([*args, "--out", str(run), *TINY_UNET]) == 0
    return str(run / "checkpoint.pt")


def cli_samples(tmp_path, ckpt: str, *flags: str) -> np.ndarray:
    out = tmp_path / "out"
    args = ["sample", "--ckpt", ckpt, "--n", "6", "--steps", "5", "--seed", "4", "--out", str(out)]
    assert main([*args, "--device", "cpu", *flags]) == 0
    return np.load(out / "samples.npy")


def api_samples(ckpt: str, ema=True, label=None, guidance=0.0, solver="euler_maruyama"):
    sde, model, score_fn, meta = load_pretrained(ckpt, "cpu", ema=ema)
    if label is not None:
        score_fn = (
            classifier_free_guidance(model.score, label, guidance, model.null_label)
            if guidance
            else model.score_fn(label)
        )
    shape = tuple(meta["data"]["shape"])
    gen = torch.Generator().manual_seed(4)
    x_T = sde.prior_sample((6, *shape), generator=gen)
    out, _ = solvers.sample(sde, score_fn, x_T=x_T, solver=solver, steps=5, generator=gen)
    return out.float().numpy()


def test_sample_matches_the_api_and_no_ema_takes_effect(tmp_path, moons_ckpt):
    ema = cli_samples(tmp_path / "a", moons_ckpt)
    raw = cli_samples(tmp_path / "b", moons_ckpt, "--no-ema")
    np.testing.assert_allclose(ema, api_samples(moons_ckpt, ema=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw, api_samples(moons_ckpt, ema=False), rtol=1e-5, atol=1e-6)
    assert np.abs(ema - raw).max() > 1e-3  # the flag changes the weights used


def test_sample_solver_and_seed_flags_take_effect(tmp_path, moons_ckpt):
    heun = cli_samples(tmp_path / "a", moons_ckpt, "--solver", "ode_heun")
    np.testing.assert_allclose(
        heun, api_samples(moons_ckpt, solver="ode_heun"), rtol=1e-5, atol=1e-6
    )
    other_seed = cli_samples(tmp_path / "b", moons_ckpt, "--solver", "ode_heun", "--seed", "5")
    assert np.abs(heun - other_seed).max() > 1e-3


def test_sample_guidance_matches_the_api_and_takes_effect(tmp_path, digits_ckpt):
    cond = cli_samples(tmp_path / "a", digits_ckpt, "--label", "3")
    guided = cli_samples(tmp_path / "b", digits_ckpt, "--label", "3", "--guidance", "4")
    np.testing.assert_allclose(cond, api_samples(digits_ckpt, label=3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        guided, api_samples(digits_ckpt, label=3, guidance=4.0), rtol=1e-4, atol=1e-5
    )
    assert np.abs(guided - cond).max() > 1e-3  # the scale is used
    other = cli_samples(tmp_path / "c", digits_ckpt, "--label", "7")
    assert np.abs(other - cond).max() > 1e-3  # so is the label


CHECK = ["--solvers", "ddim", "ode_heun", "--target", "gaussian_aniso_2d", "--nfe", "6", "11"]


def cli_check(tmp_path, *flags: str) -> dict[tuple[str, int], float]:
    out = tmp_path / "check"
    assert main(["check", *CHECK, *flags, "--out", str(out), "--no-plot", "--quiet"]) == 0
    records = json.loads((out / "results.json").read_text())["records"]
    return {(r["solver"], r["nfe_budget"]): r["error"] for r in records}


def api_check(**kwargs) -> dict[tuple[str, int], float]:
    result = run_study(["ddim", "ode_heun"], ["gaussian_aniso_2d"], [6, 11], 0, **kwargs)
    return {(r.solver, r.nfe_budget): r.error for r in result.records}


@pytest.mark.parametrize(
    "flags, kwargs",
    [
        ([], {"sde": VPSDE()}),
        (["--sde", "VESDE"], {"sde": VESDE()}),
        (["--grid", "karras"], {"sde": VPSDE(), "grid": "karras"}),
        (["--t-end", "0.01"], {"sde": VPSDE(), "t_end": 0.01}),
    ],
    ids=["default", "sde", "grid", "t_end"],
)
def test_check_matches_run_study_and_each_flag_takes_effect(tmp_path, flags, kwargs):
    cli = cli_check(tmp_path, *flags)
    api = api_check(**kwargs)
    assert cli.keys() == api.keys()
    for key in cli:
        assert cli[key] == pytest.approx(api[key], rel=1e-9), key
    if flags:  # the flag moved the numbers away from the defaults
        default = api_check(sde=VPSDE())
        assert all(abs(cli[k] - default[k]) > 1e-3 * default[k] for k in cli), (cli, default)


def test_likelihood_matches_the_api_and_flags_take_effect(tmp_path, moons_ckpt):
    from scoresde.data import get_dataset
    from scoresde.likelihood import log_likelihood

    def cli(*flags: str) -> float:
        path = tmp_path / "nll.json"
        args = ["likelihood", "--ckpt", moons_ckpt, "--n", "16", "--seed", "2", "--device", "cpu"]
        assert main([*args, "--float64", "--json", str(path), *flags]) == 0
        return json.loads(path.read_text())["nll_nats"]

    def api(ema: bool) -> float:
        sde, model, score_fn, _ = load_pretrained(moons_ckpt, "cpu", ema=ema)
        model.double()
        x, _ = get_dataset("moons").heldout(16, seed=2)  # the CLI scores held-out data
        x = x.double()
        res = log_likelihood(sde, score_fn, x, rtol=1e-5, atol=1e-5, divergence="exact")
        return float(-res.logp.mean())

    nll, nll_raw = cli(), cli("--no-ema")
    assert nll == pytest.approx(api(True), rel=1e-6)
    assert nll_raw == pytest.approx(api(False), rel=1e-6)
    assert abs(nll - nll_raw) > 1e-4  # 30x the CLI-API agreement (rel 1e-6 of ~2.9 nats)
    assert abs(cli("--rtol", "1e-2", "--atol", "1e-2") - nll) > 1e-6  # the tolerances reach the ODE
