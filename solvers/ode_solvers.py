"""Deterministic samplers of the probability-flow ODE ``dx/dt = v(x, t) = f(t) x - g(t)^2 score(x, t) / 2``.

Fixed-step methods work on any grid; a step goes from ``t`` to the next grid time ``s < t``, a
step of ``dt = t - s > 0`` backwards in time. ``ode_adaptive`` hands the ODE to torchdiffeq.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .protocol import pf_velocity
from .registry import register
from .resolve import check_tolerances
from .sampling import SolverContext


def _velocity(ctx: SolverContext, x: Tensor, t: float, f: float, g2: float) -> Tensor:
    """``v(x, t) = f x - g^2 score(x, t) / 2`` (:func:`~solvers.protocol.pf_velocity`)."""
    return pf_velocity(x, ctx.score(x, t), f, g2)


@register("ode_euler", kind="ode", order=1.0, evals_per_step=1, reference="Euler's method")
def ode_euler(ctx: SolverContext, x: Tensor) -> Tensor:
    """Euler on the probability-flow ODE: ``x <- x - dt v(x, t)``, ``dt = t - s``. Order 1."""
    c = ctx.coefficients()
    for i, (t, s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        dt = t - s
        x = torch.add(x, _velocity(ctx, x, t, c.f[i], c.g2[i]), alpha=-dt)
        ctx.done(x)
    return x


@register(
    "ode_heun",
    kind="ode",
    order=2.0,
    evals_per_step=2,
    reference="Heun's method (explicit trapezoidal rule)",
)
def ode_heun(ctx: SolverContext, x: Tensor) -> Tensor:
    """Heun on the probability-flow ODE, ``dt = t - s``. Order 2:

    ``k1 = v(x, t)``, ``k2 = v(x - dt k1, s)``, ``x <- x - dt (k1 + k2) / 2``.
    """
    c = ctx.coefficients()
    for i, (t, s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        dt = t - s
        k1 = _velocity(ctx, x, t, c.f[i], c.g2[i])
        k2 = _velocity(ctx, torch.add(x, k1, alpha=-dt), s, c.f[i + 1], c.g2[i + 1])
        x = torch.add(x, k1.add_(k2), alpha=-0.5 * dt)
        ctx.done(x)
    return x


@register(
    "ode_rk4",
    kind="ode",
    order=4.0,
    evals_per_step=4,
    reference="the classical 4th-order Runge-Kutta method",
)
def ode_rk4(ctx: SolverContext, x: Tensor) -> Tensor:
    """Classical Runge-Kutta on the probability-flow ODE, ``dt = t - s``, ``m = (t + s) / 2``. Order 4:

    ``k1 = v(x, t)``, ``k2 = v(x - dt k1 / 2, m)``, ``k3 = v(x - dt k2 / 2, m)``,
    ``k4 = v(x - dt k3, s)``, ``x <- x - dt (k1 + 2 k2 + 2 k3 + k4) / 6``.
    """
    c = ctx.coefficients()
    mid = ctx.coefficients((ctx.grid[:-1] + ctx.grid[1:]) / 2)
    for i, (t, s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        dt = t - s
        k1 = _velocity(ctx, x, t, c.f[i], c.g2[i])
        k2 = _velocity(ctx, torch.add(x, k1, alpha=-0.5 * dt), mid.t[i], mid.f[i], mid.g2[i])
        k3 = _velocity(ctx, torch.add(x, k2, alpha=-0.5 * dt), mid.t[i], mid.f[i], mid.g2[i])
        k4 = _velocity(ctx, torch.add(x, k3, alpha=-dt), s, c.f[i + 1], c.g2[i + 1])
        k1.add_(k2.add_(k3), alpha=2.0).add_(k4)  # k1 + 2 k2 + 2 k3 + k4
        x = torch.add(x, k1, alpha=-dt / 6.0)
        ctx.done(x)
    return x


ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


class _PFVelocity(torch.nn.Module):
    """The probability-flow velocity for torchdiffeq, through ``ctx.score`` (NFE, NaN checks).

    torchdiffeq reports each accepted step ``t0 -> t0 - dt`` with the state ``y0`` at its start;
    the state at the end of step ``k`` is therefore reported at the start of step ``k + 1``, and
    the last one by the caller.
    """

    def __init__(self, ctx: SolverContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.accepted = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tf = float(t)
        c = self.ctx.coefficients([tf])
        return _velocity(self.ctx, x, tf, c.f[0], c.g2[0])

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        if self.accepted > 0:
            self.ctx.done(y0, float(t0))
        self.accepted += 1
        self.ctx.step = self.accepted


@register(
    "ode_adaptive",
    kind="ode",
    order=5.0,
    evals_per_step=None,
    adaptive=True,
    affine=False,
    options={"method": "dopri5", "rtol": 1e-5, "atol": 1e-5},
    reference="torchdiffeq.odeint (Dormand-Prince 5(4) by default); score-SDE uses RK45 at 1e-5",
)
def ode_adaptive(
    ctx: SolverContext, x: Tensor, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5
) -> Tensor:
    """The probability-flow ODE through ``torchdiffeq.odeint(v, x_T, [T, t_end])``.

    An embedded Runge-Kutta pair (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``,
    ``adaptive_heun``) keeps the local error below ``atol + rtol |x|`` (RMS norm over the whole
    batch, so the steps, and each sample, depend on the batch), starting from the step
    ``(T - t_end) / steps``; the state at ``t_end`` is its dense-output interpolant. Every score
    evaluation counts in NFE; ``stats.steps`` counts accepted steps. Not affine: the step sizes
    depend on the state. (Fixed-step methods are ``ode_euler``, ``ode_heun`` and ``ode_rk4``.)
    """
    import torchdiffeq

    if method not in ADAPTIVE_METHODS:
        raise ValueError(
            f"method={method!r}; expected one of {', '.join(ADAPTIVE_METHODS)} (for fixed steps "
            "use the ode_euler, ode_heun or ode_rk4 solvers)"
        )
    check_tolerances(rtol, atol)
    T, t_end = ctx.times[0], ctx.times[-1]
    span = torch.tensor([T, t_end], dtype=torch.float64, device=x.device)
    first_step = (T - t_end) / (len(ctx.times) - 1)
    out = torchdiffeq.odeint(
        _PFVelocity(ctx),
        x,
        span,
        method=method,
        rtol=float(rtol),
        atol=float(atol),
        # step_t: land exactly on t_end, so no stage is evaluated beyond it
        options={"first_step": first_step, "step_t": span[1:]},
    )[-1]
    ctx.done(out, t_end)
    return out
