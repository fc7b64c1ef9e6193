"""Samplers for score-based diffusion: the registry, the ``sample`` entry point and every solver.

Depends only on :mod:`schedules` and on the process protocol defined here
(:class:`DiffusionProcess`), never on training code.

Layout: ``protocol`` (what a solver may ask of a process, the score type, the probability-flow
velocity), ``registry`` (``@register``, ``get``), ``resolve`` (the one validation of a sampling
call: solver, options, steps, grid, ``t_end``), ``sampling`` (``sample`` and the
``SolverContext``), and the solvers: ``ode_solvers`` (Runge-Kutta on the probability-flow ODE),
``exponential`` (exponential integrators: DDIM, DPM-Solver++, and EDM's Heun), ``sde_solvers``
(reverse-SDE samplers) and ``torchsde_solvers`` (torchsde's integrators, and ``ReverseSDE``).

Names in every solver: a step goes from the grid time ``t`` to the next one ``s < t``;
``dt = t - s > 0`` is the step in ``t`` and ``h = lambda_s - lambda_t > 0`` the step in log-SNR
``lambda = log(alpha / sigma)``. The diffusion is called ``sde`` everywhere (``sample(sde, ...)``,
``ctx.sde``), whatever its type (:class:`DiffusionProcess` is the protocol it satisfies).
"""

from schedules.parametrization import PREDICTIONS, convert, from_eps, to_eps, tweedie_denoise

from . import (  # noqa: F401  (registers the built-in solvers)
    exponential,
    exponential_sde,
    multistep,
    ode_solvers,
    restart,
    sde_adaptive,
    sde_solvers,
    torchsde_solvers,
)
from .protocol import DiffusionProcess, ScoreFn, pf_velocity
from .registry import SolverSpec, available, get, register, unregister
from .resolve import Resolved, resolve
from .sampling import (
    Coefficients,
    NonFiniteScoreError,
    SampleResult,
    SampleStats,
    SolverContext,
    sample,
)
from .torchsde_solvers import ReverseSDE

__all__ = [
    "PREDICTIONS",
    "ReverseSDE",
    "Resolved",
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
    "pf_velocity",
    "register",
    "resolve",
    "sample",
    "to_eps",
    "tweedie_denoise",
    "unregister",
]
