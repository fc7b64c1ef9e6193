"""Exact log-likelihood by the probability-flow ODE, against analytic densities."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, Gaussian, GaussianMixture, SubVPSDE
from scoresde.likelihood import (
    bits_per_dim,
    dequantization_offset,
    draw_probe,
    log_likelihood,
    uniform_dequantize,
)

F64 = torch.float64
T_EPS = 1e-5


def _gaussian(d: int = 2, seed: int = 0) -> Gaussian:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    cov = A @ A.T / d + 0.3 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=g, dtype=F64)
    return Gaussian(mean, cov)


def _mixture() -> GaussianMixture:
    return GaussianMixture(
        [0.3, 0.7],
        [[-1.5, 0.5], [1.0, -1.0]],
        [[[0.2, 0.05], [0.05, 0.5]], [[0.4, -0.1], [-0.1, 0.1]]],
    )


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
TARGETS = {"gaussian": _gaussian, "mixture": _mixture}


# max and mean |error| in nats/dim over the 32 points at rtol = atol = 1e-5 (dopri5), measured
LIKELIHOOD_ERR = {
    ("vp", "gaussian"): (8.45e-6, 1.55e-6),
    ("vp", "mixture"): (1.42e-5, 1.28e-6),
    ("subvp", "gaussian"): (5.37e-5, 7.18e-6),
    ("subvp", "mixture"): (1.53e-5, 1.85e-6),
    ("ve", "gaussian"): (3.66e-5, 7.61e-6),
    ("ve", "mixture"): (3.49e-5, 7.63e-6),
}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("target_name", list(TARGETS))
def test_exact_divergence_matches_analytic_density(sde_name: str, target_name: str) -> None:
    """With the exact score and the exactly diffused p_T as prior, the only error left is the
    ODE solver's: the goal is < 1e-3 nats/dim at rtol = atol = 1e-5."""
    sde, target = SDES[sde_name](), TARGETS[target_name]()
    x = target.sample(32, generator=torch.Generator().manual_seed(1), dtype=F64)
    d = target.dim
    res = log_likelihood(
        sde,
        target.score_fn(sde),
        x,
        rtol=1e-5,
        atol=1e-5,
        t_eps=T_EPS,
        prior_logp=lambda z: target.log_prob_t(z, sde.T, sde),
    )
    exact = target.log_prob_t(x, T_EPS, sde)
    err = (res.logp - exact).abs() / d
    assert res.logp.shape == (32,) and res.logp.dtype == F64
    # the goal is < 1e-3; measured (max, mean) below, bounds 3x (the old 1e-3 / 1e-4 were
    # 18-118x / 13-78x the measured errors, so a solver 10x worse passed)
    max_err, mean_err = LIKELIHOOD_ERR[sde_name, target_name]
    assert float(err.max()) < 3 * max_err, f"max error {float(err.max()):.2e} nats/dim"
    assert float(err.mean()) < 3 * mean_err, f"mean error {float(err.mean()):.2e} nats/dim"
    assert 10 < res.nfe < 400
    # p_{t_eps} is within sigma(t_eps)^2 of p_0: also close to the data density itself.
    assert float(((res.logp - target.log_prob(x)).abs() / d).mean()) < 1e-3

    # The standard prior N(0, s^2 I) changes only the prior term (same flow, same divergence).
    std = log_likelihood(sde, target.score_fn(sde), x, t_eps=T_EPS)
    torch.testing.assert_close(std.delta_logp, res.delta_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(std.z, res.z, rtol=0, atol=1e-12)
    mismatch = sde.prior_logp(res.z) - target.log_prob_t(res.z, sde.T, sde)
    torch.testing.assert_close(std.logp - res.logp, mismatch, rtol=0, atol=1e-10)


def test_nfe_counts_score_calls_and_float32_runs() -> None:
    target, sde = _gaussian(3), VPSDE()
    calls = {"n": 0}
    score = target.score_fn(sde)

    def counted(x, t):
        calls["n"] += 1
        assert t.shape == (x.shape[0],)
        return score(x, t)

    x = target.sample(16, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    res = log_likelihood(sde, counted, x)
    assert res.nfe == calls["n"] and res.logp.dtype == torch.float32
    exact = target.log_prob_t(x.double(), T_EPS, sde).float()
    prior_gap = (
        sde.prior_logp(res.z.double()) - target.log_prob_t(res.z.double(), 1.0, sde)
    ).float()
    assert float(((res.logp - prior_gap - exact).abs() / 3).max()) < 1e-3


def test_image_shaped_state_matches_flat() -> None:
    target, sde = _gaussian(4, seed=3), VPSDE()
    x = target.sample(8, generator=torch.Generator().manual_seed(4), dtype=F64)
    flat = log_likelihood(sde, target.score_fn(sde), x)

    def image_score(xi, t):
        return target.score(xi.reshape(xi.shape[0], 4), t, sde).reshape(xi.shape)

    img = log_likelihood(sde, image_score, x.reshape(8, 1, 2, 2))
    torch.testing.assert_close(img.logp, flat.logp, rtol=0, atol=1e-9)
    assert img.z.shape == (8, 1, 2, 2) and img.dim == 4


def _hutchinson_theory(target: Gaussian, sde, t_eps: float) -> tuple[float, float, float]:
    """For a Gaussian the PF Jacobian is x-independent, ``J(t) = f I + g^2/2 Sigma_t^{-1}``, so the
    Hutchinson integral is ``eps^T M eps`` with ``M = int J dt = U diag(m) U^T``,
    ``m_k = 1/2 log(v_k(T) / v_k(t_eps))``, ``v_k = alpha^2 lambda_k + sigma^2`` (because
    ``dv/dt = 2 f v + g^2``). Exact divergence integral ``tr M``; variance over the probe
    ``2 (||M||_F^2 - sum M_ii^2)`` (Rademacher) and ``2 ||M||_F^2`` (Gaussian)."""
    lam, U = torch.linalg.eigh(target.cov)

    def v(t):
        a, s = (float(c) for c in sde.marginal(t))
        return a**2 * lam + s**2

    m = 0.5 * torch.log(v(sde.T) / v(t_eps))
    M = U @ torch.diag(m) @ U.T
    fro = float((M**2).sum())
    return float(m.sum()), 2 * (fro - float((torch.diagonal(M) ** 2).sum())), 2 * fro


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_with_predicted_spread(probe: str) -> None:
    """One probe per solve, held fixed: unbiased, with exactly the variance of ``eps^T M eps``
    (redrawing the probe at every step would shrink the spread far below the theory)."""
    target, sde = _gaussian(4, seed=5), VPSDE()
    x = target.sample(1, generator=torch.Generator().manual_seed(6), dtype=F64)
    K = 400
    exact = log_likelihood(sde, target.score_fn(sde), x)
    est = log_likelihood(
        sde,
        target.score_fn(sde),
        x.repeat(K, 1),
        divergence="hutchinson",
        probe=probe,
        generator=torch.Generator().manual_seed(7),
    )
    trace, var_rad, var_gauss = _hutchinson_theory(target, sde, T_EPS)
    torch.testing.assert_close(
        exact.delta_logp, torch.tensor([trace], dtype=F64), rtol=0, atol=1e-4
    )
    mean, std = float(est.logp.mean()), float(est.logp.std())
    se = std / math.sqrt(K)
    assert abs(mean - float(exact.logp)) < 4 * se, (mean, float(exact.logp), se)
    expected_std = math.sqrt(var_rad if probe == "rademacher" else var_gauss)
    assert 0.8 * expected_std < std < 1.2 * expected_std, (std, expected_std)


def test_hutchinson_reproducible_and_multi_probe_reduces_spread() -> None:
    target, sde = _gaussian(4, seed=5), VPSDE()
    x = target.sample(1, generator=torch.Generator().manual_seed(6), dtype=F64).repeat(200, 1)
    kw = dict(divergence="hutchinson", probe="gaussian")
    a = log_likelihood(
        sde, target.score_fn(sde), x, generator=torch.Generator().manual_seed(1), **kw
    )
    b = log_likelihood(
        sde, target.score_fn(sde), x, generator=torch.Generator().manual_seed(1), **kw
    )
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=0)
    four = log_likelihood(
        sde, target.score_fn(sde), x, generator=torch.Generator().manual_seed(1), num_probes=4, **kw
    )
    ratio = float(four.logp.std() / a.logp.std())
    assert 0.35 < ratio < 0.65  # 1/sqrt(4) = 0.5


def test_fixed_step_method() -> None:
    target, sde = _gaussian(2), VPSDE()
    x = target.sample(8, generator=torch.Generator().manual_seed(3), dtype=F64)
    res = log_likelihood(
        sde,
        target.score_fn(sde),
        x,
        method="rk4",
        options={"step_size": 1.0 / 200},
        prior_logp=lambda z: target.log_prob_t(z, 1.0, sde),
    )
    assert float(((res.logp - target.log_prob_t(x, T_EPS, sde)).abs() / 2).max()) < 1e-3


def test_bad_arguments() -> None:
    target, sde = _gaussian(2), VPSDE()
    x = target.sample(4, dtype=F64)
    score = target.score_fn(sde)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(sde, score, x, divergence="trace")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(sde, score, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="method"):
        log_likelihood(sde, score, x, method="rk45")
    with pytest.raises(ValueError, match="rtol"):
        log_likelihood(sde, score, x, rtol=0.0)
    with pytest.raises(ValueError, match="t_eps"):
        log_likelihood(sde, score, x, t_eps=1.0)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(sde, score, x[0])
    with pytest.raises(ValueError, match="num_probes"):
        log_likelihood(sde, score, x, num_probes=0)


def test_bits_per_dim_offsets_and_dequantisation() -> None:
    D = 3
    logp = torch.tensor([-D * math.log(2.0) * 2.5])
    assert float(bits_per_dim(logp, D)) == pytest.approx(2.5)
    assert float(bits_per_dim(logp, D, data_range=(0.0, 1.0))) == pytest.approx(10.5)
    assert float(bits_per_dim(logp, D, data_range=(-1.0, 1.0))) == pytest.approx(9.5)
    assert dequantization_offset((-1.0, 1.0), 17) == pytest.approx(math.log2(8.5))
    with pytest.raises(ValueError):
        bits_per_dim(logp, 0)
    with pytest.raises(ValueError):
        dequantization_offset((1.0, 1.0))

    k = torch.arange(256, dtype=F64).reshape(1, 256)
    x = k / 255 * 2 - 1  # 8-bit data in [-1, 1]
    deq = uniform_dequantize(x, (-1.0, 1.0), 256, generator=torch.Generator().manual_seed(0))
    assert bool(((deq >= -1) & (deq < 1)).all())
    torch.testing.assert_close(torch.floor((deq + 1) / 2 * 256), k)


def test_probes_have_identity_second_moment() -> None:
    like = torch.zeros(20000, 3, dtype=F64)
    for probe in ("rademacher", "gaussian"):
        eps = draw_probe(like, probe, torch.Generator().manual_seed(0))
        second = eps.T @ eps / eps.shape[0]
        torch.testing.assert_close(second, torch.eye(3, dtype=F64), rtol=0, atol=0.04)
    rad = draw_probe(like, "rademacher", torch.Generator().manual_seed(0))
    assert set(rad.unique().tolist()) == {-1.0, 1.0}


def test_per_sample_error_control_is_batch_independent() -> None:
    """Every sample is held to the tolerance: the worst point of a mixture batch is as accurate
    as when solved alone (with the whole-batch RMS norm it need not be)."""
    target, sde = _mixture(), VPSDE()
    x = target.sample(256, generator=torch.Generator().manual_seed(0), dtype=F64)
    prior = lambda z: target.log_prob_t(z, sde.T, sde)  # noqa: E731
    exact = target.log_prob_t(x, T_EPS, sde)
    batch = log_likelihood(sde, target.score_fn(sde), x, prior_logp=prior)
    err = (batch.logp - exact).abs() / 2
    assert float(err.max()) < 2e-4, float(err.max())
    worst = int(err.argmax())
    alone = log_likelihood(sde, target.score_fn(sde), x[worst : worst + 1], prior_logp=prior)
    assert abs(float(alone.logp[0] - batch.logp[worst])) < 4e-4
    rms = log_likelihood(sde, target.score_fn(sde), x, prior_logp=prior, error_norm="rms")
    assert rms.nfe <= batch.nfe
    with pytest.raises(ValueError, match="error_norm"):
        log_likelihood(sde, target.score_fn(sde), x, error_norm="max")


def _load_example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_likelihood_example_quick(capsys) -> None:
    results = _load_example("likelihood_gaussian").main(["--quick"])
    out = capsys.readouterr().out
    assert "Hutchinson" in out
    for key, row in results.items():
        if key != "hutchinson":
            assert row["ode_err_max"] < 1e-3, (key, row)
    for probe, r in results["hutchinson"].items():
        assert abs(r["bias_in_se"]) < 4 and 0.75 < r["std"] / r["std_theory"] < 1.25, (probe, r)


def test_cli_likelihood_on_a_trained_checkpoint(tmp_path, capsys) -> None:
    """train a tiny digits model with the CLI, then `scoresde likelihood` on it."""
    pytest.importorskip("sklearn")
    from scoresde.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--net",
                "mlp",
                "--hidden",
                "32",
                "--depth",
                "1",
                "--steps",
                "3",
                "--batch",
                "32",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    js = tmp_path / "ll.json"
    assert (
        main(
            [
                "likelihood",
                "--ckpt",
                str(out / "checkpoint.pt"),
                "--n",
                "8",
                "--rtol",
                "1e-3",
                "--atol",
                "1e-3",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "bits/dim" in text and "17 levels" in text and "log2(17/2)" in text
    import json

    res = json.loads(js.read_text())
    assert res["n"] == 8 and res["num_bins"] == 17 and res["dim"] == 64
    assert res["bits_per_dim"] == pytest.approx(
        res["nll_nats"] / (64 * math.log(2)) + math.log2(17 / 2), rel=1e-9
    )
    assert main(["likelihood", "--ckpt", str(tmp_path / "missing.pt")]) == 2


def test_non_differentiable_score_is_rejected() -> None:
    target, sde = _gaussian(2), VPSDE()
    score = target.score_fn(sde)
    with pytest.raises(ValueError, match="differentiable"):
        log_likelihood(sde, lambda x, t: score(x, t).detach(), target.sample(2, dtype=F64))
