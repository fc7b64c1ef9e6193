"""Noise schedules and time grids: pure math, float64-safe, no dependency on the rest."""

from typing import Any

from .base import Schedule, as_float64, check_time
from .grids import (
    GRIDS,
    karras_grid,
    log_snr_grid,
    quadratic_grid,
    time_grid,
    uniform_grid,
)
from .tabulated import TabulatedVP, VELinear
from .ve import VEGeometric
from .vp import CosineVP, LinearVP, VPSchedule

SCHEDULES: dict[str, type[Schedule]] = {
    "LinearVP": LinearVP,
    "CosineVP": CosineVP,
    "VEGeometric": VEGeometric,
    "TabulatedVP": TabulatedVP,
    "VELinear": VELinear,
}


def from_config(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_config`."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; available: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**config)


__all__ = [
    "GRIDS",
    "SCHEDULES",
    "CosineVP",
    "LinearVP",
    "Schedule",
    "TabulatedVP",
    "VEGeometric",
    "VELinear",
    "VPSchedule",
    "as_float64",
    "check_time",
    "from_config",
    "karras_grid",
    "log_snr_grid",
    "quadratic_grid",
    "time_grid",
    "uniform_grid",
]
