"""The one resolver of a sampling call: solver spec and options, step count, time grid, ``t_end``.

:func:`solvers.sample` (and through it ``scoresde.guidance.inpaint``) and the accuracy harness
validate their arguments here, so each check and its error message exist once.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from schedules import time_grid

from .protocol import DiffusionProcess
from .registry import SolverSpec, get


@dataclass(frozen=True)
class Resolved:
    """A validated sampling call.

    Attributes:
        spec: the solver's :class:`SolverSpec`.
        options: the solver's options, defaults filled in.
        steps: the step count.
        grid: the float64 CPU time grid, strictly decreasing from ``T`` (or below) to ``t_end``.
        t_end: the truncation time (the grid's last time).
    """

    spec: SolverSpec
    options: dict[str, Any]
    steps: int
    grid: Tensor
    t_end: float


def check_options(
    spec: SolverSpec, options: Mapping[str, Any], extra: Collection[str] = ()
) -> None:
    """Raise if ``options`` names an option ``spec`` does not declare (nor one of ``extra``)."""
    unknown = set(options) - set(spec.options) - set(extra)
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "none"
        also = f" (and {', '.join(extra)})" if extra else ""
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for solver {spec.name!r}; "
            f"valid options: {valid}{also}"
        )


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    return steps


def check_t_end(sde: DiffusionProcess, t_end: float | None) -> float:
    """``t_end`` (default ``sde.default_t_end``) as a float in ``(0, T)``."""
    T = float(sde.T)
    t_end = float(sde.default_t_end if t_end is None else t_end)
    if not 0 < t_end < T:
        raise ValueError(f"t_end={t_end!r} must lie in (0, T={T})")
    return t_end


def check_positive_option(name: str, value: float) -> None:
    """A solver option that must be a finite positive number (a bool is not a number here)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name}={value!r} must be a finite positive number")


def check_choice_option(name: str, value: object, choices: Sequence[str]) -> None:
    """A solver option that must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(choices)}")


def check_tolerances(rtol: float, atol: float) -> None:
    """Error tolerances of an adaptive integrator: finite positive numbers."""
    check_positive_option("rtol", rtol)
    check_positive_option("atol", atol)


def explicit_grid(grid: Tensor | Sequence[float], T: float) -> Tensor:
    """An explicit grid as a float64 CPU tensor, checked: at least 2 strictly decreasing times
    within ``(0, T]``."""
    g = torch.as_tensor(grid, dtype=torch.float64).flatten().cpu()
    if g.numel() < 2:
        raise ValueError(f"an explicit grid needs at least 2 times, got {g.numel()}")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError("an explicit grid must be strictly decreasing (from T towards t_end)")
    if float(g[0]) > T * (1 + 1e-9) or float(g[-1]) <= 0:
        raise ValueError(
            f"grid runs from {float(g[0])} to {float(g[-1])}; expected within (0, {T}]"
        )
    return g


def resolve(
    sde: DiffusionProcess,
    solver: str,
    steps: int,
    grid: str | Tensor | Sequence[float] | None = None,
    t_end: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> Resolved:
    """Validate a sampling call and build its time grid.

    ``grid`` is a grid name (``uniform``, ``quadratic``, ``karras``, ``log_snr``), an explicit
    decreasing sequence of times (whose last time is then ``t_end``), or ``None`` for the
    solver's default grid. Unknown solvers and options raise with the valid ones listed.
    """
    spec = get(solver)
    options = dict(options or {})
    check_options(spec, options)
    steps = check_steps(steps)
    t_end = check_t_end(sde, t_end)
    T = float(sde.T)
    if grid is None:
        grid = spec.default_grid
    if isinstance(grid, str):
        grid_t = time_grid(grid, sde, steps, T, t_end)
    else:
        grid_t = explicit_grid(grid, T)
        t_end = float(grid_t[-1])
    return Resolved(spec, {**spec.options, **options}, steps, grid_t, t_end)
