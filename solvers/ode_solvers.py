"""Deterministic samplers of the probability-flow ODE ``dx/dt = f(x,t) - g(t)^2 score(x,t) / 2``."""

from __future__ import annotations

from torch import Tensor

from .registry import register
from .sampling import SolverContext


@register("ode_euler", kind="ode", order=1.0, evals_per_step=1, reference="Euler's method")
def ode_euler(ctx: SolverContext, x: Tensor) -> Tensor:
    """Euler on the probability-flow ODE: ``x <- x + (s - t) v(x, t)``, ``v = f - g^2 score / 2``."""
    for t, s in ctx.steps():
        x = x + (s - t) * ctx.pf_drift(x, t)
        ctx.done(x)
    return x
