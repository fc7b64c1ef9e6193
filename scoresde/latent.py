"""Latent diffusion: a score model trained in the latent space of a VAE (Vahdat et al. 2021,
LSGM; Rombach et al. 2022, LDM).

The VAE's encoder maps data to latents ``z = mu_phi(x)`` (the posterior mean); they are
standardised per dimension, ``u = (z - shift) / scale``, so the diffusion sees unit-variance
inputs (LDM's scale factor), a score model is trained on ``u`` by denoising score matching, and
samples are drawn by solving the reverse process in latent space and decoding,
``x = mu_theta(shift + scale * u)``.

With the diffusion model as the prior of the VAE, the bound on the data likelihood is (LSGM)

    log p(x) >= E_{q(z | x)} [log p(x | z) + log p_psi(z) - log q(z | x)],
    log p_psi(z) = log p_u((z - shift) / scale) - sum_j log scale_j,

where ``log p_u`` is the exact probability-flow likelihood of the latent score model
(:func:`scoresde.likelihood.log_likelihood`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from solvers import SampleStats, sample
from solvers.protocol import ScoreFn

from .likelihood import log_likelihood
from .vae import ELBO, GaussianVAE, diagonal_gaussian_log_prob


@torch.no_grad()
def encode_dataset(
    vae: GaussianVAE,
    data: Tensor,
    batch_size: int = 512,
    num_draws: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Latents of every sample of ``data``, computed in batches.

    ``num_draws = 0``: the posterior means ``mu_phi(x)``, shape ``(N, k)``. ``num_draws = K > 0``:
    ``K`` reparameterised draws ``z ~ q(z | x)`` per sample, shape ``(K N, k)`` - samples of the
    aggregate posterior ``q(z) = E_x q(z | x)``, the distribution the latent prior must match for
    the bound (LSGM trains on such draws).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 0:
        raise ValueError(f"num_draws={num_draws!r} must be a non-negative integer")
    dev = next(vae.parameters()).device
    out = []
    for i in range(0, len(data), batch_size):
        mu, log_var = vae.encode(data[i : i + batch_size].to(dev))
        if num_draws == 0:
            out.append(mu)
        else:
            out.extend(vae.reparameterize(mu, log_var, generator) for _ in range(num_draws))
    return torch.cat(out)


def latent_standardisation(latents: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-dimension ``(shift, scale) = (mean, std)`` of the latents (``std`` floored at ``eps``)."""
    if latents.dim() != 2 or latents.shape[0] < 2:
        raise ValueError(f"latents has shape {tuple(latents.shape)}; expected (N >= 2, k)")
    return latents.mean(0), latents.std(0).clamp_min(eps)


@dataclass
class LatentSampleResult:
    """``images, latents, stats = latent_diffusion.sample(...)``."""

    images: Tensor
    latents: Tensor
    stats: SampleStats

    def __iter__(self):
        return iter((self.images, self.latents, self.stats))


class LatentDiffusion(nn.Module):
    """A VAE plus a diffusion model over its standardised latents.

    Args:
        vae: the trained :class:`~scoresde.vae.GaussianVAE`.
        sde: the latent diffusion's SDE.
        score_fn: ``(u, t) -> score`` of the standardised latents ``u``.
        shift, scale: ``(k,)`` standardisation, ``u = (z - shift) / scale``.
        model: the score network (kept as a sub-module for ``.to()`` and ``state_dict``).
    """

    def __init__(
        self,
        vae: GaussianVAE,
        sde: Any,
        score_fn: ScoreFn,
        shift: Tensor,
        scale: Tensor,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        k = vae.latent_dim
        shift, scale = torch.as_tensor(shift), torch.as_tensor(scale)
        if shift.shape != (k,) or scale.shape != (k,):
            raise ValueError(
                f"shift {tuple(shift.shape)} and scale {tuple(scale.shape)} must have shape ({k},)"
            )
        if bool((scale <= 0).any()):
            raise ValueError("scale must be positive")
        self.vae = vae
        self.sde = sde
        self.score_fn = score_fn
        self.model = model
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    # -- maps -------------------------------------------------------------------------------
    def to_latent(self, z: Tensor) -> Tensor:
        """``u = (z - shift) / scale``."""
        return (z - self.shift.to(z)) / self.scale.to(z)

    def from_latent(self, u: Tensor) -> Tensor:
        """``z = shift + scale * u``."""
        return self.shift.to(u) + self.scale.to(u) * u

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Standardised posterior means ``u = (mu_phi(x) - shift) / scale``."""
        return self.to_latent(self.vae.encode(x)[0])

    @torch.no_grad()
    def decode(self, u: Tensor) -> Tensor:
        """Decoder means ``mu_theta(shift + scale * u)``."""
        return self.vae.decode(self.from_latent(u))

    # -- generation -------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        solver: str = "dpm_solver_pp_2m",
        steps: int = 50,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> LatentSampleResult:
        """Draw ``n`` latents with :func:`solvers.sample` (any registered solver and its
        options in ``kwargs``) and decode them."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer")
        ref = self.scale
        kwargs.setdefault("device", ref.device)
        kwargs.setdefault("dtype", ref.dtype)
        u, stats = sample(
            self.sde,
            self.score_fn,
            shape=(n, self.vae.latent_dim),
            solver=solver,
            steps=steps,
            generator=generator,
            **kwargs,
        )
        return LatentSampleResult(self.decode(u), u, stats)

    # -- likelihood -------------------------------------------------------------------------
    def latent_log_prob(self, z: Tensor, **likelihood_kwargs: Any) -> Tensor:
        """``log p_psi(z) = log p_u(u) - sum_j log scale_j`` by the probability-flow ODE."""
        u = self.to_latent(z)
        res = log_likelihood(self.sde, self.score_fn, u, **likelihood_kwargs)
        return res.logp - torch.log(self.scale.to(res.logp)).sum()

    @torch.no_grad()
    def elbo(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        num_samples: int = 1,
        **likelihood_kwargs: Any,
    ) -> ELBO:
        """The LSGM bound ``E_q[log p(x | z) + log p_psi(z) - log q(z | x)]`` per sample (nats).

        ``ELBO.kl`` holds the Monte-Carlo ``E_q[log q(z | x) - log p_psi(z)]`` (the KL to the
        diffusion prior); ``likelihood_kwargs`` go to :func:`~scoresde.likelihood.log_likelihood`.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} must be a positive integer")
        mu, log_var = self.vae.encode(x)
        recons, kls = [], []
        for _ in range(num_samples):
            z = self.vae.reparameterize(mu, log_var, generator)
            recons.append(self.vae.log_likelihood(x, z))
            log_q = diagonal_gaussian_log_prob(z, mu, log_var)
            kls.append(log_q - self.latent_log_prob(z, **likelihood_kwargs).to(log_q))
        recon, kl = torch.stack(recons).mean(0), torch.stack(kls).mean(0)
        return ELBO(recon - kl, recon, kl)


def fit_latent_diffusion(
    vae: GaussianVAE,
    data: Tensor,
    sde: Any | None = None,
    net: nn.Module | None = None,
    steps: int = 4000,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    ema_decay: float | None = 0.995,
    device: str | torch.device | None = None,
    progress: bool = False,
    num_draws: int = 10,
    generator: torch.Generator | None = None,
    **train_overrides: Any,
) -> LatentDiffusion:
    """Encode ``data`` with ``vae``, standardise the latents and train a score model on them.

    The training set is ``num_draws`` posterior draws ``z ~ q(z | x)`` per sample (drawn with
    ``generator``; 0 uses the posterior means instead, which under-disperses the prior for the
    bound). Training runs on ``device`` (default: the VAE's device).

    Uses :class:`scoresde.training.Trainer` with the default DSM loss; the network defaults to
    the library's residual MLP (eps prediction) on ``k`` latent dimensions, the SDE to the VP SDE.
    Returns the :class:`LatentDiffusion` with the EMA weights (if any). The EMA starts from the
    initial weights, which keep a share ``ema_decay^steps`` of it: the default 0.995 suits the
    few thousand steps of a CPU run (0.999 would leave 5 % of the untrained net after 3,000).
    """
    from .nets import MLP, ScoreModel
    from .sde import VPSDE
    from .training import TrainConfig, Trainer

    vae.eval()
    if device is None:  # train where the VAE lives, so that sampling and decoding share a device
        device = next(vae.parameters()).device
    latents = encode_dataset(vae, data, num_draws=num_draws, generator=generator).cpu().float()
    shift, scale = latent_standardisation(latents)
    u = (latents - shift) / scale
    sde = VPSDE() if sde is None else sde
    k = vae.latent_dim
    net = MLP(k, hidden=256, depth=3) if net is None else net
    model = ScoreModel(net, sde, prediction="eps")
    config = TrainConfig(
        steps=steps,
        batch_size=min(batch_size, len(u)),
        lr=lr,
        seed=seed,
        ema_decay=ema_decay,
        device=str(device),
        progress=progress,
        ckpt_every=0,
        log_every=max(1, min(100, steps)),
        warmup=min(100, steps // 10),
        **train_overrides,
    )
    trainer = Trainer(model, u, config=config)
    trainer.fit()
    trained = trainer.ema_model().eval().requires_grad_(False)
    dev = next(trained.parameters()).device
    out = LatentDiffusion(vae, sde, trained.score_fn(), shift.to(dev), scale.to(dev), model=trained)
    trainer.close()
    return out


__all__ = [
    "LatentDiffusion",
    "LatentSampleResult",
    "encode_dataset",
    "fit_latent_diffusion",
    "latent_standardisation",
]
