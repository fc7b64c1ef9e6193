"""DSM and DDPM losses against closed forms.

For Gaussian data ``N(m, C)`` and the exact score, ``x_t = alpha x0 + sigma eps`` and
``Sigma_t = alpha^2 C + sigma^2 I``, the eps-space residual is
``sigma s + eps = alpha^2 C Sigma^-1 eps - alpha sigma Sigma^-1 (x0 - m)``, whose expected squared
norm is ``L(t) = alpha^2 tr(C Sigma_t^-1)``: the irreducible DSM loss at time ``t``.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate
from torch import nn

from scoresde import VESDE, VPSDE, Gaussian, SubVPSDE
from scoresde.losses import DDPMLoss, DSMLoss, build_loss
from scoresde.nets import ScoreModel
from solvers.parametrization import convert

C = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
TARGET = Gaussian([0.5, -1.0], C)


class OracleNet(nn.Module):
    """Exact prediction of kind ``kind`` for TARGET (time input ``t``, ``sigma_data = 1``)."""

    def __init__(self, sde, kind):
        super().__init__()
        self.sde, self.kind = sde, kind

    def forward(self, x_in, c, y=None):
        t = c.double() * self.sde.T
        alpha, sigma = self.sde.marginal(t)
        x = x_in.double() * torch.sqrt(alpha**2 + sigma**2)[:, None]
        return convert(TARGET.score(x, t, self.sde), "score", self.kind, x, alpha, sigma)


def oracle(sde, kind="eps"):
    return ScoreModel(OracleNet(sde, kind), sde, kind, time_input="t")


def irreducible(sde, t: float) -> float:
    """``L(t) = alpha^2 tr(C Sigma_t^-1)``."""
    alpha, sigma = (float(v) for v in sde.marginal(t))
    cov = alpha**2 * C + sigma**2 * torch.eye(2, dtype=torch.float64)
    return alpha**2 * float(torch.trace(C @ torch.linalg.inv(cov)))


def x0_batch(n, seed=0):
    return TARGET.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score"])
def test_dsm_at_the_exact_score_equals_the_closed_form(sde, kind):
    loss = DSMLoss(sde)
    n = 100_000
    for t in (0.05, 0.5):
        terms = loss.per_sample(
            oracle(sde, kind), x0_batch(n), generator=torch.Generator().manual_seed(1), t=t
        )
        se = float(terms.std()) / math.sqrt(n)
        assert abs(float(terms.mean()) - irreducible(sde, t)) < 4 * se


def _expected(sde, weight, t_eps=1e-5):
    """``(1 / (T - t_eps)) int w(t) L(t) dt`` by adaptive quadrature (log-spaced breakpoints)."""
    T = sde.T
    f = lambda t: weight(t) * irreducible(sde, t)  # noqa: E731
    pts = [t_eps * (T / t_eps) ** (k / 8) for k in range(9)]
    total = sum(
        integrate.quad(f, a, b, limit=200, epsabs=0, epsrel=1e-7)[0]
        for a, b in zip(pts, pts[1:], strict=False)
    )
    return total / (T - t_eps)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_likelihood_weighting_is_g2_times_the_score_error(sde):
    """At a fixed t the likelihood term is ``g^2 ||s - grad log q||^2 = (g^2 / sigma^2) L(t)``."""
    n = 100_000
    loss = DSMLoss(sde, weighting="likelihood")
    for t in (1e-3, 0.3):
        terms = loss.per_sample(
            oracle(sde), x0_batch(n), generator=torch.Generator().manual_seed(7), t=t
        )
        want = float(sde.diffusion(t)) ** 2 / float(sde.marginal(t)[1]) ** 2 * irreducible(sde, t)
        assert abs(float(terms.mean()) - want) < 4 * float(terms.std()) / math.sqrt(n)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_importance_sampling_estimates_the_likelihood_integral_with_less_variance(sde):
    """``(1 / (T - t_eps)) int g^2 / sigma^2 L(t) dt`` by quadrature against the importance-sampled
    estimator. The uniform estimator of the same integral is heavy-tailed (``g^2 / sigma^2 ~ 1/t``
    for VP near 0), which is why importance sampling exists: its spread must be far smaller."""

    def g2_over_s2(t):
        return float(sde.diffusion(t)) ** 2 / float(sde.marginal(t)[1]) ** 2

    want = _expected(sde, g2_over_s2)
    n = 200_000
    x0 = x0_batch(n)
    stds = {}
    for sampling in ("uniform", "importance"):
        loss = DSMLoss(sde, weighting="likelihood", t_sampling=sampling)
        terms = loss.per_sample(oracle(sde), x0, generator=torch.Generator().manual_seed(2))
        stds[sampling] = float(terms.std())
    assert abs(float(terms.mean()) - want) < 4 * float(terms.std()) / math.sqrt(n)
    if not isinstance(sde, VESDE):  # VE: g^2/sigma^2 is constant, importance = uniform
        assert stds["importance"] < stds["uniform"] / 5
    else:
        assert stds["importance"] == pytest.approx(stds["uniform"], rel=0.05)


def test_sigma2_weighting_integral_and_eps_is_its_per_dimension_mean():
    sde = VPSDE()
    n = 200_000
    x0 = x0_batch(n)
    sig2 = DSMLoss(sde).per_sample(oracle(sde), x0, generator=torch.Generator().manual_seed(3))
    want = _expected(sde, lambda t: 1.0)
    assert abs(float(sig2.mean()) - want) < 4 * float(sig2.std()) / math.sqrt(n)
    eps = DSMLoss(sde, weighting="eps").per_sample(
        oracle(sde), x0, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(eps, sig2 / 2, rtol=1e-12, atol=0)


def test_importance_sampled_times_are_uniform_in_log_snr():
    """``p(t) = g^2 / (sigma^2 Z)`` has CDF ``F(t) = (lambda(t_eps) - lambda(t)) / (lambda(t_eps) - lambda(T))``."""
    sde = VPSDE()
    loss = DSMLoss(sde, weighting="likelihood", t_sampling="importance")
    t, w = loss.sample_t(50_000, "cpu", torch.Generator().manual_seed(4))
    assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0
    lam_hi, lam_lo = float(sde.log_snr(1e-5)), float(sde.log_snr(1.0))
    cdf = (lam_hi - sde.log_snr(t.double())) / (lam_hi - lam_lo)
    emp = torch.arange(1, len(t) + 1, dtype=torch.float64) / len(t)
    ks = float((cdf.sort().values - emp).abs().max())
    assert ks < 1.63 / math.sqrt(len(t))  # Kolmogorov-Smirnov at the 1% level
    # weight = 1 / ((T - t_eps) p(t))
    g2 = sde.diffusion(t.double()) ** 2
    p = g2 / (sde.marginal(t.double())[1] ** 2 * 2 * (lam_hi - lam_lo))
    torch.testing.assert_close(w.double(), 1 / ((1 - 1e-5) * p), rtol=1e-4, atol=0)


def test_ddpm_loss_matches_the_discrete_closed_form():
    sde = VPSDE()
    loss = DDPMLoss(sde, num_steps=50)
    chain = sde.ddpm(50)
    # the chain's marginals are the SDE's at t_i
    alpha, sigma = sde.marginal(chain.t[1:])
    torch.testing.assert_close(loss._alpha[1:], alpha)
    torch.testing.assert_close(loss._sigma[1:], sigma)
    n = 200_000
    terms = loss.per_sample(oracle(sde), x0_batch(n), generator=torch.Generator().manual_seed(5))
    want = sum(irreducible(sde, float(t)) for t in chain.t[1:]) / 50 / 2  # mean over D = 2
    assert abs(float(terms.mean()) - want) < 4 * float(terms.std()) / math.sqrt(n)
    i7 = loss.per_sample(oracle(sde), x0_batch(n), generator=torch.Generator().manual_seed(6), i=7)
    assert abs(float(i7.mean()) - irreducible(sde, float(chain.t[7])) / 2) < 4 * float(
        i7.std()
    ) / math.sqrt(n)


def test_label_dropout_replaces_labels_by_the_null_label():
    seen = {}

    class Recorder(nn.Module):
        num_classes = 5

        def forward(self, x, c, y=None):
            seen["y"] = y
            return torch.zeros_like(x)

    sde = VPSDE()
    model = ScoreModel(Recorder(), sde)
    y = torch.randint(0, 5, (20_000,), generator=torch.Generator().manual_seed(0))
    DSMLoss(sde, label_dropout=0.2)(
        model, torch.zeros(20_000, 2), y, torch.Generator().manual_seed(1)
    )
    dropped = seen["y"] == 5
    assert abs(float(dropped.float().mean()) - 0.2) < 0.01
    assert torch.equal(seen["y"][~dropped], y[~dropped])
    DDPMLoss(sde)(model, torch.zeros(10, 2), y[:10])
    assert torch.equal(seen["y"], y[:10])


def test_losses_reject_bad_arguments():
    sde = VPSDE()
    with pytest.raises(ValueError, match="weighting='l2'"):
        DSMLoss(sde, weighting="l2")
    with pytest.raises(ValueError, match="t_sampling"):
        DSMLoss(sde, t_sampling="stratified")
    with pytest.raises(ValueError, match="t_eps"):
        DSMLoss(sde, t_eps=0.0)
    with pytest.raises(ValueError, match="sde.ddpm"):
        DDPMLoss(VESDE())
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss({"name": "sliced"}, sde)
    with pytest.raises(ValueError, match="x0 has shape"):
        DSMLoss(sde)(oracle(sde), torch.zeros(4))
    assert isinstance(build_loss({"name": "ddpm", "num_steps": 10}, sde), DDPMLoss)
    assert (
        build_loss(DSMLoss(sde, weighting="likelihood").to_config(), sde).weighting == "likelihood"
    )
