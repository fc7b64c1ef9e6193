"""Restart sampling (Xu et al. 2023, arXiv:2306.14878): ODE steps plus re-noised restart intervals.

In the noise level ``sigma~ = sigma_t / alpha_t`` and ``x~ = x / alpha_t`` the forward kernel only
adds noise, ``x~_b = x~_a + sqrt(sigma~_b^2 - sigma~_a^2) z``, and the probability-flow ODE is
``dx~/dsigma~ = -sigma_t score(alpha_t x~, t)`` (EDM form).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .registry import register
from .sampling import SolverContext


def _heun(ctx: SolverContext, x: Tensor, t: float, s: float) -> Tensor:
    """One Heun step of the EDM-form ODE for ``x~`` from ``t`` to ``s < t`` (two evaluations)."""
    (a_t, sig_t), (a_s, sig_s) = ctx.marginal(t), ctx.marginal(s)
    ds = sig_s / a_s - sig_t / a_t
    d1 = torch.mul(ctx.score(x * a_t, t), -sig_t)
    x1 = torch.add(x, d1, alpha=ds)
    d2 = torch.mul(ctx.score(x1.mul_(a_s), s), -sig_s)
    return torch.add(x, d1.add_(d2), alpha=0.5 * ds)


def _time_at(ctx: SolverContext, noise_level: float) -> float:
    """The time whose ``sigma~`` is ``noise_level`` (through ``lambda = -log sigma~``)."""
    lam = torch.tensor(-math.log(noise_level), dtype=torch.float64)
    return float(ctx.sde.t_from_log_snr(lam))


def _check(name: str, v: float, integer: bool = False) -> None:
    if integer:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative integer")
    elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
        raise ValueError(f"{name}={v!r} must be a finite positive number")


@register(
    "restart",
    kind="sde",
    order=2.0,
    evals_per_step=None,
    default_grid="karras",
    options={"s_min": 0.06, "s_max": 0.30, "restarts": 2, "restart_steps": 3},
    reference="Xu et al. 2023, Restart sampling (arXiv:2306.14878), Algorithm 1",
)
def restart(
    ctx: SolverContext,
    x: Tensor,
    s_min: float = 0.06,
    s_max: float = 0.30,
    restarts: int = 2,
    restart_steps: int = 3,
) -> Tensor:
    """Restart: Heun on the probability-flow ODE along the grid, with ``restarts`` restarts.

    At the first grid time ``t_a`` with ``sigma~(t_a) <= s_min``, ``restarts`` times: jump
    forward with the exact kernel ``x~ <- x~ + sqrt(sigma~_b^2 - sigma~_a^2) z`` to ``t_b`` with
    ``sigma~(t_b) = s_max``, then integrate back to ``t_a`` with ``restart_steps`` Heun steps
    uniform in log-SNR. Then on along the grid. NFE: ``2 (steps + restarts restart_steps) + 1``.
    For an exact ODE the restarts leave ``p_{t_a}`` invariant and contract errors in the law
    (the forward noise is a contraction in total variation). Order 2, the order of Heun.
    """
    _check("s_min", s_min)
    _check("s_max", s_max)
    _check("restarts", restarts, integer=True)
    _check("restart_steps", restart_steps, integer=True)
    if s_max <= s_min:
        raise ValueError(f"s_max={s_max!r} must exceed s_min={s_min!r}")
    if restarts > 0 and restart_steps < 1:
        raise ValueError(f"restart_steps={restart_steps!r} must be >= 1 when restarts > 0")
    c = ctx.coefficients()
    sig = [s / a for s, a in zip(c.sigma, c.alpha, strict=True)]
    t_b = min(_time_at(ctx, s_max), ctx.times[0])
    a_index = next((i for i, v in enumerate(sig) if v <= s_min), None)
    x = x / c.alpha[0]
    for i, (t, s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t, scale=c.alpha[i])  # the hook sees x_t = alpha_t x~
        x = _heun(ctx, x, t, s)
        if i + 1 == a_index and t_b > s:
            sig_b = ctx.marginal(t_b)[1] / ctx.marginal(t_b)[0]
            lam_a, lam_b = c.log_snr[i + 1], ctx.log_snr(t_b)
            lams = torch.linspace(lam_b, lam_a, restart_steps + 1, dtype=torch.float64)
            back = ctx.sde.t_from_log_snr(lams).tolist()
            back[0], back[-1] = t_b, s
            for _ in range(restarts):
                x = x + math.sqrt(sig_b**2 - sig[i + 1] ** 2) * ctx.noise_like(x)
                for u, v in zip(back[:-1], back[1:], strict=True):
                    x = _heun(ctx, x, u, v)
        ctx.done(x * c.alpha[i + 1] if ctx.callback is not None else x)
    return x * c.alpha[-1]
