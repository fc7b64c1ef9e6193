"""Re-export of :mod:`schedules.parametrization` (the alpha/sigma conversions live below both
packages now); kept so ``solvers.parametrization.*`` imports keep working."""

from schedules.parametrization import (  # noqa: F401
    PREDICTIONS,
    broadcast_to,
    convert,
    from_eps,
    to_eps,
    tweedie_denoise,
)

__all__ = ["PREDICTIONS", "broadcast_to", "convert", "from_eps", "to_eps", "tweedie_denoise"]
