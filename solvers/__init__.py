"""Samplers for score-based diffusion: the registry, the ``sample`` entry point and every solver.

Depends only on :mod:`schedules` and on the process protocol defined here
(:class:`DiffusionProcess`), never on training code.
"""

from schedules.parametrization import PREDICTIONS, convert, from_eps, to_eps, tweedie_denoise

from . import (  # noqa: F401  (registers the built-in solvers)
    exponential,
    exponential_sde,
    ode_solvers,
    restart,
    sde_adaptive,
    sde_solvers,
    torchsde_solvers,
)
from .protocol import DiffusionProcess, ScoreFn
from .registry import SolverSpec, available, get, register, unregister
from .sampling import (
    Coefficients,
    NonFiniteScoreError,
    SampleResult,
    SampleStats,
    SolverContext,
    sample,
)

__all__ = [
    "PREDICTIONS",
    "Coefficients",
    "DiffusionProcess",
    "NonFiniteScoreError",
    "SampleResult",
    "SampleStats",
    "ScoreFn",
    "SolverContext",
    "SolverSpec",
    "available",
    "convert",
    "from_eps",
    "get",
    "register",
    "sample",
    "to_eps",
    "tweedie_denoise",
    "unregister",
]
