"""SDE objects: torchsde/torchdiffeq integration against closed-form moments, the discrete DDPM
view against Bayes' rule, conversions, priors, bad input and the package layout."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torchdiffeq
import torchsde
from hypothesis import given
from hypothesis import strategies as st

import solvers
from scoresde import (
    VESDE,
    VPSDE,
    CosineVP,
    Gaussian,
    GaussianMixture,
    SubVPSDE,
    sde_from_config,
)

ROOT = Path(__file__).resolve().parents[1]
SDES = [VPSDE(), SubVPSDE(), VESDE(), VPSDE(CosineVP())]


def gaussian_2d() -> Gaussian:
    return Gaussian([1.0, -1.0], [[0.6, 0.25], [0.25, 0.4]])


def mixture_2d() -> GaussianMixture:
    return GaussianMixture(
        [0.3, 0.7],
        [[-1.5, 0.0], [1.5, 0.5]],
        [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]]],
    )


def moment_errors(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float((x.mean(0) - mean).abs().max()), float((torch.cov(x.T) - cov).abs().max())


# -- coefficients ----------------------------------------------------------------------------


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_marginal_variance_solves_moment_ode(sde):
    """d sigma^2/dt = 2 f sigma^2 + g^2 and d log alpha/dt = f: the kernel matches the SDE."""
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64) * sde.T
    h = 1e-6
    a_p, s_p = sde.marginal(t + h)
    a_m, s_m = sde.marginal(t - h)
    dvar = (s_p**2 - s_m**2) / (2 * h)
    dlog_alpha = (torch.log(a_p) - torch.log(a_m)) / (2 * h)
    _, s = sde.marginal(t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    assert torch.allclose(dlog_alpha, f, rtol=1e-6, atol=1e-8)
    assert torch.allclose(dvar, 2 * f * s**2 + g**2, rtol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=repr)
@given(u=st.floats(1e-4, 1.0))
def test_sde_log_snr_round_trip(sde, u):
    t = torch.tensor(u * sde.T, dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    assert torch.allclose(sde.log_snr(t), torch.log(alpha / sigma), rtol=1e-9, atol=1e-9)
    assert abs(float(sde.t_from_log_snr(sde.log_snr(t)) - t)) < 1e-8


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_transition_composes(sde):
    """x_t | x_0 through x_s: alpha_t = alpha_{t|s} alpha_s, sigma_t^2 = alpha_{t|s}^2 sigma_s^2 + sigma_{t|s}^2."""
    s, t = 0.2 * sde.T, 0.7 * sde.T
    a_ts, sig_ts = sde.transition(s, t)
    a_s, sig_s = sde.marginal(s)
    a_t, sig_t = sde.marginal(t)
    assert torch.allclose(a_ts * a_s, a_t, rtol=1e-12)
    assert torch.allclose(a_ts**2 * sig_s**2 + sig_ts**2, sig_t**2, rtol=1e-10)


# -- torchsde / torchdiffeq ------------------------------------------------------------------


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=repr)
def test_forward_simulation_matches_closed_form(sde):
    """torchsde.sdeint on the forward SDE reproduces N(alpha m, alpha^2 C + sigma^2 I)."""
    target = gaussian_2d()
    g = torch.Generator().manual_seed(0)
    n = 20_000
    x0 = target.sample(n, generator=g, dtype=torch.float64)
    # start from the t = 0 marginal (for VE: the data convolved with N(0, sigma_min^2))
    x0, _ = sde.sample_marginal(x0, 0.0, generator=g)
    ts = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64) * sde.T
    bm = torchsde.BrownianInterval(
        t0=ts[0], t1=ts[-1], size=x0.shape, dtype=torch.float64, entropy=1234
    )
    xs = torchsde.sdeint(sde, x0, ts, method="euler", dt=2e-3, bm=bm)
    for k in (1, 2):
        mean, cov = target.marginal_moments(float(ts[k]), sde)
        scale = float(cov.diagonal().max())
        dm, dc = moment_errors(xs[k], mean, cov)
        # Monte-Carlo std of the mean is sqrt(scale/n) and of a covariance entry ~ scale sqrt(2/n);
        # Euler's left-point rule adds a bias of about 1% of the variance increment for VE.
        assert dm < 5 * math.sqrt(scale / n), (k, dm)
        assert dc < 5 * scale * math.sqrt(2 / n) + 0.01 * scale, (k, dc)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=repr)
@pytest.mark.parametrize("target", [gaussian_2d(), mixture_2d()], ids=["gaussian", "mixture"])
def test_reverse_sde_with_torchsde_recovers_target(sde, target):
    g = torch.Generator().manual_seed(1)
    n, eps = 10_000, sde.default_t_end
    x_T = sde.prior_sample((n, 2), generator=g, dtype=torch.float64)
    ts = torch.tensor([0.0, sde.T - eps], dtype=torch.float64)
    bm = torchsde.BrownianInterval(
        t0=ts[0], t1=ts[-1], size=x_T.shape, dtype=torch.float64, entropy=7
    )
    reverse = sde.reverse(target.score_fn(sde))
    x = torchsde.sdeint(reverse, x_T, ts, method="euler", dt=2e-3, bm=bm)[-1]
    mean, cov = target.marginal_moments(eps, sde)
    dm, dc = moment_errors(x, mean, cov)
    # MC std ~ 0.01 (mean) / 0.015 (cov) at n = 10k; Euler-Maruyama with 500 steps adds < 0.01
    assert dm < 0.05 and dc < 0.06, (dm, dc)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=repr)
@pytest.mark.parametrize("target", [gaussian_2d(), mixture_2d()], ids=["gaussian", "mixture"])
def test_probability_flow_with_torchdiffeq_recovers_target(sde, target):
    g = torch.Generator().manual_seed(2)
    n, eps = 20_000, sde.default_t_end
    x_T = sde.prior_sample((n, 2), generator=g, dtype=torch.float64)
    pf = sde.probability_flow(target.score_fn(sde))
    t = torch.tensor([sde.T, eps], dtype=torch.float64)
    x = torchdiffeq.odeint(pf, x_T, t, rtol=1e-6, atol=1e-6)[-1]
    mean, cov = target.marginal_moments(eps, sde)
    dm, dc = moment_errors(x, mean, cov)
    assert dm < 0.03 and dc < 0.05, (dm, dc)
    assert pf.nfe > 0


def test_probability_flow_is_exact_transport_for_a_gaussian():
    """Deterministic check: the PF-ODE maps prior quantiles to target quantiles (1-D Gaussian).

    For N(m, c) under VP the flow is x_t = alpha m + sqrt(alpha^2 c + sigma^2) z along each
    characteristic z, so x_T = sqrt(...) z maps exactly to x_eps.
    """
    sde = VPSDE()
    target = Gaussian([0.7], [[0.3]])
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    eps = 1e-3

    def on_flow(t):
        a, s = (float(v) for v in sde.marginal(t))
        return a * 0.7 + math.sqrt(a * a * 0.3 + s * s) * z

    pf = sde.probability_flow(target.score_fn(sde))
    x = torchdiffeq.odeint(
        pf, on_flow(1.0), torch.tensor([1.0, eps], dtype=torch.float64), rtol=1e-10, atol=1e-10
    )[-1]
    assert torch.allclose(x, on_flow(eps), atol=1e-7)


def test_reverse_and_flow_accept_image_states():
    sde = VPSDE()
    target = Gaussian(torch.zeros(16), 0.5 * torch.eye(16))
    score = target.score_fn(sde)
    x_T = sde.prior_sample((8, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    ts = torch.tensor([0.0, 1.0 - 1e-3])
    rev = sde.reverse(score, event_shape=(1, 4, 4))
    bm = torchsde.BrownianInterval(t0=ts[0], t1=ts[-1], size=(8, 16), entropy=3)
    out = torchsde.sdeint(rev, x_T.flatten(1), ts, method="euler", dt=0.01, bm=bm)[-1].reshape(
        x_T.shape
    )
    assert out.shape == x_T.shape and bool(torch.isfinite(out).all())
    pf = sde.probability_flow(score)
    out = torchdiffeq.odeint(pf, x_T, torch.tensor([1.0, 1e-3]), rtol=1e-4, atol=1e-4)[-1]
    assert out.shape == x_T.shape and bool(torch.isfinite(out).all())


# -- priors, marginals -----------------------------------------------------------------------


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_prior_logp_sums_over_non_batch_dims(sde):
    x = sde.prior_sample(
        (3, 2, 4, 4), generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    std = sde.prior_std
    expected = torch.distributions.Normal(0.0, std).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(x), expected, atol=1e-10)
    assert sde.prior_logp(x).shape == (3,)


def test_prior_matches_marginal_at_T():
    for sde in [VPSDE(), SubVPSDE(), VESDE()]:
        alpha, sigma = sde.marginal(sde.T)
        assert float(alpha) < 0.01 or float(alpha) == 1.0
        assert math.isclose(float(sigma), sde.prior_std, rel_tol=1e-3)


def test_sample_marginal_is_reproducible_and_per_sample():
    sde = VPSDE()
    x0 = torch.ones(5, 3)
    t = torch.linspace(0.1, 0.9, 5)
    a = sde.sample_marginal(x0, t, generator=torch.Generator().manual_seed(5))
    b = sde.sample_marginal(x0, t, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    alpha, sigma = sde.marginal(t)
    assert torch.allclose(a[0], alpha[:, None] * x0 + sigma[:, None] * a[1])


# -- discrete DDPM view ----------------------------------------------------------------------


def test_ddpm_alpha_bars_match_continuous_marginal():
    sde = VPSDE()
    ddpm = sde.ddpm(1000)
    alpha, _ = sde.marginal(ddpm.t)
    assert torch.allclose(ddpm.alpha_bars, alpha.double() ** 2, rtol=1e-12)
    assert torch.allclose(torch.cumprod(ddpm.alphas[1:], 0), ddpm.alpha_bars[1:], rtol=1e-9)
    # close to the reference code's linspace(beta_min/N, beta_max/N) to first order
    ref = torch.linspace(0.1 / 1000, 20 / 1000, 1000, dtype=torch.float64)
    assert torch.allclose(ddpm.betas[1:], ref, rtol=0.02, atol=1e-5)


def _numerical_posterior(prior_mean, prior_var, a, noise_var, x_t):
    """Bayes' rule on a grid: p(x_s | x_t, x_0) ∝ N(x_s; prior) N(x_t; a x_s, noise_var)."""
    sd, lik_sd = math.sqrt(prior_var), math.sqrt(noise_var) / a
    lo = min(prior_mean - 12 * sd, x_t / a - 12 * lik_sd)
    hi = max(prior_mean + 12 * sd, x_t / a + 12 * lik_sd)
    grid = torch.linspace(lo, hi, 400_001, dtype=torch.float64)
    logw = -0.5 * (grid - prior_mean) ** 2 / prior_var - 0.5 * (x_t - a * grid) ** 2 / noise_var
    w = torch.softmax(logw, 0)
    mean = float((w * grid).sum())
    return mean, float((w * (grid - mean) ** 2).sum())


@pytest.mark.parametrize("i", [1, 2, 10, 500, 1000])
def test_ddpm_posterior_matches_numerical_bayes(i):
    sde = VPSDE()
    ddpm = sde.ddpm(1000)
    x0, x_t = 0.8, -0.3
    prior_mean = math.sqrt(ddpm.alpha_bars[i - 1]) * x0
    prior_var = float(1 - ddpm.alpha_bars[i - 1])
    if prior_var == 0.0:  # i = 1: x_0 is known exactly
        prior_var = 1e-30
    mean, var = ddpm.posterior(
        torch.tensor([[x_t]], dtype=torch.float64), torch.tensor([[x0]], dtype=torch.float64), i
    )
    if i == 1:
        assert math.isclose(float(mean), x0, rel_tol=1e-9) and float(var) < 1e-12
        return
    num_mean, num_var = _numerical_posterior(
        prior_mean, prior_var, math.sqrt(ddpm.alphas[i]), float(ddpm.betas[i]), x_t
    )
    assert math.isclose(float(mean), num_mean, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(float(var), num_var, rel_tol=1e-5)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=repr)
def test_generic_posterior_matches_numerical_bayes(sde):
    s, t = 0.3 * sde.T, 0.35 * sde.T
    x0, x_t = 0.8, -0.3
    c_t, c_0, var = sde.posterior(s, t)
    a_s, sig_s = (float(v) for v in sde.marginal(s))
    a_ts, sig_ts = (float(v) for v in sde.transition(s, t))
    num_mean, num_var = _numerical_posterior(a_s * x0, sig_s**2, a_ts, sig_ts**2, x_t)
    assert math.isclose(float(c_t) * x_t + float(c_0) * x0, num_mean, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(float(var), num_var, rel_tol=1e-5)


def test_ddpm_posterior_agrees_with_generic_posterior():
    sde = VPSDE()
    ddpm = sde.ddpm(100)
    i = torch.tensor([3, 50, 100])
    x_t, x0 = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    mean, var = ddpm.posterior(x_t, x0, i)
    c_t, c_0, var2 = sde.posterior(ddpm.t[i - 1], ddpm.t[i])
    assert torch.allclose(mean, c_t[:, None] * x_t + c_0[:, None] * x0, atol=1e-10)
    assert torch.allclose(var, var2, rtol=1e-9)


# -- conversions -----------------------------------------------------------------------------


@given(
    alpha=st.floats(0.01, 1.0),
    sigma=st.floats(0.01, 50.0),
    source=st.sampled_from(solvers.PREDICTIONS),
    target=st.sampled_from(solvers.PREDICTIONS),
)
def test_conversions_round_trip(alpha, sigma, source, target):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    pred = torch.randn(4, 3, generator=g, dtype=torch.float64)
    a = torch.full((4,), alpha, dtype=torch.float64)
    s = torch.full((4,), sigma, dtype=torch.float64)
    there = solvers.convert(pred, source, target, x, a, s)
    back = solvers.convert(there, target, source, x, a, s)
    assert torch.allclose(back, pred, rtol=1e-9, atol=1e-9)


def test_conversions_agree_with_the_exact_gaussian_denoiser():
    """x0 from the exact score (Tweedie) equals E[x0 | x_t] of a Gaussian in closed form."""
    sde, target = VPSDE(), gaussian_2d()
    t = 0.4
    a, s = (float(v) for v in sde.marginal(t))
    x = torch.randn(6, 2, dtype=torch.float64)
    score = target.score(x, t, sde)
    x0 = solvers.convert(score, "score", "x0", x, a, s)
    C, m = target.cov, target.mean
    gain = a * C @ torch.linalg.inv(a * a * C + s * s * torch.eye(2, dtype=torch.float64))
    expected = m + (x - a * m) @ gain.T
    assert torch.allclose(x0, expected, atol=1e-10)
    eps = solvers.convert(score, "score", "eps", x, a, s)
    v = solvers.convert(score, "score", "v", x, a, s)
    assert torch.allclose(v, a * eps - s * x0, atol=1e-10)


def test_unknown_prediction_kind():
    with pytest.raises(ValueError, match="expected one of eps, x0, score, v"):
        solvers.convert(torch.zeros(1, 1), "noise", "x0", torch.zeros(1, 1), 1.0, 1.0)


# -- bad input, config, layout ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VPSDE().marginal(1.2), r"t=1.2 is outside the time interval \[0, T=1.0\]"),
        (lambda: VESDE().marginal(torch.tensor([0.5, -1e-3])), "t=-0.001"),
        (lambda: VPSDE().sample_marginal(torch.zeros(4, 2), torch.ones(3) * 0.5), r"shape \(3,\)"),
        (lambda: VPSDE().prior_sample((0, 2)), "shape"),
        (lambda: VPSDE(VESDE().schedule), "variance-preserving"),
        (lambda: VESDE(VPSDE().schedule), "variance-exploding"),
        (lambda: VPSDE().ddpm(0), "num_steps=0"),
        (lambda: VPSDE().ddpm(10).posterior(torch.zeros(1, 1), torch.zeros(1, 1), 11), "i=11"),
        (lambda: sde_from_config({"name": "Nope"}), "available: VPSDE"),
    ],
)
def test_bad_input_raises_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_config_round_trip(sde):
    rebuilt = sde_from_config(sde.to_config())
    assert type(rebuilt) is type(sde) and rebuilt.schedule == sde.schedule


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_dependencies_are_one_way():
    assert not _imports("schedules") & {"solvers", "scoresde"}
    assert "scoresde" not in _imports("solvers")


def test_solvers_never_switch_on_sde_type():
    for path in (ROOT / "solvers").rglob("*.py"):
        text = path.read_text()
        for name in ("VPSDE", "SubVPSDE", "VESDE", "LinearVP", "VEGeometric"):
            assert name not in text, f"{path.name} refers to {name}: put behaviour on the process"
