"""Training losses: continuous-time denoising score matching and the discrete DDPM loss.

Continuous DSM (Vincent 2011; Song et al. 2021): with ``x_t = alpha(t) x0 + sigma(t) eps``,
``grad log q(x_t | x0) = -eps / sigma`` and

    J(theta) = E_{t ~ U(t_eps, T)} E_{x0} E_{eps} lambda(t) || s_theta(x_t, t) + eps / sigma(t) ||^2.

Every term is computed in eps space, ``s_theta = -eps_theta / sigma`` (``eps_theta`` converted
from whatever the network predicts), so ``lambda ||s - grad log q||^2 = (lambda / sigma^2)
||eps_theta - eps||^2`` without dividing by a small sigma. Weightings ``lambda(t)``:

* ``"sigma2"`` (default): ``lambda = sigma^2`` (Song et al. 2021), i.e. ``||eps_theta - eps||^2``
  summed over the data dimensions;
* ``"likelihood"``: ``lambda = g(t)^2``, for which ``J`` bounds the negative log-likelihood
  (Song, Durkan et al. 2021), i.e. ``(g^2 / sigma^2) ||eps_theta - eps||^2``;
* ``"eps"``: the plain eps-MSE ``mean_i (eps_theta - eps)_i^2`` over the ``D`` data dimensions
  (Ho et al.'s ``L_simple``): ``sigma2`` divided by ``D``, with a loss of order 1 whatever ``D``.

Time sampling: ``t ~ U(t_eps, T)`` (``"uniform"``), or ``"importance"``: ``lambda = log(alpha /
sigma)`` drawn uniformly on ``[lambda(T), lambda(t_eps)]`` and ``t = t_from_log_snr(lambda)``.
For every linear SDE ``d lambda / dt = -g^2 / (2 sigma^2)`` (from ``d sigma^2/dt = 2 f sigma^2 +
g^2``), so this draws ``t`` with density ``p(t) = g^2 / (sigma^2 Z)``, ``Z = 2 (lambda(t_eps) -
lambda(T))``: exactly the likelihood weighting's own profile, which makes its per-sample weight the
constant ``Z / (T - t_eps)`` and removes the ``1 / t`` blow-up of ``g^2 / sigma^2`` near ``t = 0``.
Each sample's term is multiplied by ``1 / ((T - t_eps) p(t))``, so both samplings estimate the same
``J`` for every weighting.

Discrete DDPM (Ho et al. 2020): ``i ~ U{1..N}``, ``x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps``
from :meth:`VPSDE.ddpm`, loss ``mean_i (eps_theta(x_i, t_i) - eps)^2`` with ``t_i = i T / N``.

Losses are callables ``loss(model, x0, y=None, generator=None) -> scalar`` with ``model`` a
:class:`~scoresde.nets.ScoreModel` (possibly inside ``DistributedDataParallel``).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor, nn

from schedules.parametrization import broadcast_to, to_eps

WEIGHTINGS = ("sigma2", "likelihood", "eps")
T_SAMPLINGS = ("uniform", "importance")


def _unwrap(model: nn.Module) -> nn.Module:
    """The :class:`ScoreModel` inside a ``DistributedDataParallel`` (or the model itself)."""
    return getattr(model, "module", model)


def _drop_labels(
    y: Tensor | None,
    model: nn.Module,
    p: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor | None:
    """Replace each label by the null label with probability ``p`` (classifier-free guidance)."""
    if y is None or p <= 0:
        return y
    null = _unwrap(model).null_label
    if null is None:
        raise ValueError("label_dropout > 0 needs a class-conditional net (num_classes set)")
    y = torch.as_tensor(y, device=device).long()
    drop = torch.rand(y.shape, generator=generator, device=device) < p
    return torch.where(drop, torch.full_like(y, null), y)


def _time_dtype(x0: Tensor) -> torch.dtype:
    """Times and coefficients in float64 for float64 data, else float32 (also under bf16)."""
    return torch.float64 if x0.dtype == torch.float64 else torch.float32


def _check_x0(x0: Tensor) -> None:
    if not isinstance(x0, Tensor) or x0.dim() < 2 or x0.shape[0] < 1:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 has shape {got}; expected a batch (B, ...) with B >= 1")
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}")


def _eps_residual(
    model: nn.Module,
    x0: Tensor,
    t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    y: Tensor | None,
    label_dropout: float,
    generator: torch.Generator | None,
) -> Tensor:
    """``eps_theta(x_t, t) - eps`` flattened to ``(B, D)``, with ``x_t = alpha x0 + sigma eps``.

    Whatever the network predicts is converted to eps exactly (:func:`solvers.to_eps`), so every
    loss here is a weighted eps-MSE.
    """
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    a, s = alpha.to(x0.dtype), sigma.to(x0.dtype)
    x_t = broadcast_to(a, x0) * x0 + broadcast_to(s, x0) * eps
    y = _drop_labels(y, model, label_dropout, generator, x0.device)
    pred = model(x_t, t, y, alpha=alpha, sigma=sigma)
    eps_hat = to_eps(pred.to(x0.dtype), _unwrap(model).prediction, x_t, a, s)
    return (eps_hat - eps).reshape(x0.shape[0], -1)


class _BatchLoss(abc.ABC):
    """A loss defined per sample; calling it averages ``per_sample`` over the batch."""

    @abc.abstractmethod
    def per_sample(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The loss of each sample of the batch ``x0``: shape ``(B,)``."""

    def __call__(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Monte-Carlo estimate of the loss on the batch ``x0``: the mean of :meth:`per_sample`."""
        return self.per_sample(model, x0, y, generator).mean()


class DSMLoss(_BatchLoss):
    """Continuous-time denoising score matching (see the module docstring).

    Args:
        sde: the diffusion (``marginal``, ``diffusion``, ``log_snr``, ``t_from_log_snr``, ``T``).
        weighting: ``"sigma2"`` (default), ``"likelihood"`` or ``"eps"``.
        t_sampling: ``"uniform"`` (default) or ``"importance"``.
        t_eps: the smallest training time (default 1e-5, as score-SDE).
        label_dropout: probability of replacing a label by the null label (classifier-free
            guidance training).
    """

    def __init__(
        self,
        sde: Any,
        weighting: str = "sigma2",
        t_sampling: str = "uniform",
        t_eps: float = 1e-5,
        label_dropout: float = 0.0,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling={t_sampling!r}; expected one of {', '.join(T_SAMPLINGS)}")
        T = float(sde.T)
        if not (math.isfinite(float(t_eps)) and 0 < float(t_eps) < T):
            raise ValueError(f"t_eps={t_eps!r} must lie in (0, T={T})")
        if not 0.0 <= float(label_dropout) < 1.0:
            raise ValueError(f"label_dropout={label_dropout!r} must lie in [0, 1)")
        self.sde = sde
        self.weighting = weighting
        self.t_sampling = t_sampling
        self.t_eps = float(t_eps)
        self.label_dropout = float(label_dropout)
        self.T = T
        lam_hi = float(sde.log_snr(self.t_eps))
        lam_lo = float(sde.log_snr(T))
        self._lam_range = (lam_lo, lam_hi)
        self._Z = 2.0 * (lam_hi - lam_lo)  # int_{t_eps}^T g^2 / sigma^2 dt

    def to_config(self) -> dict[str, Any]:
        """The loss settings as a plain dict (:func:`build_loss` rebuilds it)."""
        return {
            "name": "dsm",
            "weighting": self.weighting,
            "t_sampling": self.t_sampling,
            "t_eps": self.t_eps,
            "label_dropout": self.label_dropout,
        }

    def sample_t(
        self,
        batch: int,
        device: torch.device | str,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor | None]:
        """Draw ``(t, w)``: times ``(B,)`` and the importance factor ``1 / ((T - t_eps) p(t))``
        relative to the uniform density (``None`` for uniform sampling)."""
        u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
        if self.t_sampling == "uniform":
            return self.t_eps + (self.T - self.t_eps) * u, None
        lo, hi = self._lam_range
        lam = lo + (hi - lo) * u.double()
        t = self.sde.t_from_log_snr(lam).clamp(self.t_eps, self.T)
        g2 = self.sde.diffusion(t) ** 2
        _, sigma = self.sde.marginal(t)
        p = g2 / (sigma**2 * self._Z)
        return t.to(dtype), (1.0 / ((self.T - self.t_eps) * p)).to(dtype)

    def _weight(self, t: Tensor, sigma: Tensor, dim: int) -> Tensor | float:
        """``lambda(t) / sigma^2``, the factor in front of ``||eps_theta - eps||^2``."""
        if self.weighting == "sigma2":
            return 1.0
        if self.weighting == "eps":
            return 1.0 / dim
        g2 = self.sde.diffusion(t).to(sigma.dtype) ** 2
        return g2 / sigma**2

    def per_sample(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
    ) -> Tensor:
        """The per-sample terms ``(B,)`` whose mean is the loss (``t`` may be fixed)."""
        _check_x0(x0)
        batch, dim = x0.shape[0], x0[0].numel()
        tdtype = _time_dtype(x0)
        if t is None:
            t, iw = self.sample_t(batch, x0.device, generator, tdtype)
        else:
            t, iw = torch.as_tensor(t, device=x0.device, dtype=tdtype).expand(batch), None
        alpha, sigma = self.sde.marginal(t)  # computed in float64, returned in t's dtype
        residual = _eps_residual(model, x0, t, alpha, sigma, y, self.label_dropout, generator)
        sq = residual.pow(2).sum(1)
        out = self._weight(t, sigma, dim) * sq
        return out if iw is None else out * iw

    def __repr__(self) -> str:
        return (
            f"DSMLoss(weighting={self.weighting!r}, t_sampling={self.t_sampling!r}, "
            f"t_eps={self.t_eps:g})"
        )


class DDPMLoss(_BatchLoss):
    """The discrete DDPM loss ``E_i E_eps mean_j (eps_theta(x_i, t_i) - eps)_j^2`` on the chain
    :meth:`VPSDE.ddpm(num_steps) <scoresde.sde.VPSDE.ddpm>` (``abar_i = alpha(t_i)^2``).

    Args:
        sde: a process with ``ddpm(num_steps)`` (the VP SDE).
        num_steps: ``N``.
        label_dropout: as in :class:`DSMLoss`.
    """

    def __init__(self, sde: Any, num_steps: int = 1000, label_dropout: float = 0.0) -> None:
        if not callable(getattr(sde, "ddpm", None)):
            raise ValueError(
                f"the DDPM loss needs an SDE with a discrete DDPM view (sde.ddpm(N), e.g. VPSDE); "
                f"{sde!r} has none"
            )
        if not 0.0 <= float(label_dropout) < 1.0:
            raise ValueError(f"label_dropout={label_dropout!r} must lie in [0, 1)")
        self.sde = sde
        self.chain = sde.ddpm(num_steps)
        self.num_steps = self.chain.num_steps
        self.label_dropout = float(label_dropout)
        abar = self.chain.alpha_bars
        self._alpha = torch.sqrt(abar)
        self._sigma = torch.sqrt(-torch.expm1(torch.log(abar)))  # sqrt(1 - abar), no cancellation
        self._cache: dict[Any, tuple[Tensor, Tensor, Tensor]] = {}

    def to_config(self) -> dict[str, Any]:
        """The loss settings as a plain dict (:func:`build_loss` rebuilds it)."""
        return {"name": "ddpm", "num_steps": self.num_steps, "label_dropout": self.label_dropout}

    def _table(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = (
                self.chain.t.to(device, dtype),
                self._alpha.to(device, dtype),
                self._sigma.to(device, dtype),
            )
        return self._cache[key]

    def per_sample(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        i: Tensor | None = None,
    ) -> Tensor:
        """Per-sample terms ``(B,)``; ``i`` (step indices in ``1..N``) may be fixed."""
        _check_x0(x0)
        batch = x0.shape[0]
        if i is None:
            i = torch.randint(
                1, self.num_steps + 1, (batch,), generator=generator, device=x0.device
            )
        else:
            i = torch.as_tensor(i, device=x0.device).long().expand(batch)
        ts, alphas, sigmas = self._table(x0.device, _time_dtype(x0))
        t, alpha, sigma = ts[i], alphas[i], sigmas[i]
        residual = _eps_residual(model, x0, t, alpha, sigma, y, self.label_dropout, generator)
        return residual.pow(2).mean(1)

    def __repr__(self) -> str:
        return f"DDPMLoss(num_steps={self.num_steps})"


LOSSES = {"dsm": DSMLoss, "ddpm": DDPMLoss}


def build_loss(config: dict[str, Any] | None, sde: Any) -> DSMLoss | DDPMLoss:
    """Build a loss from ``{"name": "dsm" | "ddpm", **options}`` (``None``: default DSM)."""
    kwargs = dict(config or {"name": "dsm"})
    name = kwargs.pop("name", "dsm")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(LOSSES)}")
    try:
        return LOSSES[name](sde, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad options for loss {name!r}: {err}") from None


__all__ = ["LOSSES", "T_SAMPLINGS", "WEIGHTINGS", "DDPMLoss", "DSMLoss", "build_loss"]
