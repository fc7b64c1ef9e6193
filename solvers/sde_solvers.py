"""Stochastic samplers of the reverse-time SDE ``dx = [f(x,t) - g(t)^2 score(x,t)] dt + g(t) dw-bar``.

Every step goes from ``t`` to the next grid time ``s < t``, a step of ``dt = t - s > 0`` backwards
in time. The processes are
linear, ``f(x, t) = f(t) x``, and every coefficient is a Python float computed in float64 once for
the whole grid, so the loops do no small-tensor arithmetic and no device syncs. The discrete
coefficients come from the process itself (``transition`` and ``posterior``), so VP, sub-VP and
VE need no type switch: for VP ``alpha_{t|s}^2 = 1 - beta_i`` and ``sigma_{t|s}^2 = beta_i``; for
VE ``alpha_{t|s} = 1`` and ``sigma_{t|s}^2 = sigma_t^2 - sigma_s^2``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .registry import register
from .resolve import check_choice_option
from .sampling import SolverContext

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral")
CORRECTORS = ("langevin", "none")


def _lin(x: Tensor, a: float, y: Tensor, b: float) -> Tensor:
    """``a x + b y`` with one allocation (``y`` is never modified)."""
    out = torch.mul(y, b)
    return out.add_(x, alpha=a) if a != 0.0 else out


def _add_noise(ctx: SolverContext, x: Tensor, std: float) -> Tensor:
    """``x + std z`` in place on ``x`` (a fresh tensor owned by the solver), ``z ~ N(0, I)``."""
    if std > 0.0:
        x.add_(ctx.noise_like(x), alpha=std)
    return x


@register(
    "euler_maruyama",
    kind="sde",
    order=1.0,
    evals_per_step=1,
    reference="Song et al. 2021 (score-SDE), Euler-Maruyama predictor",
)
def euler_maruyama(ctx: SolverContext, x: Tensor) -> Tensor:
    """Euler-Maruyama on the reverse SDE, from ``t`` to ``s < t`` with ``dt = t - s``:

    ``x <- x - dt [f(t) x - g(t)^2 score(x, t)] + g(t) sqrt(dt) z``,  ``z ~ N(0, I)``.
    Weak order 1 (additive noise).
    """
    c = ctx.coefficients()
    for i, (t, s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        dt = t - s
        x = _lin(x, 1.0 - dt * c.f[i], ctx.score(x, t), dt * c.g2[i])
        x = _add_noise(ctx, x, math.sqrt(dt * c.g2[i]))
        ctx.done(x)
    return x


# -- the single steps shared by the predictor-corrector and ancestral samplers ----------------------


def _ancestral_coefficients(ctx: SolverContext) -> list[tuple[float, float, float]]:
    """Per step ``(A, B, std)`` with ``x_s = A x_t + B score(x_t, t) + std z``.

    The step draws ``x_s ~ q(x_s | x_t, x0_hat)`` with Tweedie's ``x0_hat = (x_t + sigma_t^2
    score) / alpha_t``: ``A = c_t + c_0 / alpha_t``, ``B = c_0 sigma_t^2 / alpha_t``,
    ``std = sqrt(var)``.
    """
    c = ctx.coefficients()
    c_t, c_0, var = ctx.posteriors()
    return [
        (c_t[i] + c_0[i] / c.alpha[i], c_0[i] * c.sigma[i] ** 2 / c.alpha[i], math.sqrt(var[i]))
        for i in range(len(c_t))
    ]


@register(
    "ancestral",
    kind="sde",
    order=1.0,
    evals_per_step=1,
    reference="Ho et al. 2020 (DDPM, posterior variance); Song & Ermon 2019 / Song et al. 2021 (SMLD)",
)
def ancestral(ctx: SolverContext, x: Tensor) -> Tensor:
    """Ancestral sampling: ``x_s ~ q(x_s | x_t, x0_hat)``, ``x0_hat = (x + sigma_t^2 score) / alpha_t``.

    ``x_s = c_t x + c_0 x0_hat + sqrt(var) z`` with the Gaussian posterior of the process,
    ``c_t = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``c_0 = alpha_s sigma_{t|s}^2 / sigma_t^2``,
    ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``. For VP this is exactly DDPM's step with the
    posterior variance, ``x_s = (x + beta_i score) / sqrt(1 - beta_i) + sqrt(beta~_i) z``; for VE
    exactly SMLD's, ``x_s = x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_s^2 (sigma_t^2 -
    sigma_s^2) / sigma_t^2) z``. Weak order 1.
    """
    coefs = _ancestral_coefficients(ctx)
    for i, (t, _s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        a, b, std = coefs[i]
        x = _add_noise(ctx, _lin(x, a, ctx.score(x, t), b), std)
        ctx.done(x)
    return x


def _langevin(ctx: SolverContext, x: Tensor, t: float, snr: float, alpha: float) -> Tensor:
    """One Langevin corrector step at time ``t`` (Song et al. 2021, Algorithm 5):

    ``eps = 2 alpha (snr ||z|| / ||score||)^2``, ``x <- x + eps score + sqrt(2 eps) z``, with the
    norms per sample, averaged over the batch (as the reference code: the step size, and so each
    sample, depends on the batch).
    """
    grad = ctx.score(x, t)
    z = ctx.noise_like(x)
    b = x.shape[0]
    grad_norm = torch.linalg.vector_norm(grad.reshape(b, -1), dim=-1).mean()
    noise_norm = torch.linalg.vector_norm(z.reshape(b, -1), dim=-1).mean()
    eps = 2.0 * alpha * (snr * noise_norm / grad_norm) ** 2  # 0-dim tensor: no device sync
    return x + eps * grad + torch.sqrt(2.0 * eps) * z


def _pc_affine(options: dict[str, Any]) -> bool:
    return options["corrector"] == "none" or int(options["corrector_steps"]) == 0


@register(
    "predictor_corrector",
    kind="sde",
    order=1.0,
    evals_per_step=2,
    options={
        "predictor": "reverse_diffusion",
        "corrector": "langevin",
        "snr": 0.16,
        "corrector_steps": 1,
    },
    affine=False,
    affine_when=_pc_affine,
    reference="Song et al. 2021 (score-SDE), Algorithms 1-5",
)
def predictor_corrector(
    ctx: SolverContext,
    x: Tensor,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    corrector_steps: int = 1,
) -> Tensor:
    """Predictor-corrector sampling: each step a predictor from ``t`` to ``s``, then correctors at ``s``.

    Order: predictor first, then ``corrector_steps`` Langevin steps at the new time ``s`` (the
    paper's Algorithms 2 and 3; the reference code runs the corrector first, at ``t``). So the
    last correction acts at ``t_end``, on the state that is returned (or denoised). With the
    discrete kernel ``x_t = a x_s + sigma_{t|s} z`` (``a = alpha_{t|s}``) from
    ``process.transition(s, t)`` and ``dt = t - s``, the predictors are

    * ``euler_maruyama``: ``x <- (1 - dt f(t)) x + dt g(t)^2 score + sqrt(dt) g(t) z``;
    * ``reverse_diffusion``: ``x <- (2 - a) x + sigma_{t|s}^2 score + sigma_{t|s} z`` (VP:
      ``(2 - sqrt(1 - beta_i)) x + beta_i score + sqrt(beta_i) z``);
    * ``ancestral``: the posterior step of the ``ancestral`` solver;

    and the Langevin corrector uses ``alpha_i = a^2`` (VP: ``1 - beta_i``; VE: 1) in
    ``eps = 2 alpha_i (snr ||z|| / ||score||)^2``, ``x <- x + eps score + sqrt(2 eps) z``.
    ``snr = 0.16`` is the paper's VE CIFAR-10 value (its VP runs use 0.01). NFE per step:
    ``1 + corrector_steps``. With a corrector the sampler is not affine (the Langevin step size
    depends on the state).
    """
    check_choice_option("predictor", predictor, PREDICTORS)
    check_choice_option("corrector", corrector, CORRECTORS)
    if (
        isinstance(corrector_steps, bool)
        or not isinstance(corrector_steps, int)
        or corrector_steps < 0
    ):
        raise ValueError(f"corrector_steps={corrector_steps!r} must be a non-negative integer")
    if not (isinstance(snr, int | float) and math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr={snr!r} must be a positive number")
    c = ctx.coefficients()
    a_ts, sig_ts = ctx.transitions()
    anc = _ancestral_coefficients(ctx) if predictor == "ancestral" else None
    n_corr = corrector_steps if corrector == "langevin" else 0
    for i, (t, s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        score = ctx.score(x, t)
        if predictor == "euler_maruyama":
            dt = t - s
            x = _add_noise(
                ctx, _lin(x, 1.0 - dt * c.f[i], score, dt * c.g2[i]), math.sqrt(dt * c.g2[i])
            )
        elif predictor == "reverse_diffusion":
            x = _add_noise(ctx, _lin(x, 2.0 - a_ts[i], score, sig_ts[i] ** 2), sig_ts[i])
        else:
            a, b, std = anc[i]
            x = _add_noise(ctx, _lin(x, a, score, b), std)
        for _ in range(n_corr):
            x = _langevin(ctx, x, s, float(snr), a_ts[i] ** 2)
        ctx.done(x)
    return x
