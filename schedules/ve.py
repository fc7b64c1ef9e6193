"""Variance-exploding schedules: ``alpha(t) = 1``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Schedule, check_positive


class VEGeometric(Schedule):
    """SMLD / NCSN geometric noise levels (Song et al. 2021).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``alpha(t) = 1``,
    ``lambda(t) = -log sigma(t)``, ``beta(t) = d sigma^2/dt = 2 log(sigma_max/sigma_min) sigma(t)^2``
    (the ``g(t)^2`` of the VE SDE), ``I(t) = sigma(t)^2 - sigma_min^2 = sigma_min^2 expm1(2 t log r)``.

    Convention (as the score-SDE reference code): the perturbation kernel has std ``sigma(t)``,
    not ``sqrt(sigma(t)^2 - sigma_min^2)``; the VE SDE reproduces these marginals exactly when
    started at t = 0 from the data convolved with ``N(0, sigma_min^2 I)``. It keeps the sampler
    well conditioned at the truncation time (``sigma(1e-5) ~ sigma_min``).
    """

    variance_preserving = False

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0) -> None:
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        self.T = check_positive("T", T)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"sigma_min={sigma_min!r} >= sigma_max={sigma_max!r}; expected sigma_min < sigma_max"
            )
        self._log_ratio = math.log(self.sigma_max / self.sigma_min) / self.T

    def _log_sigma(self, t: Tensor) -> Tensor:
        return math.log(self.sigma_min) + t * self._log_ratio

    def _beta(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * torch.exp(2.0 * self._log_sigma(t))

    def _integral_beta(self, t: Tensor) -> Tensor:
        return self.sigma_min**2 * torch.expm1(2.0 * t * self._log_ratio)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_sigma(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        return -self._log_sigma(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def to_config(self) -> dict[str, Any]:
        return {
            "name": "VEGeometric",
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "T": self.T,
        }
