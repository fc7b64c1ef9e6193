"""Exponential integrators of the reverse SDE family with data prediction (DPM-Solver++ SDE, SA-Solver).

In ``x~ = x / alpha`` and log-SNR ``lambda = log(alpha / sigma)``, with ``D(x, t) = (x + sigma^2
score) / alpha`` the data prediction, the family of reverse processes that share the marginals
``p_t`` is (Xue et al. 2023, eq. 7; ``eta = tau^2``)

    dx~ = (1 + eta) (D - x~) dlambda + sqrt(2 eta) e^{-lambda} dw,

``eta = 0`` the probability-flow ODE, ``eta = 1`` the reverse SDE. Over a step from ``t`` to ``s``
with ``h = lambda_s - lambda_t > 0`` and ``c = 1 + eta`` its linear part and noise are exact:

    x_s = (sigma_s / sigma_t) e^{-eta h} x_t + alpha_s int_0^h c e^{-c (h - u)} D(lambda_t + u) du
          + sigma_s sqrt(1 - e^{-2 eta h}) z,

and the integral of ``D`` is taken exactly over its Lagrange interpolant through earlier
(Adams-Bashforth predictor) or earlier and new (Adams-Moulton corrector) data predictions.
Every coefficient is a Python float computed in float64; the solvers are affine in ``x_T`` and
in their noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .exponential import _x0
from .registry import register
from .sampling import Coefficients, SolverContext


def _phi(k: int, a: float) -> float:
    """``J_k(a) = int_0^1 e^{-a (1 - v)} v^k dv`` for ``a > 0`` (series below 1: no cancellation)."""
    if a < 1.0:
        term, total, n = 1.0 / (k + 1), 0.0, 0
        while abs(term) > 1e-18 and n < 60:
            total += term
            n += 1
            term *= -a / (n + k + 1)
        return total
    j = -math.expm1(-a) / a
    for m in range(1, k + 1):
        j = (1.0 - m * j) / a
    return j


def _lagrange(nodes: list[float], j: int) -> list[float]:
    """Monomial coefficients (lowest first) of the Lagrange basis polynomial ``l_j`` over ``nodes``."""
    poly = [1.0]
    for m, v in enumerate(nodes):
        if m == j:
            continue
        scale = 1.0 / (nodes[j] - v)
        shifted = [0.0] + poly  # v * poly
        poly = [
            (shifted[k] - v * (poly[k] if k < len(poly) else 0.0)) * scale
            for k in range(len(shifted))
        ]
    return poly


def data_weights(c: Coefficients, i: int, nodes: list[int], eta: float) -> list[float]:
    """Weights ``w_j`` of ``D(x_{nodes[j]})`` in the step from grid time ``i`` to ``i + 1``:

    ``w_j = alpha_{i+1} c h int_0^1 e^{-c h (1 - v)} l_j(v) dv`` with ``c = 1 + eta`` and the
    nodes ``v_j = (lambda_{nodes[j]} - lambda_i) / h`` (``v = 0`` now, ``v = 1`` at the new time).
    """
    lam = c.log_snr
    h = lam[i + 1] - lam[i]
    a = (1.0 + eta) * h
    v = [(lam[n] - lam[i]) / h for n in nodes]
    phis = [_phi(k, a) for k in range(len(nodes))]
    return [
        c.alpha[i + 1] * a * sum(p * q for p, q in zip(_lagrange(v, j), phis, strict=True))
        for j in range(len(nodes))
    ]


def _check_eta(name: str, eta: float) -> None:
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not (0 <= eta < math.inf):
        raise ValueError(f"{name}={eta!r} must be a finite non-negative number")


def _check_order(name: str, order: int, low: int, high: int) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or not low <= order <= high:
        raise ValueError(f"{name}={order!r} must be an integer in [{low}, {high}]")


def _combine(x: Tensor, a: float, ds: list[Tensor], ws: list[float], z: Tensor | None, std: float):
    """``a x + sum_j w_j D_j + std z`` (one allocation)."""
    out = torch.mul(x, a)
    for d, w in zip(ds, ws, strict=True):
        out.add_(d, alpha=w)
    if z is not None:
        out.add_(z, alpha=std)
    return out


def midpoint_weights(c: Coefficients, i: int, eta: float) -> list[float]:
    """Lu et al.'s 2M weights on ``(D_i, D_{i-1})``: ``alpha_{i+1} (1 - e^{-c h}) (1 + 1/(2r),
    -1/(2r))`` with ``r = (lambda_i - lambda_{i-1}) / h`` (a midpoint rule for the linear term)."""
    lam = c.log_snr
    h = lam[i + 1] - lam[i]
    base = -c.alpha[i + 1] * math.expm1(-(1.0 + eta) * h)
    half_inv_r = 0.5 * h / (lam[i] - lam[i - 1])
    return [base * (1.0 + half_inv_r), -base * half_inv_r]


def stochastic_adams(
    ctx: SolverContext,
    x: Tensor,
    eta: float,
    predictor_order: int,
    corrector_order: int,
    midpoint: bool = False,
) -> Tensor:
    """The common loop: Adams-Bashforth predictor, optional Adams-Moulton corrector (see module).

    Step ``i`` uses the last ``min(predictor_order, i + 1)`` data predictions. With a corrector
    (``corrector_order > 0``), ``D`` evaluated at the predicted ``x_{i+1}`` corrects it with
    the same noise ``z`` over the nodes ``i + 1, i, ...`` (``corrector_order`` of them, at most
    ``i + 2``), and the next predictor reuses that evaluation (one evaluation per step). The
    last step is not corrected. ``midpoint`` replaces the two-node predictor's exact weights by
    :func:`midpoint_weights`.
    """
    c = ctx.coefficients()
    lam = c.log_snr
    keep = max(predictor_order, corrector_order)
    hist: list[Tensor] = []  # data predictions at grid times i, i - 1, ... (newest first)
    prev: tuple[Tensor, Tensor | None] | None = None  # (x_{i-1}, z_{i-1}) for the corrector
    for i, (t, _s) in enumerate(ctx.steps()):
        x = ctx.before_step(x, t)
        d = _x0(ctx, x, t, c.alpha[i], c.sigma[i])
        hist = [d, *hist][:keep]
        if prev is not None and corrector_order > 0:
            x_prev, z_prev = prev
            nodes = list(range(i, i - min(corrector_order, i + 1), -1))
            ws = data_weights(c, i - 1, nodes, eta)
            a, std = _decay_and_std(c, i - 1, eta, lam)
            x = _combine(x_prev, a, hist[: len(nodes)], ws, z_prev, std)
        nodes = list(range(i, i - min(predictor_order, i + 1), -1))
        ws = (
            midpoint_weights(c, i, eta)
            if midpoint and len(nodes) == 2
            else data_weights(c, i, nodes, eta)
        )
        a, std = _decay_and_std(c, i, eta, lam)
        z = ctx.noise_like(x) if std > 0.0 else None
        prev = (x, z)
        x = _combine(x, a, hist[: len(nodes)], ws, z, std)
        ctx.done(x)
    return x


def _decay_and_std(c: Coefficients, i: int, eta: float, lam: list[float]) -> tuple[float, float]:
    """``(sigma_{i+1} / sigma_i) e^{-eta h}`` and ``sigma_{i+1} sqrt(1 - e^{-2 eta h})``."""
    h = lam[i + 1] - lam[i]
    return c.sigma[i + 1] / c.sigma[i] * math.exp(-eta * h), c.sigma[i + 1] * math.sqrt(
        -math.expm1(-2.0 * eta * h)
    )


@register(
    "dpm_solver_pp_2m_sde",
    kind="sde",
    order=2.0,
    evals_per_step=1,
    default_grid="log_snr",
    options={"eta": 1.0, "solver_type": "midpoint"},
    reference="Lu et al. 2022, DPM-Solver++ (arXiv:2211.01095), SDE-DPM-Solver++(2M)",
)
def dpm_solver_pp_2m_sde(
    ctx: SolverContext, x: Tensor, eta: float = 1.0, solver_type: str = "midpoint"
) -> Tensor:
    """SDE-DPM-Solver++(2M): exponential integrator of the reverse SDE, linear data extrapolation.

    With ``D_i`` the data prediction at ``x_i``, ``h = lambda_{i+1} - lambda_i``,
    ``r = (lambda_i - lambda_{i-1}) / h``, ``c = 1 + eta`` and ``E = 1 - e^{-c h}``:
    ``x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + alpha_{i+1} [E D_i + k (D_i - D_{i-1})
    / r] + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z`` with ``k = E / 2`` (``solver_type="midpoint"``,
    Lu et al.'s form; with ``eta = 0`` exactly DPM-Solver++(2M)) or ``k = 1 - E / (c h)``
    (``"heun"``: the exact integral of the linear interpolant). The first step uses ``D_i``
    alone. ``eta = 1`` is the reverse SDE. Weak order 2 in the first two moments (measured on
    the exact Gaussian, every grid).
    """
    _check_eta("eta", eta)
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type={solver_type!r}; expected 'midpoint' or 'heun'")
    return stochastic_adams(ctx, x, float(eta), 2, 0, midpoint=solver_type == "midpoint")


@register(
    "dpm_solver_pp_3m_sde",
    kind="sde",
    order=2.0,
    evals_per_step=1,
    default_grid="log_snr",
    options={"eta": 1.0},
    reference="Lu et al. 2022 (DPM-Solver++ multistep); k-diffusion sample_dpmpp_3m_sde",
    # VP Gaussian, t_end = 1e-3, exact moments (tests/test_solver_orders.py): the mean error is
    # round-off at every N; the covariance error's order-2 and order-3 terms have opposite signs
    # on quadratic and karras grids, so it crosses zero near N = 32-64 (extrapolated 7.05 / -0.90
    # at 16-64 steps). At 128-512: 2.17 / 2.04 / 1.99 (quadratic / karras / log_snr), 3.62 on the
    # uniform grid (its order-3 term dominates up to ~1000 steps); 2.00-2.01 at 512-2048.
    order_steps=(128, 256, 512),
)
def dpm_solver_pp_3m_sde(ctx: SolverContext, x: Tensor, eta: float = 1.0) -> Tensor:
    """SDE-DPM-Solver++(3M): as ``dpm_solver_pp_2m_sde`` with a quadratic data interpolant.

    ``x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + sum_{j=0}^{2} w_j D_{i-j}
    + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z`` with ``w_j = alpha_{i+1} int_0^h c e^{-c (h - u)}
    l_j(u) du`` over the Lagrange basis through ``lambda_i, lambda_{i-1}, lambda_{i-2}``
    (fewer at the first steps). Order 3 for ``eta = 0``; for ``eta > 0`` weak order 2 in the
    first two moments (the noise caps it; measured on the exact Gaussian).
    """
    _check_eta("eta", eta)
    return stochastic_adams(ctx, x, float(eta), 3, 0)


@register(
    "sa_solver",
    kind="sde",
    order=2.0,
    evals_per_step=1,
    default_grid="log_snr",
    options={"tau": 1.0, "predictor_order": 3, "corrector_order": 3},
    reference="Xue et al. 2023, SA-Solver (arXiv:2309.05019), Algorithm 1",
    # as dpm_solver_pp_3m_sde (the covariance error crosses zero near N = 32 on quadratic and
    # karras grids: -0.47 / -10.4 at 16-64 steps); at 128-512: 2.05 / 2.06 / 2.01 (quadratic /
    # karras / log_snr), 3.45 on the uniform grid; 2.00 at 512-2048 (issue #15).
    order_steps=(128, 256, 512),
)
def sa_solver(
    ctx: SolverContext,
    x: Tensor,
    tau: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 3,
) -> Tensor:
    """SA-Solver: stochastic Adams predictor-corrector in data prediction, noise scale ``tau``.

    With ``eta = tau^2`` the predictor is ``x^p_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i +
    sum_j b_j D_{i-j} + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z`` (Adams-Bashforth over
    ``predictor_order`` past predictions); the corrector recomputes it from ``x_i`` with the same
    ``z`` and ``sum_j c_j D_{i+1-j}`` (Adams-Moulton over ``corrector_order`` nodes, the new one
    ``D(x^p_{i+1})`` included), whose evaluation the next step reuses: one evaluation per step.
    ``tau = 0`` is the deterministic UniPC-like ODE solver; ``tau = 1`` the reverse SDE.
    ``corrector_order = 0`` turns the corrector off. For ``tau > 0`` weak order 2 in the first
    two moments (measured on the exact Gaussian).
    """
    _check_eta("tau", tau)
    _check_order("predictor_order", predictor_order, 1, 4)
    _check_order("corrector_order", corrector_order, 0, 4)
    return stochastic_adams(ctx, x, float(tau) ** 2, predictor_order, corrector_order)
