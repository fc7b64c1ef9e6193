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
from .resolve import check_positive_option
from .sampling import SolverContext


def _locate(ctx: SolverContext, t: float) -> float:
    """Set ``ctx.step`` to the step of the caller's grid that contains ``t`` (for error messages
    and callbacks: the main path and the restarts do not follow the grid); returns ``t``."""
    times = ctx.times
    ctx.step = min(max(k for k in range(len(times)) if times[k] >= t), len(times) - 2)
    return t


def _heun(ctx: SolverContext, x: Tensor, t: float, s: float) -> Tensor:
    """One Heun step of the EDM-form ODE for ``x~`` from ``t`` to ``s < t`` (two evaluations)."""
    (a_t, sig_t), (a_s, sig_s) = ctx.marginal(t), ctx.marginal(s)
    ds = sig_s / a_s - sig_t / a_t
    d1 = torch.mul(ctx.score(x * a_t, _locate(ctx, t)), -sig_t)
    x1 = torch.add(x, d1, alpha=ds)
    d2 = torch.mul(ctx.score(x1.mul_(a_s), _locate(ctx, s)), -sig_s)
    return torch.add(x, d1.add_(d2), alpha=0.5 * ds)


def _time_at(ctx: SolverContext, noise_level: float) -> float:
    """The time whose ``sigma~`` is ``noise_level`` (through ``lambda = -log sigma~``)."""
    lam = torch.tensor(-math.log(noise_level), dtype=torch.float64)
    return float(ctx.sde.t_from_log_snr(lam))


def main_times(ctx: SolverContext, restarts: int, restart_steps: int) -> tuple[list[float], int]:
    """The main path's times and the number of restarts that fit ``steps`` Heun steps in all.

    ``restarts`` drops to ``(steps // 2) // restart_steps`` if needed, so restarts never take more
    than half of the steps (with fewer, the main path's few long steps dominate the error: on the
    VP ring at 9 NFE one main step plus one restart gave per-mode W2 76); the main path gets the
    remaining ``M = steps - restarts restart_steps`` steps, placed at the fractional indices
    ``j steps / M`` of the grid (linear in log-SNR between its points), so it keeps the grid's
    spacing.
    """
    steps = len(ctx.times) - 1
    if restart_steps > 0:
        restarts = min(restarts, (steps // 2) // restart_steps)
    m = steps - restarts * restart_steps
    lam = ctx.coefficients().log_snr
    times = []
    for j in range(m + 1):
        u = j * steps / m
        k = min(int(u), steps - 1)
        w = u - k
        if w == 0.0 or j == m:
            times.append(ctx.times[k] if w == 0.0 else ctx.times[-1])
        else:
            lam_u = torch.tensor((1 - w) * lam[k] + w * lam[k + 1], dtype=torch.float64)
            times.append(float(ctx.sde.t_from_log_snr(lam_u)))
    return times, restarts


def _check(name: str, v: float, integer: bool = False) -> None:
    if integer:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative integer")
    else:
        check_positive_option(name, v)


@register(
    "restart",
    kind="sde",
    order=2.0,
    evals_per_step=None,
    adaptive=True,
    affine=True,
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
    """Restart: Heun on the probability-flow ODE, with ``restarts`` restart intervals.

    ``steps`` counts every Heun step: the main path takes ``steps - restarts restart_steps`` of
    them along the grid (:func:`main_times`; fewer restarts if they do not fit). At the first
    main time ``t_a`` with ``sigma~(t_a) <= s_min``, ``restarts`` times: jump forward with the
    exact kernel ``x~ <- x~ + sqrt(sigma~_b^2 - sigma~_a^2) z`` to ``t_b`` with
    ``sigma~(t_b) = s_max``, then integrate back to ``t_a`` with ``restart_steps`` Heun steps
    uniform in log-SNR. NFE ``2 steps + 1``. Registered as adaptive (``evals_per_step=None``):
    its path leaves the caller's grid, so it takes no ``before_step`` hook and no fixed-step
    budget in the harness; it stays affine. For an exact ODE the restarts leave
    ``p_{t_a}`` invariant and contract errors in the law (the forward noise is a contraction in
    total variation). Order 2, the order of Heun.
    """
    _check("s_min", s_min)
    _check("s_max", s_max)
    _check("restarts", restarts, integer=True)
    _check("restart_steps", restart_steps, integer=True)
    if s_max <= s_min:
        raise ValueError(f"s_max={s_max!r} must exceed s_min={s_min!r}")
    if restarts > 0 and restart_steps < 1:
        raise ValueError(f"restart_steps={restart_steps!r} must be >= 1 when restarts > 0")
    times, restarts = main_times(ctx, restarts, restart_steps)
    c = ctx.coefficients(times)
    sig = [s / a for s, a in zip(c.sigma, c.alpha, strict=True)]
    t_b = min(_time_at(ctx, s_max), times[0])
    a_index = next((i for i, v in enumerate(sig) if v <= s_min), None)
    x = x / c.alpha[0]
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        ctx.t = _locate(ctx, t)
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
        ctx.done(x * c.alpha[i + 1] if ctx.callback is not None else x, s)
    return x * c.alpha[-1]
