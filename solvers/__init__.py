"""Samplers for score-based diffusion: the registry, the ``sample`` entry point and every solver.

Depends only on :mod:`schedules` and on the process protocol defined here
(:class:`DiffusionProcess`), never on training code.
"""

from . import ode_solvers, sde_solvers  # noqa: F401  (registers the built-in solvers)
from .parametrization import PREDICTIONS, convert, from_eps, to_eps, tweedie_denoise
from .protocol import DiffusionProcess, ScoreFn
from .registry import SolverSpec, available, get, register, unregister
from .sampling import NonFiniteScoreError, SampleResult, SampleStats, SolverContext, sample

__all__ = [
    "PREDICTIONS",
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
