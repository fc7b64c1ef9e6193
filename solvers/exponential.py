"""Few-step samplers of the probability-flow ODE: exponential integrators and EDM's Heun.

The data prediction (Tweedie) at time ``t`` is ``x0(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t``;
log-SNR ``lambda = log(alpha / sigma)``. A step goes from ``t`` to the next grid time ``s < t``
with ``h = lambda_s - lambda_t > 0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .registry import register
from .sampling import SolverContext


def _x0(ctx: SolverContext, x: Tensor, t: float, alpha: float, sigma: float) -> Tensor:
    """Tweedie's data prediction ``(x + sigma^2 score(x, t)) / alpha`` (one allocation)."""
    return torch.mul(ctx.score(x, t), sigma * sigma / alpha).add_(x, alpha=1.0 / alpha)


@register(
    "ddim",
    kind="ode",
    order=1.0,
    evals_per_step=1,
    default_grid="uniform",
    options={"eta": 0.0},
    reference="Song, Meng & Ermon 2021 (DDIM, eq. 12 and 16) = Lu et al. 2022 (DPM-Solver-1)",
)
def ddim(ctx: SolverContext, x: Tensor, eta: float = 0.0) -> Tensor:
    """DDIM; with ``eta = 0`` DPM-Solver-1, the exponential integrator of the PF-ODE. Order 1:

    ``x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) x0(x_t, t)``, equivalently
    ``x_s = (alpha_s / alpha_t) x_t - sigma_s (e^h - 1) eps_hat``. With ``eta > 0``
    (stochastic; ``eta = 1`` is the ancestral step with the posterior variance ``var``):
    ``std = eta sqrt(var)``, ``x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps_hat + std z``,
    ``eps_hat = (x_t - alpha_t x0) / sigma_t``.
    """
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not 0 <= eta <= 1:
        raise ValueError(f"eta={eta!r} must be a number in [0, 1] (0: ODE, 1: ancestral)")
    c = ctx.coefficients()
    var = ctx.posteriors()[2] if eta > 0 else [0.0] * (len(c.t) - 1)
    for i, (t, _s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        std = eta * math.sqrt(var[i])
        keep = math.sqrt(max(c.sigma[i + 1] ** 2 - std**2, 0.0)) / c.sigma[i]  # on x_t
        x0 = _x0(ctx, x, t, c.alpha[i], c.sigma[i])
        x = x0.mul_(c.alpha[i + 1] - keep * c.alpha[i]).add_(x, alpha=keep)
        if std > 0.0:
            x.add_(ctx.noise_like(x), alpha=std)
        ctx.done(x)
    return x


@register(
    "dpm_solver_pp_2m",
    kind="ode",
    order=2.0,
    evals_per_step=1,
    default_grid="log_snr",
    options={"lower_order_final": True},
    reference="Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), Algorithm 2 (2M)",
)
def dpm_solver_pp_2m(ctx: SolverContext, x: Tensor, lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M): multistep 2nd-order exponential integrator with data prediction.

    With ``x0_i = x0(x_i, t_i)``, ``h_i = lambda_{i+1} - lambda_i`` and ``r = h_{i-1} / h_i``:

    ``D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}`` (``D = x0_0`` at the first step),
    ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1) D``.

    The first step is first order (DPM-Solver-1). With ``lower_order_final`` and fewer than 10
    steps the last step is first order too (as the reference implementation: it stabilises
    very few steps towards a small ``t_end``). One score evaluation per step; order 2.
    """
    if not isinstance(lower_order_final, bool):
        raise ValueError(f"lower_order_final={lower_order_final!r} must be True or False")
    c = ctx.coefficients()
    n = len(c.t) - 1
    x0_prev: Tensor | None = None
    for i, (t, _s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        h = c.log_snr[i + 1] - c.log_snr[i]
        x0 = _x0(ctx, x, t, c.alpha[i], c.sigma[i])
        first_order = x0_prev is None or (lower_order_final and n < 10 and i == n - 1)
        if first_order:
            d = x0
        else:
            r = (c.log_snr[i] - c.log_snr[i - 1]) / h
            d = torch.mul(x0_prev, -0.5 / r).add_(x0, alpha=1.0 + 0.5 / r)
        x = torch.mul(d, -c.alpha[i + 1] * math.expm1(-h)).add_(
            x, alpha=c.sigma[i + 1] / c.sigma[i]
        )
        x0_prev = x0
        ctx.done(x)
    return x


@register(
    "edm_heun",
    kind="ode",
    order=2.0,
    evals_per_step=2,
    default_grid="karras",
    options={"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0},
    reference="Karras et al. 2022 (EDM), Algorithm 2",
)
def edm_heun(
    ctx: SolverContext,
    x: Tensor,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """EDM's Heun sampler in the noise level ``sigma~ = sigma_t / alpha_t`` and ``x~ = x / alpha_t``.

    The ODE is ``dx~/dsigma~ = (x~ - D(x~, sigma~)) / sigma~ = -sigma_t score(alpha_t x~, t)``.
    Per step ``i``: churn ``gamma = min(s_churn / N, sqrt(2) - 1)`` if ``s_tmin <= sigma~_i <=
    s_tmax`` (else 0), ``sigma^ = sigma~_i (1 + gamma)`` (capped at ``sigma~(T)``),
    ``x^ = x~ + sqrt(sigma^^2 - sigma~_i^2) s_noise z``; then Heun from ``sigma^`` to
    ``sigma~_{i+1}`` (``dsig = sigma~_{i+1} - sigma^``): ``x' = x^ + dsig d(x^)``,
    ``x~ <- x^ + dsig (d(x^) + d(x')) / 2``. Two evaluations per step; order 2
    without churn. Unlike Karras' grid, which ends with an Euler step to ``sigma = 0``, the grid
    ends at ``t_end > 0`` and ``sample``'s Tweedie step is that Euler step. With ``s_churn > 0``
    it is a stochastic sampler (Algorithm 2 proper; the spec's kind "ode" is for the default
    ``s_churn = 0``); it stays affine since ``gamma`` depends only on the grid.
    """
    for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}={v!r} must be a finite non-negative number")
    if not (isinstance(s_tmax, int | float) and s_tmax >= s_tmin):
        raise ValueError(f"s_tmax={s_tmax!r} must be a number >= s_tmin={s_tmin!r}")
    c = ctx.coefficients()
    n = len(c.t) - 1
    sig = [s / a for s, a in zip(c.sigma, c.alpha, strict=True)]  # sigma~ on the grid
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    x = x / c.alpha[0]
    for i, (t, s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t, scale=c.alpha[i])  # the hook sees x_t = alpha_t x~
        t_hat, a_hat, sigma_hat, sig_hat = t, c.alpha[i], c.sigma[i], sig[i]
        if gamma_max > 0 and s_tmin <= sig[i] <= s_tmax:
            target = min(sig[i] * (1.0 + gamma_max), sig[0])
            if target > sig[i]:
                lam = torch.tensor(-math.log(target), dtype=torch.float64)
                t_hat = min(max(float(ctx.sde.t_from_log_snr(lam)), t), ctx.times[0])
                a_hat, sigma_hat = ctx.marginal(t_hat)
                sig_hat = sigma_hat / a_hat
                if sig_hat > sig[i]:
                    x = x + math.sqrt(sig_hat**2 - sig[i] ** 2) * s_noise * ctx.noise_like(x)
        dsig = sig[i + 1] - sig_hat  # a step in sigma~, not in t
        d1 = torch.mul(ctx.score(x * a_hat, t_hat), -sigma_hat)
        x1 = torch.add(x, d1, alpha=dsig)
        d2 = torch.mul(ctx.score(x1.mul_(c.alpha[i + 1]), s), -c.sigma[i + 1])
        x = torch.add(x, d1.add_(d2), alpha=0.5 * dsig)
        ctx.done(x * c.alpha[i + 1] if ctx.callback is not None else x)
    return x * c.alpha[-1]
