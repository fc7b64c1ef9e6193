"""The discrete DDPM variational bound, against closed forms for a Gaussian target."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, Gaussian, GaussianMixture
from scoresde.bound import (
    discretized_gaussian_log_likelihood,
    gaussian_expected_bound,
    gaussian_kl,
    variational_bound,
)

F64 = torch.float64
TARGET = Gaussian(
    torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
)


def _analytic_terms(target: Gaussian, sde, N: int, variance: str):
    """Expected L_0, L_{i-1} (i = 2..N) and L_N over x_0 ~ N(m, C) with the exact score, written
    out here independently of :func:`gaussian_expected_bound`.

    With the exact score the model's mean error is ``c_0 (x0 - E[x0 | x_i])``, so
    ``E |mu_q - mu_p|^2 = c_0^2 tr S_i`` with ``S_i = Cov[x0 | x_i] = C - abar C Sigma_i^{-1} C``,
    ``Sigma_i = abar C + (1 - abar) I``.
    """
    chain = sde.ddpm(N)
    C, m, D = target.cov, target.mean, target.dim
    eye = torch.eye(D, dtype=F64)

    def tr_S(i):
        ab = chain.alpha_bars[i]
        return float(torch.trace(C - ab * C @ torch.linalg.solve(ab * C + (1 - ab) * eye, C)))

    terms = []
    for i in range(2, N + 1):
        ab, abp, b = chain.alpha_bars[i], chain.alpha_bars[i - 1], chain.betas[i]
        vq = float(b * (1 - abp) / (1 - ab))
        c0 = float(abp.sqrt() * b / (1 - ab))
        vp = vq if variance == "posterior" else float(b)
        terms.append(0.5 * (D * (vq / vp - 1 - math.log(vq / vp)) + c0**2 * tr_S(i) / vp))
    b1 = float(chain.betas[1])
    L0 = -0.5 * (tr_S(1) / b1 + D * math.log(2 * math.pi * b1))
    aN = float(chain.alpha_bars[N])
    LT = 0.5 * (D * ((1 - aN) - 1 - math.log(1 - aN)) + aN * float(torch.trace(C) + m @ m))
    return L0, terms, LT


def _entropy(target: Gaussian) -> float:
    """``E[log p(x)] = -1/2 (D log(2 pi e) + log det C)``."""
    return -0.5 * (target.dim * math.log(2 * math.pi * math.e) + float(torch.logdet(target.cov)))


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_closed_form_oracle(variance: str) -> None:
    sde = VPSDE()
    for N in (1, 7, 50):
        L0, terms, LT = _analytic_terms(TARGET, sde, N, variance)
        ref = gaussian_expected_bound(TARGET.mean, TARGET.cov, sde, N, variance)
        assert ref.reconstruction == pytest.approx(L0, rel=1e-12)
        assert ref.terms == pytest.approx(terms, rel=1e-12)
        assert ref.prior == pytest.approx(LT, rel=1e-12)
        assert ref.entropy == pytest.approx(_entropy(TARGET), rel=1e-12)
        assert ref.gap == pytest.approx(ref.entropy - ref.elbo)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_each_term_matches_its_closed_form(variance: str) -> None:
    sde, N, B = VPSDE(), 20, 20000
    x = TARGET.sample(B, generator=torch.Generator().manual_seed(1), dtype=F64)
    bound = variational_bound(
        sde,
        TARGET.score_fn(sde),
        x,
        num_steps=N,
        variance=variance,
        generator=torch.Generator().manual_seed(2),
    )
    L0, terms, LT = _analytic_terms(TARGET, sde, N, variance)
    assert bound.terms.shape == (B, N - 1) and bound.nfe == N
    mc, se = bound.terms.mean(0), bound.terms.std(0) / math.sqrt(B)
    z = ((mc - torch.tensor(terms, dtype=F64)) / se).abs()
    assert float(z.max()) < 5.0, z
    rec_se = float(bound.reconstruction.std()) / math.sqrt(B)
    assert abs(float(bound.reconstruction.mean()) - L0) < 5 * rec_se
    # L_N is exact per sample; its data average is the closed form up to the spread of |x0|^2
    assert abs(float(bound.prior.mean()) - LT) < 1e-3 * max(LT, 1e-6) + 5 * float(
        bound.prior.std()
    ) / math.sqrt(B)
    torch.testing.assert_close(bound.elbo, bound.reconstruction - bound.diffusion - bound.prior)


def _gap(N: int, B: int, seed: int, target=TARGET) -> tuple[float, float]:
    sde = VPSDE()
    x = target.sample(B, generator=torch.Generator().manual_seed(seed), dtype=F64)
    bound = variational_bound(
        sde, target.score_fn(sde), x, num_steps=N, generator=torch.Generator().manual_seed(seed + 1)
    )
    gap = target.log_prob(x) - bound.elbo
    return float(gap.mean()), float(gap.std()) / math.sqrt(B)


def test_bound_is_below_the_exact_log_likelihood_and_matches_the_expected_gap() -> None:
    """E[ELBO] <= E[log p_model] <= E[log p_data]; with the exact score the Monte-Carlo gap also
    matches the closed-form one."""
    sde = VPSDE()
    for N, B in ((10, 40000), (30, 40000)):
        gap, se = _gap(N, B, seed=3)
        L0, terms, LT = _analytic_terms(TARGET, sde, N, "beta")
        expected = _entropy(TARGET) - (L0 - sum(terms) - LT)
        assert expected > 0
        assert gap > 3 * se, (N, gap, se)
        assert abs(gap - expected) < 4 * se, (N, gap, expected, se)


def test_bound_approaches_the_likelihood_as_n_grows() -> None:
    """The gap falls like 1/N (closed form: 0.082, 0.0092, 0.00093 nats at N = 10, 100, 1000)."""
    g10, se10 = _gap(10, 20000, seed=5)
    g100, se100 = _gap(100, 20000, seed=7)
    assert g100 < g10 - 4 * math.hypot(se10, se100), (g10, g100)
    assert abs(g100) < 4 * se100 + 0.01
    sde = VPSDE()
    closed = []
    for N in (10, 100, 1000):
        L0, terms, LT = _analytic_terms(TARGET, sde, N, "beta")
        closed.append(_entropy(TARGET) - (L0 - sum(terms) - LT))
    assert closed[0] > closed[1] > closed[2] > 0
    assert 5 < closed[0] / closed[1] < 20 and 5 < closed[1] / closed[2] < 20


@pytest.mark.slow
def test_bound_gap_at_1000_steps() -> None:
    gap, se = _gap(1000, 20000, seed=9)
    assert abs(gap) < 4 * se + 0.002, (gap, se)


def test_mixture_bound_below_likelihood() -> None:
    mix = GaussianMixture([0.3, 0.7], [[-1.5, 0.5], [1.0, -1.0]], [[0.2, 0.5], [0.4, 0.1]])
    gap, se = _gap(10, 20000, seed=11, target=mix)
    assert gap > 3 * se


def test_num_terms_estimate_is_unbiased() -> None:
    sde, N = VPSDE(), 50
    x = TARGET.sample(4000, generator=torch.Generator().manual_seed(1), dtype=F64)
    full = variational_bound(
        sde, TARGET.score_fn(sde), x, num_steps=N, generator=torch.Generator().manual_seed(2)
    )
    estimates = [
        float(
            variational_bound(
                sde,
                TARGET.score_fn(sde),
                x,
                num_steps=N,
                num_terms=5,
                generator=torch.Generator().manual_seed(100 + r),
            ).diffusion.mean()
        )
        for r in range(40)
    ]
    est = torch.tensor(estimates, dtype=F64)
    se = float(est.std()) / math.sqrt(len(estimates))
    assert abs(float(est.mean()) - float(full.diffusion.mean())) < 4 * se + 0.01


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    vq, vp = (
        torch.rand(5, generator=g, dtype=F64) + 0.1,
        torch.rand(5, generator=g, dtype=F64) + 0.1,
    )
    ours = gaussian_kl(mq, vq, mp, vp)
    Nd = torch.distributions.Normal
    ref = torch.distributions.kl_divergence(
        Nd(mq, vq.sqrt()[:, None].expand(5, 3)), Nd(mp, vp.sqrt()[:, None].expand(5, 3))
    ).sum(1)
    torch.testing.assert_close(ours, ref)


def test_discretized_decoder() -> None:
    # probabilities of all bins sum to one
    levels = 256
    grid = torch.linspace(-1, 1, levels, dtype=F64)[:, None]
    mean = torch.full_like(grid, 0.3)
    logp = discretized_gaussian_log_likelihood(grid, mean, 0.04, (-1.0, 1.0), levels)
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-10)
    # fine bins: log P(bin) ~ log density + log(bin width)
    x = torch.tensor([[0.1, -0.2]], dtype=F64)
    x = torch.round((x + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    m = torch.tensor([[0.0, 0.0]], dtype=F64)
    v = 0.25
    width = 2 / (levels - 1)
    dens = -0.5 * ((x - m) ** 2 / v + math.log(2 * math.pi * v)).sum()
    approx = float(dens) + 2 * math.log(width)
    assert float(
        discretized_gaussian_log_likelihood(x, m, v, (-1.0, 1.0), levels)
    ) == pytest.approx(approx, abs=1e-4)
    # the bound with the discretised decoder on 8-bit data is a bound on a probability: ELBO <= 0
    sde = VPSDE()
    data = TARGET.sample(256, generator=torch.Generator().manual_seed(0), dtype=F64).clamp(-1, 1)
    data = torch.round((data + 1) / 2 * 255) / 255 * 2 - 1
    b = variational_bound(sde, TARGET.score_fn(sde), data, num_steps=20, decoder="discretized")
    assert bool((b.reconstruction <= 0).all())
    bpd = b.bits_per_dim(data_range=(-1.0, 1.0))
    torch.testing.assert_close(bpd, -b.elbo / (2 * math.log(2)))  # no dequantisation offset


def test_bits_per_dim_and_bad_arguments() -> None:
    sde = VPSDE()
    x = TARGET.sample(8, dtype=F64)
    b = variational_bound(sde, TARGET.score_fn(sde), x, num_steps=5)
    torch.testing.assert_close(b.bits_per_dim(), -b.elbo / (2 * math.log(2)))
    torch.testing.assert_close(b.bits_per_dim((0.0, 1.0)), -b.elbo / (2 * math.log(2)) + 8)
    with pytest.raises(ValueError, match="DDPM"):
        variational_bound(VESDE(), TARGET.score_fn(VESDE()), x)
    with pytest.raises(ValueError, match="decoder"):
        variational_bound(sde, TARGET.score_fn(sde), x, decoder="bernoulli")
    with pytest.raises(ValueError, match="variance"):
        variational_bound(sde, TARGET.score_fn(sde), x, variance="learned")
    with pytest.raises(ValueError, match="num_steps"):
        variational_bound(sde, TARGET.score_fn(sde), x, num_steps=0)
    with pytest.raises(ValueError, match="num_terms"):
        variational_bound(sde, TARGET.score_fn(sde), x, num_terms=0)


def test_bound_example_quick(capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "variational_bound.py"
    spec = importlib.util.spec_from_file_location("variational_bound", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick"])
    assert "closed" in capsys.readouterr().out
    for key, row in results.items():
        if key != "ode":
            assert abs(row["gap"] - row["gap_closed"]) < 4 * row["gap_se"] + 1e-3, (key, row)
    assert results["beta/100"]["gap_closed"] < results["beta/10"]["gap_closed"]
    assert abs(results["ode"]["gap"]) < 1e-3
