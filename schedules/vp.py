"""Variance-preserving schedules: ``alpha(t)^2 + sigma(t)^2 = 1``.

Everything follows from ``I(t) = int_0^t beta(s) ds``:

    alpha(t) = exp(-I/2),  sigma(t) = sqrt(-expm1(-I)),  lambda(t) = -1/2 log(expm1(I)),

and the inverse ``I(lambda) = softplus(-2 lambda) = log1p(exp(-2 lambda))``. ``expm1`` keeps
``sigma`` accurate near ``t = 0`` where ``1 - alpha^2`` would cancel.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Schedule, TimeLike, as_float64, check_positive


class VPSchedule(Schedule):
    """Base of the VP family, defined by ``beta(t)`` and its integral ``I(t)``."""

    variance_preserving = True

    @abc.abstractmethod
    def _t_from_integral(self, integral: Tensor) -> Tensor:
        """The time ``t`` with ``I(t) = integral``."""

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._integral_beta(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self._integral_beta(t)))

    def _log_snr(self, t: Tensor) -> Tensor:
        return -0.5 * torch.log(torch.expm1(self._integral_beta(t)))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return self._t_from_integral(F.softplus(-2.0 * lam))

    def t_from_log_alpha(self, log_alpha: TimeLike) -> Tensor:
        """The time whose mean coefficient is ``exp(log_alpha)``: ``I(t) = -2 log_alpha``."""
        la, dtype = as_float64(log_alpha)
        return self._t_from_integral(-2.0 * la).to(dtype)


class LinearVP(VPSchedule):
    """DDPM's linear schedule (Ho et al. 2020; Song et al. 2021).

    ``beta(t) = beta_min + t (beta_max - beta_min)``,
    ``I(t) = beta_min t + (beta_max - beta_min) t^2 / 2``; inverse
    ``t = 2 I / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) I))`` (cancellation-free).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        self.T = check_positive("T", T)
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"beta_min={beta_min!r} > beta_max={beta_max!r}; expected beta_min <= beta_max"
            )

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integral_beta(self, t: Tensor) -> Tensor:
        return t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))

    def _t_from_integral(self, integral: Tensor) -> Tensor:
        d = self.beta_max - self.beta_min
        return 2.0 * integral / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * integral))

    def to_config(self) -> dict[str, Any]:
        return {
            "name": "LinearVP",
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "T": self.T,
        }


class CosineVP(VPSchedule):
    """The cosine schedule (Nichol & Dhariwal 2021) in continuous time.

    ``alpha(t)^2 = cos^2(phi(t)) / cos^2(phi(0))`` with ``phi(t) = (t + s) / (1 + s) * pi / 2``, so
    ``I(t) = -2 log(cos phi(t) / cos phi(0))`` and ``beta(t) = pi tan(phi(t)) / (1 + s)``.
    ``alpha(1) = 0`` makes beta blow up at t = 1, so the default end time is ``T = 0.9946``
    (DPM-Solver's choice, where ``lambda(T) ~ -4.8``).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946) -> None:
        self.s = check_positive("s", s)
        self.T = check_positive("T", T)
        if self.T >= 1.0:
            raise ValueError(f"T={T!r} must be < 1 for the cosine schedule (alpha(1) = 0)")

    def _phi(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2)

    def _beta(self, t: Tensor) -> Tensor:
        return math.pi * torch.tan(self._phi(t)) / (1.0 + self.s)

    @property
    def _phi0(self) -> float:
        return self.s / (1.0 + self.s) * (math.pi / 2)

    def _integral_beta(self, t: Tensor) -> Tensor:
        # cos(phi0 + d) / cos(phi0) = 1 - 2 sin^2(d/2) - tan(phi0) sin(d) with d = phi(t) - phi0:
        # log1p of that is exactly 0 at t = 0 and never positive, so I(t) >= 0 without the
        # round-off of log(cos phi) - log(cos phi0), which gave I(0) = -2.7e-20 and a NaN sigma(0).
        d = t / (1.0 + self.s) * (math.pi / 2)
        return -2.0 * torch.log1p(
            -2.0 * torch.sin(0.5 * d) ** 2 - math.tan(self._phi0) * torch.sin(d)
        )

    def _t_from_integral(self, integral: Tensor) -> Tensor:
        # cos(phi) = cos(phi0) exp(-I/2); sin(phi)^2 = sin(phi0)^2 + cos(phi0)^2 (1 - exp(-I)) has
        # no cancellation, so atan2 gives phi to full relative precision (arccos is ill-conditioned
        # near phi0); the clamp removes the last ulp below t = 0.
        cos0, sin0 = math.cos(self._phi0), math.sin(self._phi0)
        sin_phi = torch.sqrt(sin0**2 - cos0**2 * torch.expm1(-integral))
        phi = torch.atan2(sin_phi, cos0 * torch.exp(-0.5 * integral))
        return (phi * (2.0 * (1.0 + self.s) / math.pi) - self.s).clamp_min(0.0)

    def to_config(self) -> dict[str, Any]:
        return {"name": "CosineVP", "s": self.s, "T": self.T}
