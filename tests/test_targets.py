"""Analytic targets: exact scores are the gradients of exact log-densities, for every SDE."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, CosineVP, Gaussian, GaussianMixture, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(), VPSDE(CosineVP())]


def gaussian_3d() -> Gaussian:
    return Gaussian([1.0, -0.5, 2.0], [[1.0, 0.4, 0.1], [0.4, 0.5, -0.2], [0.1, -0.2, 2.0]])


def mixture_2d() -> GaussianMixture:
    return GaussianMixture(
        [0.2, 0.5, 0.3],
        [[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]],
        [[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]], [[0.5, -0.2], [-0.2, 0.3]]],
    )


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("target", [gaussian_3d(), mixture_2d()], ids=repr)
def test_score_is_gradient_of_log_density(sde, target):
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(64, target.dim, generator=g, dtype=torch.float64)
    # every sample at its own time, across the whole interval
    t = torch.linspace(1e-4, sde.T, 64, dtype=torch.float64)
    x.requires_grad_(True)
    logp = target.log_prob_t(x, t, sde)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    score = target.score(x.detach(), t, sde)
    assert torch.allclose(score, grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("target", [gaussian_3d(), mixture_2d()], ids=repr)
def test_shared_time_score_is_gradient_of_log_density(sde, target):
    """The batch-at-one-time path (stacked matrices, what samplers hit) against autograd of the
    per-component log-density; float64 to round-off, float32 to its precision."""
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(257, target.dim, generator=g, dtype=torch.float64)
    for t in (1e-3, 0.3, sde.T):
        tvec = torch.full((257,), t, dtype=torch.float64)
        xg = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(target.log_prob_t(xg, tvec, sde).sum(), xg)
        scale = float(ref.abs().max())
        assert torch.allclose(target.score(x, tvec, sde), ref, rtol=1e-9, atol=1e-9 * scale)
        assert torch.allclose(target.score(x, t, sde), ref, rtol=1e-9, atol=1e-9 * scale)
        out32 = target.score(x.float(), tvec.float(), sde)
        assert out32.dtype == torch.float32
        assert torch.allclose(out32.double(), ref, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_gaussian_score_closed_form(sde):
    target = gaussian_3d()
    t = 0.3
    alpha, sigma = (float(v) for v in sde.marginal(t))
    x = torch.randn(5, 3, dtype=torch.float64)
    cov_t = alpha**2 * target.cov + sigma**2 * torch.eye(3, dtype=torch.float64)
    expected = -torch.linalg.solve(cov_t, (x - alpha * target.mean).T).T
    assert torch.allclose(target.score(x, t, sde), expected, atol=1e-12)


def test_log_prob_matches_torch_distributions():
    target = mixture_2d()
    x = torch.randn(100, 2, dtype=torch.float64)
    comps = torch.distributions.MultivariateNormal(target.means, target.covs)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(target.weights), comps
    )
    assert torch.allclose(target.log_prob(x), mix.log_prob(x), atol=1e-12)


def test_marginal_moments_match_samples():
    target, sde = mixture_2d(), VPSDE()
    g = torch.Generator().manual_seed(1)
    x0 = target.sample(200_000, generator=g, dtype=torch.float64)
    xt, _ = sde.sample_marginal(x0, 0.2, generator=g)
    mean, cov = target.marginal_moments(0.2, sde)
    assert torch.allclose(xt.mean(0), mean, atol=0.02)
    assert torch.allclose(torch.cov(xt.T), cov, atol=0.03)


def test_sample_labels_follow_weights():
    target = mixture_2d()
    _, labels = target.sample(
        100_000, generator=torch.Generator().manual_seed(2), return_labels=True
    )
    freq = torch.bincount(labels, minlength=3).double() / labels.numel()
    # binomial std <= 0.0016: 5 sigma
    assert torch.allclose(freq, target.weights, atol=0.008)


def test_score_accepts_image_shapes_and_float32():
    target = Gaussian(torch.zeros(16), torch.eye(16) * 0.5)
    x = torch.randn(4, 1, 4, 4)
    s = target.score(x, torch.full((4,), 0.5), VPSDE())
    assert s.shape == x.shape and s.dtype == torch.float32
    fn = target.score_fn(VPSDE())
    assert fn(x, torch.full((4,), 0.5)).shape == x.shape


def test_isotropic_and_diagonal_covariances():
    iso = GaussianMixture([1.0], [[0.0, 0.0]], [2.0])
    diag = GaussianMixture([1.0], [[0.0, 0.0]], [[2.0, 2.0]])
    assert torch.allclose(iso.covs, diag.covs)
    assert math.isclose(
        float(iso.log_prob(torch.zeros(1, 2, dtype=torch.float64))), -math.log(2 * math.pi * 2.0)
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, -1.0]]), "positive definite"),
        (lambda: Gaussian([0.0, 0.0], torch.eye(3)), r"cov has shape \(3, 3\); expected \(2, 2\)"),
        (lambda: Gaussian([0.0, float("nan")], torch.eye(2)), "NaN"),
        (lambda: GaussianMixture([0.5, 0.5], [[0.0, 0.0]], [1.0]), r"means has shape \(1, 2\)"),
        (lambda: GaussianMixture([-1.0, 2.0], [[0.0], [1.0]], [1.0, 1.0]), "non-negative"),
        (lambda: GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
        (lambda: gaussian_3d().score(torch.zeros(2, 2), 0.5, VPSDE()), r"expected \(B, 3\)"),
        (lambda: gaussian_3d().score(torch.zeros(2, 3), torch.ones(5) * 0.5, VPSDE()), r"\(2,\)"),
        (lambda: gaussian_3d().sample(0), "n=0"),
    ],
)
def test_bad_target_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
