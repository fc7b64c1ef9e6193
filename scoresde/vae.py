"""A variational auto-encoder with Gaussian encoder and decoder (Kingma & Welling 2014).

Model (the lecture's notation), for data of any shape flattened to ``D`` numbers:

    p(z) = N(0, I_k),     p(x | z) = N(x; mu_theta(z), diag(exp(v)))      (decoder)
    q(z | x) = N(z; mu_phi(x), diag(exp(l_phi(x))))                         (encoder)

with a learned per-dimension decoder log-variance ``v`` (or a fixed one). The evidence lower
bound, with the reparameterisation ``z = mu_phi(x) + exp(l_phi(x) / 2) * eps``, ``eps ~ N(0, I)``:

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)) <= log p(x),
    KL = 1/2 sum_j (mu_j^2 + exp(l_j) - 1 - l_j)                             (analytic)

The encoder and decoder are MLPs by default; any modules with the same input/output shapes
(``(B, D) -> (B, 2k)`` and ``(B, k) -> (B, D)``) can be passed instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class ELBO(NamedTuple):
    """Per-sample ELBO terms in nats, each ``(B,)``: ``elbo = reconstruction - kl``."""

    elbo: Tensor
    reconstruction: Tensor
    kl: Tensor


def kl_standard_normal(mu: Tensor, log_var: Tensor) -> Tensor:
    """``KL(N(mu, diag(exp(log_var))) || N(0, I)) = 1/2 sum_j (mu_j^2 + exp(l_j) - 1 - l_j)``, per row."""
    if mu.shape != log_var.shape:
        raise ValueError(f"mu shape {tuple(mu.shape)} != log_var shape {tuple(log_var.shape)}")
    return 0.5 * (mu.pow(2) + torch.exp(log_var) - 1.0 - log_var).reshape(mu.shape[0], -1).sum(1)


def diagonal_gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """``log N(x; mean, diag(exp(log_var)))`` summed over every non-batch dimension:

    ``-1/2 sum_j [(x_j - m_j)^2 exp(-l_j) + l_j + log(2 pi)]``. ``log_var`` broadcasts to ``x``.
    """
    log_var = torch.broadcast_to(log_var, x.shape)
    terms = (x - mean).pow(2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi)
    return -0.5 * terms.reshape(x.shape[0], -1).sum(1)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class GaussianVAE(nn.Module):
    """Gaussian encoder ``q(z | x)``, Gaussian decoder ``p(x | z)``, prior ``N(0, I)``.

    Args:
        data_shape: shape of one sample (``(d,)`` or ``(C, H, W)``).
        latent_dim: ``k``.
        hidden: hidden widths of the default MLP encoder and decoder (SiLU activations).
        encoder: optional module ``(B, D) -> (B, 2k)`` giving ``[mu, log_var]``.
        decoder: optional module ``(B, k) -> (B, D)`` giving the decoder mean.
        decoder_log_var: initial (or fixed) decoder log-variance, per dimension.
        learn_decoder_var: learn the per-dimension decoder log-variance ``v``.
        min_decoder_log_var: floor of ``v`` (quantised data such as always-black pixels would
            otherwise drive it to ``-inf``).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (256, 256),
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        decoder_log_var: float = 0.0,
        learn_decoder_var: bool = True,
        min_decoder_log_var: float = -7.0,
    ) -> None:
        super().__init__()
        shape = tuple(int(n) for n in data_shape)
        if len(shape) == 0 or any(n < 1 for n in shape):
            raise ValueError(
                f"data_shape={data_shape!r} must be a non-empty tuple of positive sizes"
            )
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim={latent_dim!r} must be a positive integer")
        if not math.isfinite(decoder_log_var):
            raise ValueError(f"decoder_log_var={decoder_log_var!r} must be finite")
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden={hidden!r} must hold positive widths")
        self.data_shape = shape
        self.data_dim = math.prod(shape)
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.encoder = (
            encoder if encoder is not None else _mlp([self.data_dim, *hidden, 2 * latent_dim])
        )
        self.decoder = (
            decoder if decoder is not None else _mlp([latent_dim, *hidden[::-1], self.data_dim])
        )
        init = torch.full((self.data_dim,), float(decoder_log_var))
        if learn_decoder_var:
            self.decoder_log_var = nn.Parameter(init)
        else:
            self.register_buffer("decoder_log_var", init)
        self.min_decoder_log_var = float(min_decoder_log_var)

    # -- the two networks ---------------------------------------------------------------------
    def _check_x(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x[0].numel() != self.data_dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected (B, *{self.data_shape}) "
                f"({self.data_dim} numbers per sample)"
            )
        return x.reshape(x.shape[0], self.data_dim)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu_phi(x), l_phi(x))``, the mean and log-variance of ``q(z | x)``, each ``(B, k)``."""
        h = self.encoder(self._check_x(x))
        if h.shape != (x.shape[0], 2 * self.latent_dim):
            raise ValueError(
                f"encoder returned {tuple(h.shape)}; expected ({x.shape[0]}, {2 * self.latent_dim})"
            )
        mu, log_var = h.chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: Tensor) -> Tensor:
        """The decoder mean ``mu_theta(z)``, shaped ``(B, *data_shape)``."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z has shape {tuple(z.shape)}; expected (B, {self.latent_dim})")
        out = self.decoder(z)
        return out.reshape(z.shape[0], *self.data_shape)

    def decoder_variance_log(self) -> Tensor:
        """The decoder log-variance ``v`` (floored at ``min_decoder_log_var``), shaped like a sample."""
        return self.decoder_log_var.clamp_min(self.min_decoder_log_var).reshape(self.data_shape)

    @staticmethod
    def reparameterize(
        mu: Tensor, log_var: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """``z = mu + exp(log_var / 2) * eps``, ``eps ~ N(0, I)``: differentiable in ``mu, log_var``."""
        dev = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=dev, dtype=mu.dtype).to(mu.device)
        return mu + torch.exp(0.5 * log_var) * eps

    # -- densities ----------------------------------------------------------------------------
    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x | z)`` per sample."""
        return diagonal_gaussian_log_prob(
            x.reshape(x.shape[0], *self.data_shape), self.decode(z), self.decoder_variance_log()
        )

    def elbo(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        num_samples: int = 1,
        analytic_kl: bool = True,
    ) -> ELBO:
        """``ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || N(0, I))`` per sample (nats).

        The reconstruction term is averaged over ``num_samples`` reparameterised draws. The KL
        is analytic by default; with ``analytic_kl=False`` it is the Monte-Carlo estimate
        ``mean_s [log q(z_s | x) - log p(z_s)]`` on the same draws, for which each draw's term
        ``log p(x | z) + log p(z) - log q(z | x)`` equals ``log p(x)`` exactly when ``q`` is the
        true posterior (a zero-variance estimator).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} must be a positive integer")
        mu, log_var = self.encode(x)
        recons, kls = [], []
        for _ in range(num_samples):
            z = self.reparameterize(mu, log_var, generator)
            recons.append(self.log_likelihood(x, z))
            if not analytic_kl:
                log_q = diagonal_gaussian_log_prob(z, mu, log_var)
                log_p = diagonal_gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
                kls.append(log_q - log_p)
        recon = torch.stack(recons).mean(0)
        kl = kl_standard_normal(mu, log_var) if analytic_kl else torch.stack(kls).mean(0)
        return ELBO(recon - kl, recon, kl)

    def loss(
        self, x: Tensor, generator: torch.Generator | None = None, beta: float = 1.0
    ) -> Tensor:
        """``-mean_x [E_q log p(x | z) - beta KL]`` (``beta = 1``: the negative ELBO)."""
        out = self.elbo(x, generator)
        return -(out.reconstruction - beta * out.kl).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        noise: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Decode ``n`` prior draws ``z ~ N(0, I)`` (the decoder mean, plus decoder noise if asked)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer")
        ref = self.decoder_log_var
        dev = generator.device if generator is not None else (device or ref.device)
        z = torch.randn(n, self.latent_dim, generator=generator, device=dev, dtype=ref.dtype)
        x = self.decode(z.to(ref.device))
        if noise:
            eps = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
            x = x + torch.exp(0.5 * self.decoder_variance_log()) * eps
        return x

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments of the default architecture (to rebuild before loading weights)."""
        return {
            "data_shape": list(self.data_shape),
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "min_decoder_log_var": self.min_decoder_log_var,
            "learn_decoder_var": isinstance(self.decoder_log_var, nn.Parameter),
        }


def fit_vae(
    vae: GaussianVAE,
    data: Tensor,
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    log_every: int = 0,
    transform: Callable[[Tensor, torch.Generator | None], Tensor] | None = None,
) -> list[float]:
    """Train ``vae`` on ``data`` (``(N, *data_shape)``) with Adam on the negative ELBO.

    Minibatches are drawn with replacement from ``generator`` and passed through
    ``transform(batch, generator)`` if given (e.g. uniform dequantisation of quantised data);
    the learning rate follows a cosine decay to 0. Returns the loss of every step (nats per
    sample).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a finite positive number")
    device = next(vae.parameters()).device
    data = data.to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    vae.train()
    for step in range(steps):
        gdev = generator.device if generator is not None else "cpu"
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=gdev)
        batch = data[idx.to(device)]
        if transform is not None:
            batch = transform(batch, generator)
        loss = vae.loss(batch, generator, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"vae step {step + 1}/{steps}: loss {losses[-1]:.3f} nats")
    vae.eval()
    return losses


__all__ = [
    "ELBO",
    "GaussianVAE",
    "diagonal_gaussian_log_prob",
    "fit_vae",
    "kl_standard_normal",
]
