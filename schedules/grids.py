"""Time grids for samplers, built in float64 on the CPU.

Every grid has ``steps + 1`` points, runs from ``t_start`` down to ``t_end`` (the sampling
direction), is strictly decreasing and has exactly those endpoints. Grids defined through noise
levels take any object with ``log_snr(t)`` and ``t_from_log_snr(lam)`` (a schedule or an SDE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor


class HasLogSNR(Protocol):
    def log_snr(self, t: float | Tensor) -> Tensor: ...

    def t_from_log_snr(self, lam: float | Tensor) -> Tensor: ...


def _check(steps: int, t_start: float, t_end: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    if not (t_start > t_end >= 0):
        raise ValueError(f"t_start={t_start!r}, t_end={t_end!r}: expected t_start > t_end >= 0")


def _finish(t: Tensor, t_start: float, t_end: float, name: str) -> Tensor:
    t = t.to(torch.float64).clone()
    t[0], t[-1] = t_start, t_end  # exact endpoints despite round-off in the maps
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(
            f"the {name} grid with {len(t) - 1} steps on [{t_end}, {t_start}] is not strictly "
            "decreasing in float64; use fewer steps or another grid"
        )
    return t


def uniform_grid(steps: int, t_start: float, t_end: float) -> Tensor:
    """``t_i = t_start + i/N (t_end - t_start)``, ``i = 0..N``."""
    _check(steps, t_start, t_end)
    t = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    return _finish(t, t_start, t_end, "uniform")


def quadratic_grid(steps: int, t_start: float, t_end: float) -> Tensor:
    """``t_i = t_end + (t_start - t_end) (1 - i/N)^2``: dense near ``t_end`` (DDIM's quadratic)."""
    _check(steps, t_start, t_end)
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return _finish(t_end + (t_start - t_end) * u**2, t_start, t_end, "quadratic")


def karras_grid(
    process: HasLogSNR, steps: int, t_start: float, t_end: float, rho: float = 7.0
) -> Tensor:
    """Karras et al. (2022) eq. 5 in the EDM noise level ``s(t) = sigma/alpha = exp(-lambda(t))``.

    ``s_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho``, mapped back to t through
    ``t = t_from_log_snr(-log s_i)``.
    """
    _check(steps, t_start, t_end)
    if not rho > 0:
        raise ValueError(f"rho={rho!r} must be positive")
    s_max = torch.exp(-process.log_snr(torch.tensor(t_start, dtype=torch.float64)))
    s_min = torch.exp(-process.log_snr(torch.tensor(t_end, dtype=torch.float64)))
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _finish(process.t_from_log_snr(-torch.log(s)), t_start, t_end, "karras")


def log_snr_grid(process: HasLogSNR, steps: int, t_start: float, t_end: float) -> Tensor:
    """Uniform in ``lambda = log(alpha/sigma)`` (DPM-Solver's default "logSNR" spacing)."""
    _check(steps, t_start, t_end)
    lam0 = process.log_snr(torch.tensor(t_start, dtype=torch.float64))
    lam1 = process.log_snr(torch.tensor(t_end, dtype=torch.float64))
    lam = torch.linspace(float(lam0), float(lam1), steps + 1, dtype=torch.float64)
    return _finish(process.t_from_log_snr(lam), t_start, t_end, "log_snr")


GridFn = Callable[..., Tensor]

GRIDS: dict[str, str] = {
    "uniform": "uniform in t",
    "quadratic": "quadratic in t, dense near t_end",
    "karras": "Karras rho-spacing (rho=7) in sigma/alpha",
    "log_snr": "uniform in log-SNR",
}


def time_grid(
    name: str, process: HasLogSNR, steps: int, t_start: float, t_end: float, **options: float
) -> Tensor:
    """Build the grid called ``name`` (one of :data:`GRIDS`)."""
    if name == "uniform":
        return uniform_grid(steps, t_start, t_end)
    if name == "quadratic":
        return quadratic_grid(steps, t_start, t_end)
    if name == "karras":
        return karras_grid(process, steps, t_start, t_end, **options)
    if name == "log_snr":
        return log_snr_grid(process, steps, t_start, t_end)
    raise ValueError(f"unknown grid {name!r}; available grids: {', '.join(GRIDS)}")
