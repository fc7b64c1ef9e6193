"""Schedules of discrete-time models in continuous time: a DDPM alpha-bar table (VP) and the
EDM noise level ``sigma(t) = t`` (VE), so trained diffusers / k-diffusion models run under the
continuous-time solvers unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Schedule, check_positive
from .vp import VPSchedule


class TabulatedVP(VPSchedule):
    """A VP schedule through the points of a discrete alpha-bar table.

    Timestep ``k = 0..N-1`` of the table sits at ``t_k = (k + 1) / N`` (so ``T = 1``) with
    ``alpha(t_k)^2 = alpha_bar[k]`` exactly. Between table times the log-SNR
    ``lambda = 1/2 log(alpha_bar / (1 - alpha_bar))`` is linear in ``t``; below ``t_0`` it
    continues as ``lambda(t) = lambda_0 - log(t / t_0)`` (noise-to-signal ratio linear in t), so
    ``alpha(0) = 1``. With ``I(t) = softplus(-2 lambda)`` (``alpha^2 = sigmoid(2 lambda)``) the
    rate is ``beta(t) = dI/dt = -2 lambda'(t) sigma(t)^2``.
    """

    def __init__(self, alphas_cumprod: Sequence[float] | Tensor) -> None:
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().cpu()
        if ab.numel() < 2:
            raise ValueError(f"alphas_cumprod has {ab.numel()} entries; expected at least 2")
        if not bool(((ab > 0) & (ab < 1)).all()):
            raise ValueError("alphas_cumprod must lie strictly inside (0, 1)")
        if not bool((ab[1:] < ab[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ab
        self.num_timesteps = n = ab.numel()
        self.T = 1.0
        self.knots = torch.arange(1, n + 1, dtype=torch.float64) / n
        self.knot_log_snr = 0.5 * (torch.log(ab) - torch.log1p(-ab))
        self._slopes = (self.knot_log_snr[1:] - self.knot_log_snr[:-1]) * n

    # -- log-SNR, piecewise linear ------------------------------------------------------------
    def _segment(self, t: Tensor) -> Tensor:
        """Index ``k`` of the segment ``[t_k, t_{k+1}]`` holding ``t`` (clamped to the table)."""
        knots = self.knots.to(t.device)
        k = torch.searchsorted(knots, t.contiguous(), right=True) - 1
        return k.clamp(0, self.num_timesteps - 2)

    def _log_snr(self, t: Tensor) -> Tensor:
        k = self._segment(t)
        lam_k = self.knot_log_snr.to(t.device)[k]
        inner = lam_k + self._slopes.to(t.device)[k] * (t - self.knots.to(t.device)[k])
        t0 = float(self.knots[0])
        below = float(self.knot_log_snr[0]) - torch.log(t.clamp_min(0) / t0)
        return torch.where(t < t0, below, inner)

    def _log_snr_rate(self, t: Tensor) -> Tensor:
        """``d lambda / dt`` (right derivative at the table times)."""
        k = self._segment(t)
        return torch.where(t < float(self.knots[0]), -1.0 / t, self._slopes.to(t.device)[k])

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        neg = -self.knot_log_snr.to(lam.device)  # increasing
        k = (torch.searchsorted(neg, (-lam).contiguous(), right=True) - 1).clamp(
            0, self.num_timesteps - 2
        )
        inner = (
            self.knots.to(lam.device)[k]
            + (lam - self.knot_log_snr.to(lam.device)[k]) / (self._slopes.to(lam.device)[k])
        )
        lam0, t0 = float(self.knot_log_snr[0]), float(self.knots[0])
        return torch.where(lam > lam0, t0 * torch.exp(lam0 - lam), inner)

    # -- the VP quantities, all through lambda --------------------------------------------------
    def _integral_beta(self, t: Tensor) -> Tensor:
        return torch.nn.functional.softplus(-2.0 * self._log_snr(t))

    def _t_from_integral(self, integral: Tensor) -> Tensor:
        return self._t_from_log_snr(-0.5 * torch.log(torch.expm1(integral)))

    def _beta(self, t: Tensor) -> Tensor:
        # below t_0: -2 lambda' sigma^2 = (2 / t) c t^2 / (1 + c t^2) with c = e^{-2 lambda_0} / t_0^2
        t0 = float(self.knots[0])
        c = math.exp(-2.0 * float(self.knot_log_snr[0])) / t0**2
        below = 2.0 * c * t / (1.0 + c * t * t)
        inner = -2.0 * self._log_snr_rate(t.clamp_min(t0)) * torch.sigmoid(-2.0 * self._log_snr(t))
        return torch.where(t < t0, below, inner)

    def timestep_of(self, t: Tensor) -> Tensor:
        """The (fractional) table index ``k = N t - 1`` of time ``t``; integers at table times."""
        return t * self.num_timesteps - 1.0

    def time_of(self, timesteps: Tensor | Sequence[int]) -> Tensor:
        """The continuous time ``t_k = (k + 1) / N`` of table indices ``k``."""
        k = torch.as_tensor(timesteps, dtype=torch.float64)
        if bool(((k < 0) | (k > self.num_timesteps - 1)).any()):
            raise ValueError(f"timesteps must lie in 0..{self.num_timesteps - 1}")
        return (k + 1.0) / self.num_timesteps

    def to_config(self) -> dict[str, Any]:
        return {"name": "TabulatedVP", "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        return f"TabulatedVP(N={self.num_timesteps})"


class VELinear(Schedule):
    """The EDM / k-diffusion noise level: ``sigma(t) = t``, ``alpha = 1`` on ``[0, sigma_max]``.

    ``lambda(t) = -log t``, ``beta(t) = d sigma^2/dt = 2 t``, ``I(t) = t^2``. Time is the noise
    level, so an Euler step in ``t`` is k-diffusion's Euler step in ``sigma``.
    """

    variance_preserving = False

    def __init__(self, sigma_max: float = 80.0) -> None:
        self.sigma_max = check_positive("sigma_max", sigma_max)
        self.T = self.sigma_max

    def _beta(self, t: Tensor) -> Tensor:
        return 2.0 * t

    def _integral_beta(self, t: Tensor) -> Tensor:
        return t * t

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def _log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam)

    def to_config(self) -> dict[str, Any]:
        return {"name": "VELinear", "sigma_max": self.sigma_max}
