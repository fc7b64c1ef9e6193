"""Stochastic samplers of the reverse-time SDE ``dx = [f(x,t) - g(t)^2 score(x,t)] dt + g(t) dw-bar``."""

from __future__ import annotations

import math

from torch import Tensor

from .registry import register
from .sampling import SolverContext


@register(
    "euler_maruyama",
    kind="sde",
    order=1.0,
    evals_per_step=1,
    reference="Song et al. 2021 (score-SDE), Euler-Maruyama predictor",
)
def euler_maruyama(ctx: SolverContext, x: Tensor) -> Tensor:
    """Euler-Maruyama on the reverse SDE, from ``t`` to ``s < t`` with ``h = t - s``:

    ``x <- x - h [f(x, t) - g(t)^2 score(x, t)] + g(t) sqrt(h) z``,  ``z ~ N(0, I)``.
    Weak order 1 (additive noise).
    """
    for t, s in ctx.steps():
        h = t - s
        x = x - h * ctx.reverse_drift(x, t) + math.sqrt(ctx.g2(t) * h) * ctx.noise_like(x)
        ctx.done(x)
    return x
