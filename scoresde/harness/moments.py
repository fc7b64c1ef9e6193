"""Exact accuracy tools for solvers on Gaussian problems: no Monte-Carlo noise anywhere.

With a score that is affine in ``x`` (the exact score of a Gaussian target), every solver whose
``SolverSpec.affine`` holds maps the prior draw ``x_T`` and its own standard-normal noise draws
``z_1..z_K`` affinely to its output,

    out = A x_T + b + sum_k N_k z_k,

so with ``x_T ~ N(0, prior_std^2 I)`` the output is exactly Gaussian with

    mean = b,    cov = prior_std^2 A A^T + sum_k N_k N_k^T.

:func:`exact_output_moments` reads ``A``, ``b`` and the ``N_k`` off a few ``sample`` runs and
:func:`gaussian_w2` measures the distance to the target in closed form. :func:`gaussian_flow_map`
gives the exact probability-flow ODE solution for a Gaussian target (a per-sample oracle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import solvers
from solvers.protocol import DiffusionProcess, ScoreFn

from .metrics import ArrayLike, _f64


def exact_output_moments(
    sde: DiffusionProcess,
    score_fn: ScoreFn,
    dim: int,
    solver: str,
    steps: int,
    grid: Any = None,
    t_end: float | None = None,
    denoise: bool = True,
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """Exact mean and covariance (float64) of ``sample``'s output when ``x_T ~ p_T``.

    Requires an affine solver (``solvers.get(solver).is_affine(**options)``) and a score affine in
    ``x`` (e.g. a Gaussian target's exact score). Two float64 runs of :func:`solvers.sample`:

    1. the batch ``[0, e_1, ..., e_d]`` with every noise draw set to 0 gives
       ``b = out_0`` and ``A e_j = out_j - b``, and counts the noise draws ``K``;
    2. a batch of ``K d`` zero states in which noise draw ``k`` is the unit vector ``e_j`` in
       row ``(k, j)`` and 0 elsewhere gives the noise responses ``N_k e_j = out_{kj} - b``.

    Then ``mean = b`` and ``cov = prior_std^2 A A^T + sum_{k,j} (N_k e_j)(N_k e_j)^T``. Each
    sample of a batch must be computed independently of the others (true of every affine solver
    here).

    Args:
        sde: the process (its prior is ``N(0, prior_std^2 I)``).
        score_fn: ``(x, t) -> score``, affine in ``x``, float64-capable.
        dim: the state dimension ``d`` (states are ``(B, d)``).
        solver, steps, grid, t_end, denoise, options: as in :func:`solvers.sample`.

    Returns:
        ``(mean (d,), cov (d, d))`` as float64 CPU tensors.
    """
    spec = solvers.get(solver)
    if not spec.is_affine(**options):
        raise ValueError(
            f"solver {solver!r} with options {options} is not affine in the state and its noise "
            "(spec.affine is False), so its output moments cannot be propagated exactly; "
            "use Monte-Carlo sampling instead"
        )
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim={dim!r} must be a positive integer")
    prior_std = float(sde.prior_std)
    common = dict(solver=solver, steps=steps, grid=grid, t_end=t_end, denoise=denoise, **options)

    draws = 0

    def zero_noise(x: Tensor) -> Tensor:
        nonlocal draws
        draws += 1
        return torch.zeros_like(x)

    basis = torch.cat([torch.zeros(1, dim), torch.eye(dim)]).to(torch.float64)
    out, _ = solvers.sample(sde, score_fn, x_T=basis, noise_fn=zero_noise, **common)
    out = out.detach().to("cpu", torch.float64).reshape(dim + 1, -1)
    b, a_t = out[0], out[1:] - out[0]  # rows of a_t are A e_j, i.e. a_t = A^T
    cov = prior_std**2 * a_t.T @ a_t
    if draws == 0:
        return b, cov

    count = 0

    def impulse(x: Tensor) -> Tensor:
        nonlocal count
        if count >= draws:
            raise RuntimeError(
                f"solver {solver!r} drew more noise ({count + 1} draws) than in the probe run "
                f"({draws}): its noise draws are not deterministic"
            )
        z = torch.zeros_like(x)
        flat = z.view(z.shape[0], -1)
        rows = torch.arange(count * dim, (count + 1) * dim, device=z.device)
        flat[rows, torch.arange(dim, device=z.device)] = 1.0
        count += 1
        return z

    zeros = torch.zeros(draws * dim, dim, dtype=torch.float64)
    resp, _ = solvers.sample(sde, score_fn, x_T=zeros, noise_fn=impulse, **common)
    if count != draws:
        raise RuntimeError(
            f"solver {solver!r} drew {count} noise tensors, {draws} in the probe run"
        )
    resp = resp.detach().to("cpu", torch.float64).reshape(draws * dim, -1) - b
    return b, cov + resp.T @ resp


def gaussian_flow_map(
    sde: DiffusionProcess, mean: ArrayLike, cov: ArrayLike, t_from: float, t_to: float
) -> Callable[[Tensor], Tensor]:
    """The exact probability-flow ODE map ``x_{t_from} -> x_{t_to}`` for data ``N(mean, cov)``.

    The marginal covariances ``S_t = alpha_t^2 C + sigma_t^2 I`` share ``C``'s eigenvectors, so
    the flow is the linear map ``x_to = alpha_to m + S_to^{1/2} S_from^{-1/2} (x_from - alpha_from m)``.
    Returns a function of ``(B, d)`` tensors (computed in float64, returned in the input dtype).
    """
    m = torch.as_tensor(_f64(mean, "mean"))
    c = torch.as_tensor(_f64(cov, "cov"))
    w, v = torch.linalg.eigh(0.5 * (c + c.T))
    a0, s0 = (float(z) for z in sde.marginal(float(t_from)))
    a1, s1 = (float(z) for z in sde.marginal(float(t_to)))
    scale = torch.sqrt((a1**2 * w + s1**2) / (a0**2 * w + s0**2))
    mat = (v * scale) @ v.T

    def flow(x: Tensor) -> Tensor:
        x64 = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)
        out = a1 * m + (x64 - a0 * m) @ mat.T
        return out.to(device=x.device, dtype=x.dtype).reshape(x.shape)

    return flow


def exact_solution_moments(
    sde: DiffusionProcess,
    mean: ArrayLike,
    cov: ArrayLike,
    kind: str,
    t_end: float | None = None,
    denoise: bool = False,
) -> tuple[Tensor, Tensor]:
    """Exact law (float64 mean, covariance) of the *exact* reverse process started from the prior.

    For data ``N(m, C)``, ``S_t = alpha_t^2 C + sigma_t^2 I`` and a start ``x_T ~ N(0, P)`` with
    ``P = prior_std^2 I`` (not exactly ``p_T``), the reverse dynamics are linear and act in
    ``C``'s eigenbasis (``T`` the end time, ``t = t_end``):

    * ``kind="ode"`` (probability flow): ``x_t = alpha_t m + M (x_T - alpha_T m)`` with
      ``M = (S_t / S_T)^{1/2}``, so ``cov = M P M``;
    * ``kind="sde"`` (reverse SDE): the mean deviation decays by
      ``Phi = (S_t / S_T) (alpha_T / alpha_t)`` (from ``d log Phi/dt = f + g^2 / S``
      and ``dS/dt = 2 f S + g^2``), and ``cov = S_t + Phi (P - S_T) Phi``;
    * ``denoise``: then Tweedie's step ``x0 = (alpha_t C / S_t) x + (sigma_t^2 / S_t) m``.

    A solver's output law minus this one is its discretisation error alone (no truncation or
    prior-mismatch floor), the quantity whose convergence order the tests measure.
    """
    if kind not in ("ode", "sde"):
        raise ValueError(f"kind={kind!r}; expected 'ode' or 'sde'")
    m = torch.as_tensor(_f64(mean, "mean")).reshape(-1)
    c = torch.as_tensor(_f64(cov, "cov"))
    w, v = torch.linalg.eigh(0.5 * (c + c.T))
    prior_std = float(sde.prior_std)
    T = float(sde.T)
    t = float(sde.default_t_end if t_end is None else t_end)
    a_T, s_T = (float(z) for z in sde.marginal(T))
    a_t, s_t = (float(z) for z in sde.marginal(t))
    S_T, S_t = a_T**2 * w + s_T**2, a_t**2 * w + s_t**2
    mu = v.T @ m  # data mean in the eigenbasis
    P = prior_std**2
    if kind == "ode":
        M = torch.sqrt(S_t / S_T)
        mean_e = a_t * mu - M * a_T * mu
        var_e = M**2 * P
    else:
        phi = (S_t / S_T) * (a_T / a_t)
        mean_e = a_t * mu - phi * a_T * mu
        var_e = S_t + phi**2 * (P - S_T)
    if denoise:
        D = a_t * w / S_t
        mean_e = D * mean_e + (s_t**2 / S_t) * mu
        var_e = D**2 * var_e
    return v @ mean_e, (v * var_e) @ v.T
