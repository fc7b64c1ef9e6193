"""Adaptive reverse-SDE integration with error control (Jolicoeur-Martineau et al. 2021).

"Gotta go fast when generating data with score-based models" (arXiv:2105.14080), Algorithm 1:
an Euler-Maruyama / improved-Euler pair sharing one Gaussian increment, a mixed
absolute/relative tolerance, accept/reject, and per-sample step sizes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .registry import register
from .sampling import SolverContext

MAX_ITERATIONS = 100_000


def _positive(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
        raise ValueError(f"{name}={v!r} must be a finite positive number")


@register(
    "sde_adaptive",
    kind="sde",
    order=1.0,
    evals_per_step=None,
    adaptive=True,
    options={"rtol": 0.05, "atol": 0.0078, "safety": 0.9, "exponent": 0.9},
    reference="Jolicoeur-Martineau et al. 2021 (Gotta go fast), Algorithm 1",
)
def sde_adaptive(
    ctx: SolverContext,
    x: Tensor,
    rtol: float = 0.05,
    atol: float = 0.0078,
    safety: float = 0.9,
    exponent: float = 0.9,
) -> Tensor:
    """Adaptive reverse SDE: Euler-Maruyama ``x'`` and improved Euler ``x''`` with the same ``z``.

    From ``t`` to ``s = t - h`` with ``b(x, t) = f(t) x - g(t)^2 score(x, t)``:
    ``x' = x - h b(x, t) + g(t) sqrt(h) z``, ``x~ = x - h b(x', s) + g(s) sqrt(h) z``,
    ``x'' = (x' + x~) / 2``. Per sample, ``E = ||(x' - x'') / delta||_2 / sqrt(n)`` with
    ``delta = max(atol, rtol max(|x'|, |x'_prev|))`` (elementwise, ``x'_prev`` the last accepted
    ``x'``); the step is accepted if ``E <= 1`` (then ``x <- x''``), and in either case
    ``h <- min(t - t_end, safety h E^(-exponent))``. A rejected step retries with the same
    standard-normal ``z`` (the increment is ``sqrt(h) z`` for the new ``h``): the noise is
    never redrawn until the step is accepted, so rejection does not select easy noise. The first
    step is ``T - t_1`` of the grid (``steps`` is a hint). Two evaluations per attempt, the
    whole batch evaluated together; ``stats.accepted`` and ``stats.rejected`` are per-sample
    means. Weak order 1 (the accepted value is the improved-Euler one). Known limitation: the
    rescaled reuse of ``z`` makes the accepted step size depend on ``z``, which biases the law
    where ``g`` varies fast (VE: covariance ~8% too large at ``rtol=0.01``, BENCHMARKS.md);
    a Brownian-bridge split of the rejected increment would remove it.
    """
    for name, v in (("rtol", rtol), ("atol", atol), ("safety", safety), ("exponent", exponent)):
        _positive(name, v)
    times = ctx.times
    t_end = times[-1]
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    t = torch.full((b,), times[0], dtype=torch.float64)
    h = torch.full((b,), times[0] - times[1], dtype=torch.float64)
    accepted = torch.zeros(b, dtype=torch.float64)
    rejected = torch.zeros(b, dtype=torch.float64)
    x_prev = x.abs()
    z = ctx.noise_like(x)
    fresh = torch.zeros(b, dtype=torch.bool)
    n = x[0].numel()

    def coefs(tt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = ctx.sde.drift_coef(tt).to(torch.float64)
        g2 = ctx.sde.diffusion(tt).to(torch.float64) ** 2
        return tuple(c.to(x.dtype).to(x.device).view(view) for c in (f, g2, g2.sqrt()))

    for _ in range(MAX_ITERATIONS):
        active = t > t_end
        if not bool(active.any()):
            break
        remaining = t - t_end
        h = torch.where(active, torch.minimum(h, remaining), torch.zeros_like(h))
        s = torch.where(h >= remaining, torch.full_like(t, t_end), t - h)
        if bool(fresh.any()):
            z = torch.where(fresh.to(x.device).view(view), ctx.noise_like(x), z)
        hx = h.to(x.dtype).to(x.device).view(view)
        f_t, g2_t, g_t = coefs(t)
        f_s, g2_s, g_s = coefs(s)
        noise_t = (g_t * hx.sqrt()) * z
        x1 = x - hx * (f_t * x - g2_t * ctx.score(x, t.to(x.device))) + noise_t
        x2 = 0.5 * (
            x1 + x - hx * (f_s * x1 - g2_s * ctx.score(x1, s.to(x.device))) + g_s * hx.sqrt() * z
        )
        delta = torch.clamp(rtol * torch.maximum(x1.abs(), x_prev), min=atol)
        err = (
            ((x1 - x2) / delta).reshape(b, -1).pow(2).sum(1).div(n).sqrt().to("cpu", torch.float64)
        )
        ok = active & (err <= 1.0)
        okd = ok.to(x.device).view(view)
        x = torch.where(okd, x2, x)
        x_prev = torch.where(okd, x1.abs(), x_prev)
        t = torch.where(ok, s, t)
        accepted += ok
        rejected += active & ~ok
        h = safety * h * err.clamp_min(1e-12).pow(-exponent)
        fresh = ok
        ctx.done(x, float(t.max()))
    else:
        raise RuntimeError(
            f"sde_adaptive did not reach t_end={t_end} in {MAX_ITERATIONS} attempts "
            f"(rtol={rtol}, atol={atol}); loosen the tolerances"
        )
    ctx.accepted = float(accepted.mean())
    ctx.rejected = float(rejected.mean())
    return x
