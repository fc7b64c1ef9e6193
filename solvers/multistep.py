"""Higher-order multistep samplers of the probability-flow ODE: UniPC, DPM-Solver++(3M), iPNDM.

Each step costs one score evaluation; earlier evaluations are reused through the multistep
history (newest last). Notation as in the exponential integrators: log-SNR
``lambda = log(alpha / sigma)``, a step from ``t_i`` to ``t_{i+1} < t_i`` has
``h_i = lambda_{i+1} - lambda_i > 0``; the data prediction is Tweedie's
``x0 = (x + sigma^2 score) / alpha`` and the noise prediction ``eps = -sigma score``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .parametrization import tweedie_denoise
from .registry import register
from .resolve import check_choice_option
from .sampling import SolverContext

UNIPC_VARIANTS = ("bh1", "bh2")
UNIPC_PREDICTIONS = ("data", "noise")


def _check_order(order: object, highest: int) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= highest:
        raise ValueError(f"order={order!r} must be an integer in 1..{highest}")
    return order


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def _step_order(order: int, i: int, n: int, lower_order_final: bool) -> int:
    """Order of step ``i`` of ``n``: warm start ``i + 1``; with ``lower_order_final`` and fewer than
    10 steps, at most the number of steps left (the DPM-Solver reference's rule)."""
    p = min(order, i + 1)
    return min(p, n - i) if lower_order_final and n < 10 else p


def _solve(rows: Sequence[Sequence[float]], rhs: Sequence[float]) -> list[float]:
    """Solve the small linear system ``rows @ w = rhs`` in float64."""
    a = torch.tensor(rows, dtype=torch.float64)
    return torch.linalg.solve(a, torch.tensor(rhs, dtype=torch.float64)).tolist()


def _combine(terms: Sequence[tuple[float, Tensor]]) -> Tensor:
    """``sum_k w_k y_k`` for ``terms = [(w_k, y_k), ...]``."""
    (w0, y0), *rest = terms
    out = torch.mul(y0, w0)
    for w, y in rest:
        out.add_(y, alpha=w)
    return out


# ------------------------------------------------------------------------------------------------
# DPM-Solver++(3M)
# ------------------------------------------------------------------------------------------------
@register(
    "dpm_solver_pp_3m",
    kind="ode",
    order=3.0,
    evals_per_step=1,
    default_grid="log_snr",
    options={"lower_order_final": True},
    reference="Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), multistep order 3 (3M)",
)
def dpm_solver_pp_3m(ctx: SolverContext, x: Tensor, lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(3M): multistep 3rd-order exponential integrator with data prediction.

    With ``x0_i = x0(x_i, t_i)``, ``r0 = h_{i-1} / h_i``, ``r1 = h_{i-2} / h_i``,
    ``D1_0 = (x0_i - x0_{i-1}) / r0``, ``D1_1 = (x0_{i-1} - x0_{i-2}) / r1``:

    ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)``, ``D2 = (D1_0 - D1_1) / (r0 + r1)``,
    ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (phi_1 x0_i + phi_2 D1 + phi_3 D2)``

    with ``phi_1 = 1 - e^{-h}``, ``phi_2 = 1 - phi_1 / h``, ``phi_3 = 1 - 2 (h - phi_1) / h^2``
    (``D1 ~ h x0'`` and ``D2 ~ h^2 x0'' / 2``, so ``phi_3 D2`` is the exact integral of the
    quadratic term; the public implementations weight ``D2`` by half of this, which leaves an
    ``O(h^3)`` local error and makes their 3M second order).
    Warm start: the first step is DPM-Solver-1, the second DPM-Solver++(2M)
    (``x0_i + (x0_i - x0_{i-1}) / (2 r0)`` in place of ``x0_i``). With ``lower_order_final`` and
    fewer than 10 steps, the last two steps drop to orders 1 and 2 (as the reference). Order 3.
    """
    _check_flag("lower_order_final", lower_order_final)
    c = ctx.coefficients()
    lam = c.log_snr
    n = len(c.t) - 1
    hist: list[Tensor] = []
    for i, (t, _s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        hist = [*hist[-2:], tweedie_denoise(x, ctx.score(x, t), c.alpha[i], c.sigma[i])]
        p = _step_order(3, i, n, lower_order_final)
        h = lam[i + 1] - lam[i]
        phi1 = -math.expm1(-h)
        terms = [(c.sigma[i + 1] / c.sigma[i], x), (c.alpha[i + 1] * phi1, hist[-1])]
        if p == 2:  # D = x0_i + (x0_i - x0_{i-1}) / (2 r0)
            w = c.alpha[i + 1] * phi1 * 0.5 * h / (lam[i] - lam[i - 1])
            terms += [(w, hist[-1]), (-w, hist[-2])]
        elif p == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            phi2, phi3 = 1.0 - phi1 / h, 1.0 - 2.0 * (h - phi1) / (h * h)
            # D1 and D2 as combinations of x0_i, x0_{i-1}, x0_{i-2}
            a0, a1 = (
                1.0 / r0,
                1.0 / r1,
            )  # D1_0 = a0 (x0_i - x0_{i-1}), D1_1 = a1 (x0_{i-1} - x0_{i-2})
            d1 = (a0 * (1 + r0 / (r0 + r1)), -a0 * (1 + r0 / (r0 + r1)) - a1 * r0 / (r0 + r1))
            d1 = (*d1, a1 * r0 / (r0 + r1))
            d2 = (a0 / (r0 + r1), -(a0 + a1) / (r0 + r1), a1 / (r0 + r1))
            for k, y in enumerate((hist[-1], hist[-2], hist[-3])):
                terms.append((c.alpha[i + 1] * (phi2 * d1[k] + phi3 * d2[k]), y))
        x = _combine(terms)
        ctx.done(x)
    return x


# ------------------------------------------------------------------------------------------------
# UniPC
# ------------------------------------------------------------------------------------------------
def _unipc_weights(r: Sequence[float], hh: float, b_h: float) -> list[float]:
    """UniPC's ``rho``: solve ``sum_j rho_j r_j^(k-1) = psi_k(hh) k! / B(h)`` for ``k = 1..K``.

    ``psi_1 = (e^hh - 1) / hh - 1``, ``psi_{k+1} = psi_k / hh - 1 / (k+1)!``. For ``K = 1`` the
    reference implementation takes ``rho = 1/2`` (the limit ``h -> 0``), and so do we.
    """
    if len(r) == 1:
        return [0.5]
    psi, fact, rhs = math.expm1(hh) / hh - 1.0, 1.0, []
    for k in range(1, len(r) + 1):
        rhs.append(psi * fact / b_h)
        fact *= k + 1
        psi = psi / hh - 1.0 / fact
    return _solve([[rj ** (k - 1) for rj in r] for k in range(1, len(r) + 1)], rhs)


def _unipc_step(
    x: Tensor,
    outs: Sequence[Tensor],
    lams: Sequence[float],
    lam_next: float,
    scale: float,
    weight: float,
    data: bool,
    variant: str,
    new: Tensor | None = None,
) -> Tensor:
    """One UniP step from ``lams[-1]`` to ``lam_next`` with the model outputs ``outs`` (at
    ``lams``), or with ``new`` (the output at ``lam_next``) the UniC correction of that step.

    ``x_next = scale x - weight (e^hh - 1) m_0 - weight B(h) sum_j rho_j D_j`` with
    ``D_j = (m_j - m_0) / r_j``, ``r_j = (lambda_j - lambda_0) / h`` (``D = m_new - m_0``, ``r = 1``
    for the corrector), ``hh = -h`` for data and ``h`` for noise prediction,
    ``B(h) = hh`` (bh1) or ``e^hh - 1`` (bh2).
    """
    h = lam_next - lams[-1]
    hh = -h if data else h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    m0 = outs[-1]
    r = [(lj - lams[-1]) / h for lj in lams[-2::-1]]
    diffs = [(1.0 / rj, mj) for rj, mj in zip(r, outs[-2::-1], strict=True)]
    if new is not None:
        r, diffs = [*r, 1.0], [*diffs, (1.0, new)]
    terms = [(scale, x), (-weight * math.expm1(hh), m0)]
    if diffs:
        rho = _unipc_weights(r, hh, b_h)
        for rho_j, (inv_r, mj) in zip(rho, diffs, strict=True):
            w = -weight * b_h * rho_j * inv_r
            terms += [(w, mj), (-w, m0)]
    return _combine(terms)


@register(
    "unipc",
    kind="ode",
    order=3.0,
    evals_per_step=1,
    default_grid="log_snr",
    options={"order": 2, "variant": "bh2", "prediction": "data", "lower_order_final": True},
    reference="Zhao et al. 2023, UniPC (arXiv:2302.04867), UniP-p predictor + UniC-p corrector",
    # measured on the VP Gaussian at t_end = 1e-3 (tests/test_solver_orders.py): 2.98 / 3.01 /
    # 3.12 (quadratic / karras / log_snr) at 16-64 steps, 3.00 on all three at 64-256
    order_exceptions={
        "uniform": (
            2.4,
            "measured 2.40 at 16-64 and 2.39 at 32-128 steps (2.40 at 64-256): the last step has "
            "no corrector (no evaluation follows it), as in the reference, and on a grid uniform "
            "in t at t_end=1e-3 its log-SNR span shrinks only like log N",
        )
    },
)
def unipc(
    ctx: SolverContext,
    x: Tensor,
    order: int = 2,
    variant: str = "bh2",
    prediction: str = "data",
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC: the UniP-p multistep predictor and the UniC-p corrector, one evaluation per step.

    ``order`` is the predictor's ``p`` (1..3, as the reference's ``order`` and diffusers'
    ``solver_order``); UniC raises each step to order ``p + 1``, so the run has order
    ``p + 1`` (declared 3 for the default ``p = 2``).

    With model outputs ``m_j`` (``prediction="data"``: ``x0``; ``"noise"``: ``eps``) at
    ``lambda_j``, from ``x_i`` to ``lambda_{i+1}`` (``h = lambda_{i+1} - lambda_i``):

    ``x_{i+1} = c x_i - w (e^hh - 1) m_i - w B(h) sum_{j=1}^{p-1} rho_j (m_{i-j} - m_i) / r_j``,

    ``r_j = (lambda_{i-j} - lambda_i) / h``, and for data (noise) prediction ``hh = -h`` (``h``),
    ``c = sigma_{i+1} / sigma_i`` (``alpha_{i+1} / alpha_i``), ``w = alpha_{i+1}`` (``sigma_{i+1}``);
    ``B(h) = hh`` (``variant="bh1"``) or ``e^hh - 1`` (``"bh2"``); ``rho`` solves
    ``sum_j rho_j r_j^(k-1) = k! psi_k(hh) / B(h)``, ``psi_1 = (e^hh - 1) / hh - 1``,
    ``psi_{k+1} = psi_k / hh - 1/(k+1)!`` (``rho = 1/2`` for a single term). UniC: the next
    step's evaluation ``m_{i+1}`` (made at the predicted ``x_{i+1}``, then reused by the
    predictor, so no extra evaluation) enters the same formula from ``x_i`` as one more term with
    ``r = 1``, giving the corrected ``x_{i+1}``; no correction after the last step.
    Warm start: step ``i`` has order ``min(p, i + 1)``; with ``lower_order_final`` also at most
    ``n + 1 - i`` (the final denoising step counted as step ``n``, as the reference), so the
    last step is UniP-2 at most.
    """
    _check_order(order, 3)
    check_choice_option("variant", variant, UNIPC_VARIANTS)
    check_choice_option("prediction", prediction, UNIPC_PREDICTIONS)
    _check_flag("lower_order_final", lower_order_final)
    data = prediction == "data"
    c = ctx.coefficients()
    lam = c.log_snr
    n = len(c.t) - 1
    a, w = (c.sigma, c.alpha) if data else (c.alpha, c.sigma)  # c = a_{i+1} / a_i, w = w_{i+1}
    outs: list[Tensor] = []
    x_prev, p_prev = x, 0
    for i, (t, _s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)  # the predicted x_i: the model is evaluated here
        score = ctx.score(x, t)
        m = tweedie_denoise(x, score, c.alpha[i], c.sigma[i]) if data else score * -c.sigma[i]
        if outs:  # UniC: correct x_i with the evaluation just made at the predicted x_i
            lams, ratio = lam[i - p_prev : i], a[i] / a[i - 1]
            x = _unipc_step(x_prev, outs[-p_prev:], lams, lam[i], ratio, w[i], data, variant, m)
        outs = [*outs[max(0, len(outs) - order + 1) :], m]  # the last ``order`` outputs
        p = min(order, i + 1, n + 1 - i) if lower_order_final else min(order, i + 1)
        x_prev, p_prev = x, p
        lams, ratio = lam[i - p + 1 : i + 1], a[i + 1] / a[i]
        x = _unipc_step(x, outs[-p:], lams, lam[i + 1], ratio, w[i + 1], data, variant)
        ctx.done(x)
    return x


# ------------------------------------------------------------------------------------------------
# iPNDM
# ------------------------------------------------------------------------------------------------
def _adams_bashforth_weights(nodes: Sequence[float]) -> list[float]:
    """``beta_j = int_0^1 l_j(tau) d tau`` for the Lagrange basis on ``nodes`` (``nodes[0] = 0``):
    solve ``sum_j beta_j tau_j^m = 1 / (m + 1)``, ``m = 0..K-1``."""
    k = len(nodes)
    return _solve([[tau**m for tau in nodes] for m in range(k)], [1.0 / (m + 1) for m in range(k)])


@register(
    "ipndm",
    kind="ode",
    order=4.0,
    evals_per_step=1,
    default_grid="karras",
    options={"order": 4},
    reference="Zhang & Chen 2023 (DEIS, arXiv:2204.13902), improved PNDM; variable-step form",
    # order=1, 2, 3 measure 1.00, 1.97-2.01, 2.87-3.02 on every grid at 16-64 steps
    order_option="order",
    # measured on the VP Gaussian at t_end = 1e-3 (tests/test_solver_orders.py): 4.02 / 3.93
    # (karras / log_snr) at 16-64 steps, 4.00 / 3.98 at 64-256. On uniform and quadratic grids the
    # warm start (orders 1, 2, 3 on the first steps, as the reference) leaves a global term of
    # lower order, small because the flow is nearly linear at the high noise where those steps
    # run: local slope 3.62 / 3.15 at 256-512 / 512-1024 steps on the uniform grid, while the
    # same update with an RK4 warm start measures 4.00 there (issue #15).
    order_exceptions={
        "uniform": (
            3.8,
            "warm start at orders 1-3; measured 3.79 / 3.91 / 3.82 at 16-64 / 32-128 / 64-256 steps",
        ),
        "quadratic": (
            3.8,
            "warm start at orders 1-3; measured 3.69 / 3.85 / 3.84 at 16-64 / 32-128 / 64-256 steps",
        ),
    },
)
def ipndm(ctx: SolverContext, x: Tensor, order: int = 4) -> Tensor:
    """iPNDM: Adams-Bashforth in the noise level ``s = sigma / alpha`` with lower-order warm start.

    In ``y = x / alpha`` the probability flow is ``dy/ds = eps(x, t) = -sigma_t score(x, t)``;
    with ``k = min(order, i + 1)`` past evaluations,

    ``y_{i+1} = y_i + (s_{i+1} - s_i) sum_{j<k} beta_j eps_{i-j}``,
    ``beta_j = int_0^1 l_j(tau) d tau``

    for the Lagrange basis ``l_j`` on ``tau_j = (s_{i-j} - s_i) / (s_{i+1} - s_i)``. On steps
    uniform in ``s`` these are the fixed coefficients of the paper (``(3, -1)/2``,
    ``(23, -16, 5)/12``, ``(55, -59, 37, -9)/24``); on any other grid the fixed coefficients are
    only second order, so the weights follow the actual steps. Order ``order`` (1..4).
    """
    _check_order(order, 4)
    c = ctx.coefficients()
    s = [sig / a for sig, a in zip(c.sigma, c.alpha, strict=True)]
    y = x / c.alpha[0]
    eps: list[Tensor] = []
    for i, (t, _t_next) in enumerate(ctx.steps()):
        y = ctx.before_step(y, t, scale=c.alpha[i])  # the hook sees x_t = alpha_t y
        e = torch.mul(ctx.score(y * c.alpha[i], t), -c.sigma[i])
        eps = [*eps[max(0, len(eps) - order + 1) :], e]  # the last ``order`` evaluations
        ds = s[i + 1] - s[i]
        k = len(eps)
        beta = _adams_bashforth_weights([(s[i - j] - s[i]) / ds for j in range(k)])
        y = _combine([(1.0, y), *((ds * b, e) for b, e in zip(beta, reversed(eps), strict=True))])
        ctx.done(y * c.alpha[i + 1] if ctx.callback is not None else y)
    return y * c.alpha[-1]
