"""The schedule interface and the float64 plumbing shared by every schedule.

A schedule describes the Gaussian perturbation kernel ``x_t = alpha(t) x_0 + sigma(t) eps`` of a
diffusion. Every function is vectorised over ``t`` (a Python float or a tensor of any shape) and
computes in float64 internally; the result has the dtype of a floating-point tensor input, or
float64 for a Python number. Log-SNR follows the DPM-Solver convention
``lambda(t) = log(alpha(t) / sigma(t))`` (half the ``log(alpha^2 / sigma^2)`` of some papers).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor

TimeLike = float | Tensor


def as_float64(t: TimeLike) -> tuple[Tensor, torch.dtype]:
    """Return ``(t as a float64 tensor, dtype to give results back in)``."""
    if isinstance(t, Tensor):
        out_dtype = t.dtype if t.is_floating_point() else torch.float64
        if t.device.type == "mps":  # no float64 there: stay in float32
            return t.to(torch.float32), out_dtype
        return t.to(torch.float64), out_dtype
    return torch.as_tensor(float(t), dtype=torch.float64), torch.float64


def check_time(t: Tensor, T: float, name: str = "t", rtol: float = 1e-9) -> None:
    """Raise ``ValueError`` if any time lies outside ``[0, T]`` (``T`` up to a relative ``rtol``).

    Only CPU tensors are checked: on an accelerator the check would force a device sync on the
    hot path, and solver grids are validated on the CPU before they reach the device.
    """
    if t.device.type != "cpu" or t.numel() == 0:
        return
    bad = ~torch.isfinite(t) | (t < 0) | (t > T * (1 + rtol) + 1e-12)
    if bool(bad.any()):
        value = t[bad].flatten()[0].item()
        raise ValueError(f"{name}={value!r} is outside the time interval [0, T={T}]")


def check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite positive number")
    return value


class Schedule(abc.ABC):
    """A noise schedule on ``[0, T]``.

    Subclasses implement the float64 primitives ``_log_alpha``, ``_sigma``, ``_beta``,
    ``_integral_beta``, ``_log_snr`` and ``_t_from_log_snr``; the public methods add dtype
    handling and range checks.

    Attributes:
        T: the end time.
        variance_preserving: whether ``alpha^2 + sigma^2 = 1`` (VP family) or ``alpha = 1`` (VE).
    """

    T: float = 1.0
    variance_preserving: bool = True

    # -- float64 primitives -------------------------------------------------------------------
    @abc.abstractmethod
    def _beta(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _integral_beta(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _log_snr(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _t_from_log_snr(self, lam: Tensor) -> Tensor: ...

    # -- public API ---------------------------------------------------------------------------
    def _eval(self, fn, t: TimeLike) -> Tensor:
        t64, dtype = as_float64(t)
        # T rounded to a float32 input can exceed T by half an ulp: accept that rounding
        rtol = max(1e-9, torch.finfo(dtype).eps) if isinstance(t, Tensor) else 1e-9
        check_time(t64, self.T, rtol=rtol)
        return fn(t64).to(dtype)

    def beta(self, t: TimeLike) -> Tensor:
        """The rate ``beta(t)`` (``g(t)^2`` of the schedule's native SDE)."""
        return self._eval(self._beta, t)

    def integral_beta(self, t: TimeLike) -> Tensor:
        """``int_0^t beta(s) ds``."""
        return self._eval(self._integral_beta, t)

    def log_alpha(self, t: TimeLike) -> Tensor:
        """``log alpha(t)``, the log of the mean coefficient."""
        return self._eval(self._log_alpha, t)

    def alpha(self, t: TimeLike) -> Tensor:
        """The mean coefficient ``alpha(t)`` of ``x_t = alpha x_0 + sigma eps``."""
        return self._eval(lambda s: torch.exp(self._log_alpha(s)), t)

    def sigma(self, t: TimeLike) -> Tensor:
        """The standard deviation ``sigma(t)`` of ``x_t = alpha x_0 + sigma eps``."""
        return self._eval(self._sigma, t)

    def log_snr(self, t: TimeLike) -> Tensor:
        """``lambda(t) = log(alpha(t) / sigma(t))``, strictly decreasing in t."""
        return self._eval(self._log_snr, t)

    def t_from_log_snr(self, lam: TimeLike) -> Tensor:
        """The inverse of :meth:`log_snr`: the time whose log-SNR is ``lam``."""
        lam64, dtype = as_float64(lam)
        if lam64.device.type == "cpu" and bool(torch.isnan(lam64).any()):
            raise ValueError("log-SNR lam contains NaN; expected real numbers")
        return self._t_from_log_snr(lam64).to(dtype)

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A JSON-able description from which :func:`schedules.from_config` rebuilds it."""

    def __repr__(self) -> str:
        cfg = self.to_config()
        name = cfg.pop("name")
        return f"{name}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_config().items())))
