"""The process protocol: what a sampler may ask of a diffusion.

Solvers talk to this protocol only, never to concrete SDE classes, so a new process needs no
change in any solver. Times may be Python floats or tensors; tensors of shape ``(B,)`` give
per-sample coefficients. The processes of this library are linear with Gaussian kernels,

    forward SDE   dx = f(t) x dt + g(t) dw,     x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score_fn(x, t) -> grad_x log p_t(x)``, with ``t`` a per-sample vector of shape ``(B,)``."""


def pf_velocity(x: Tensor, score: Tensor, f: float | Tensor, g2: float | Tensor) -> Tensor:
    """The probability-flow velocity ``v = f x - g^2 score / 2`` (``dx/dt = v``) of the linear
    drift ``f(x, t) = f x``, at one time, given the score there.

    ``f`` and ``g2 = g^2`` are Python floats (one allocation) or tensors that broadcast against
    ``x``. Every probability-flow ODE of the library evaluates its field here.
    """
    if isinstance(f, Tensor) or isinstance(g2, Tensor):
        return f * x - 0.5 * g2 * score
    return torch.mul(score, -0.5 * g2).add_(x, alpha=f)


@runtime_checkable
class DiffusionProcess(Protocol):
    """A forward diffusion that samplers can reverse."""

    T: float
    default_t_end: float
    prior_std: float
    """Standard deviation of the prior ``p_T = N(0, prior_std^2 I)``."""

    def marginal(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` of the kernel ``x_t = alpha x_0 + sigma eps``."""
        ...

    def drift_coef(self, t: float | Tensor) -> Tensor:
        """``f(t)`` of the linear drift ``f(x, t) = f(t) x``."""
        ...

    def drift(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The forward drift ``f(x, t) = f(t) x``."""
        ...

    def diffusion(self, t: float | Tensor) -> Tensor:
        """The forward diffusion coefficient ``g(t)``."""
        ...

    def transition(self, s: float | Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_{t|s}, sigma_{t|s})`` of ``x_t | x_s`` for ``s < t``."""
        ...

    def posterior(self, s: float | Tensor, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_t, c_0, var)`` of ``q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, var I)`` for ``s < t``.

        ``c_t = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``c_0 = alpha_s sigma_{t|s}^2 / sigma_t^2``,
        ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``. Used by the ancestral samplers.
        """
        ...

    def log_snr(self, t: float | Tensor) -> Tensor:
        """``lambda(t) = log(alpha(t) / sigma(t))``."""
        ...

    def t_from_log_snr(self, lam: float | Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`."""
        ...

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``x_T`` from the prior ``p_T``."""
        ...
