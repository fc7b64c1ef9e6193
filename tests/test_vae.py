"""The VAE (exact ELBO checks on a linear-Gaussian model) and latent diffusion."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scoresde import VPSDE, Gaussian
from scoresde.latent import LatentDiffusion, encode_dataset, latent_standardisation
from scoresde.vae import GaussianVAE, diagonal_gaussian_log_prob, fit_vae, kl_standard_normal

F64 = torch.float64


def _linear_vae(D: int = 4, k: int = 2, s2: float = 0.1, exact: bool = True, seed: int = 0):
    """Probabilistic PCA as a VAE: p(z) = N(0, I), p(x | z) = N(W z + b, s2 I) with orthogonal
    columns of W, so the true posterior N(S W^T (x - b) / s2, S), S = (I + W^T W / s2)^{-1}, is
    diagonal and a linear encoder represents it exactly. Returns the VAE and the marginal
    p(x) = N(b, W W^T + s2 I)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    W = Q[:, :k] * torch.linspace(2.0, 0.7, k, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    post_var = 1 / (1 + (W**2).sum(0) / s2)
    M = post_var[:, None] * W.T / s2
    enc, dec = nn.Linear(D, 2 * k).double(), nn.Linear(k, D).double()
    with torch.no_grad():
        enc.weight.zero_()
        enc.weight[:k] = M if exact else 0.8 * M
        enc.bias[:k] = -M @ b
        enc.bias[k:] = torch.log(post_var) + (0.0 if exact else 0.5)
        dec.weight.copy_(W)
        dec.bias.copy_(b)
    vae = GaussianVAE((D,), k, encoder=enc, decoder=dec, learn_decoder_var=False).double()
    vae.decoder_log_var.fill_(math.log(s2))
    marginal = Gaussian(b, W @ W.T + s2 * torch.eye(D, dtype=F64))
    return vae, marginal, (W, b, s2)


def test_kl_and_log_prob_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    Nd = torch.distributions.Normal
    ref = torch.distributions.kl_divergence(Nd(mu, (0.5 * lv).exp()), Nd(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl_standard_normal(mu, lv), ref)
    x = torch.randn(5, 3, generator=g, dtype=F64)
    torch.testing.assert_close(
        diagonal_gaussian_log_prob(x, mu, lv), Nd(mu, (0.5 * lv).exp()).log_prob(x).sum(1)
    )
    assert float(kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max()) == 0.0


def test_exact_posterior_makes_every_elbo_draw_equal_log_px() -> None:
    """log p(x|z) + log p(z) - log q(z|x) = log p(x) for every z when q is the true posterior."""
    vae, marginal, _ = _linear_vae()
    x = 2 * torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    for seed in range(3):
        e = vae.elbo(x, torch.Generator().manual_seed(seed), analytic_kl=False)
        torch.testing.assert_close(e.elbo, marginal.log_prob(x), rtol=0, atol=1e-10)
    # with the analytic KL: equal in expectation
    e = vae.elbo(x, torch.Generator().manual_seed(9), num_samples=4000)
    torch.testing.assert_close(e.elbo, marginal.log_prob(x), rtol=0, atol=0.05)


def test_elbo_gap_is_the_kl_to_the_true_posterior() -> None:
    """log p(x) - ELBO(x) = KL(q(z|x) || p(z|x)), both Gaussian: a closed-form check."""
    vae, marginal, (W, b, s2) = _linear_vae(exact=False)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    reps = 20000
    with torch.no_grad():  # one draw per row: per-draw values give the Monte-Carlo error
        draws = vae.elbo(x.repeat_interleave(reps, 0), torch.Generator().manual_seed(3)).elbo
    draws = draws.reshape(4, reps)
    elbo, se = draws.mean(1), draws.std(1) / math.sqrt(reps)
    post_var = 1 / (1 + (W**2).sum(0) / s2)
    post_mean = (x - b) @ W / s2 * post_var
    with torch.no_grad():
        mu, lv = vae.encode(x)
    Nd = torch.distributions.Normal
    kl = torch.distributions.kl_divergence(
        Nd(mu, (0.5 * lv).exp()), Nd(post_mean, post_var.sqrt())
    ).sum(1)
    assert bool((kl > 0.1).all())
    gap = marginal.log_prob(x) - elbo
    assert bool(((gap - kl).abs() < 4 * se).all()), (gap, kl, se)


def test_reparameterisation_is_differentiable_and_seeded() -> None:
    mu = torch.zeros(3, 2, requires_grad=True)
    lv = torch.zeros(3, 2, requires_grad=True)
    z = GaussianVAE.reparameterize(mu, lv, torch.Generator().manual_seed(0))
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(3, 2))
    eps = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lv.grad, 0.5 * eps)
    torch.testing.assert_close(z.detach(), eps)


def test_fit_vae_reaches_the_true_likelihood_of_ppca_data() -> None:
    """Trained on data from a probabilistic-PCA model, a linear VAE's ELBO approaches the true
    log-likelihood (the model class contains the truth with an exact posterior)."""
    torch.manual_seed(0)
    _, marginal, _ = _linear_vae(seed=3)
    data = marginal.sample(4000, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    vae = GaussianVAE((4,), 2, encoder=nn.Linear(4, 4), decoder=nn.Linear(2, 4))
    losses = fit_vae(
        vae, data, steps=1500, batch_size=256, lr=1e-2, generator=torch.Generator().manual_seed(5)
    )
    assert losses[-1] < losses[0]
    with torch.no_grad():
        elbo = vae.elbo(data, torch.Generator().manual_seed(6), num_samples=8).elbo.mean()
    true = marginal.log_prob(data.double()).mean()
    assert float(elbo) <= float(true) + 0.02
    assert float(true - elbo) < 0.1, (float(elbo), float(true))


def test_shapes_sampling_and_bad_input() -> None:
    vae = GaussianVAE((1, 4, 4), 3, hidden=(16,))
    x = torch.randn(5, 1, 4, 4)
    mu, lv = vae.encode(x)
    assert mu.shape == (5, 3) and lv.shape == (5, 3)
    assert vae.decode(mu).shape == (5, 1, 4, 4)
    assert vae.sample(7, generator=torch.Generator().manual_seed(0)).shape == (7, 1, 4, 4)
    assert vae.loss(x).dim() == 0
    with pytest.raises(ValueError, match="x has shape"):
        vae.encode(torch.randn(5, 15))
    with pytest.raises(ValueError, match="latent_dim"):
        GaussianVAE((4,), 0)
    with pytest.raises(ValueError, match="z has shape"):
        vae.decode(torch.randn(2, 4))
    with pytest.raises(ValueError, match="steps"):
        fit_vae(vae, x, steps=0)


def test_latent_diffusion_bound_with_an_exact_prior() -> None:
    """PPCA data, exact posterior, and the exact score of the standardised aggregate posterior
    (which is N(0, I) in z): the LSGM bound, with log p_psi by the ODE, equals log p(x)."""
    vae, marginal, _ = _linear_vae()
    sde = VPSDE()
    shift = torch.tensor([0.3, -0.2], dtype=F64)
    scale = torch.tensor([1.5, 0.8], dtype=F64)
    u_dist = Gaussian(-shift / scale, torch.diag(1 / scale**2))  # law of u = (z - shift)/scale
    ld = LatentDiffusion(vae, sde, u_dist.score_fn(sde), shift, scale)
    x = marginal.sample(5, generator=torch.Generator().manual_seed(7), dtype=F64)
    prior = lambda z: u_dist.log_prob_t(z, sde.T, sde)  # noqa: E731  (isolates the ODE error)
    e = ld.elbo(x, torch.Generator().manual_seed(8), prior_logp=prior)
    torch.testing.assert_close(e.elbo, marginal.log_prob(x), rtol=0, atol=1e-3)
    z = torch.randn(4, 2, dtype=F64)
    torch.testing.assert_close(
        ld.latent_log_prob(z, prior_logp=prior),
        Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)).log_prob(z),
        rtol=0,
        atol=1e-3,
    )
    images, latents, stats = ld.sample(
        6, solver="euler_maruyama", steps=20, generator=torch.Generator().manual_seed(0)
    )
    assert images.shape == (6, 4) and latents.shape == (6, 2) and stats.nfe == 21
    torch.testing.assert_close(ld.decode(latents), images)


def test_encode_dataset_and_standardisation() -> None:
    vae, marginal, _ = _linear_vae()
    x = marginal.sample(300, generator=torch.Generator().manual_seed(0), dtype=F64)
    means = encode_dataset(vae, x, batch_size=64)
    with torch.no_grad():
        torch.testing.assert_close(means, vae.encode(x)[0])
    draws = encode_dataset(vae, x, num_draws=3, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (900, 2)
    shift, scale = latent_standardisation(draws)
    torch.testing.assert_close(((draws - shift) / scale).std(0), torch.ones(2, dtype=F64))
    # the aggregate posterior of data from the model is the prior N(0, I)
    assert float((draws.std(0) - 1).abs().max()) < 0.1
    with pytest.raises(ValueError):
        latent_standardisation(draws[:1])
    with pytest.raises(ValueError, match="num_draws"):
        encode_dataset(vae, x, num_draws=-1)


def test_latent_digits_example_quick(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "latent_digits.py"
    spec = importlib.util.spec_from_file_location("latent_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(["--quick", "--out", str(tmp_path)])
    assert "LSGM" in capsys.readouterr().out
    for name in ("samples_latent_diffusion.png", "samples_vae_prior.png", "reconstructions.png"):
        assert (tmp_path / name).exists()
    assert all(math.isfinite(v) for v in res.values())
