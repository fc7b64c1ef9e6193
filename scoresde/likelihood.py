"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, app. D.2).

The probability-flow ODE ``dx/dt = v(x, t) = f(x, t) - g(t)^2 score(x, t) / 2`` transports the
model's density; along one of its trajectories the instantaneous change of variables gives
``d/dt log p_t(x_t) = -div v(x_t, t)``. Integrating the augmented state ``(x_t, Delta_t)`` with
``dDelta/dt = div v(x_t, t)`` forward from ``t_eps`` (where ``x_{t_eps} = x``) to ``T``:

    log p_{t_eps}(x) = log p_T(x_T) + int_{t_eps}^T div v(x_t, t) dt.

``p_T`` is the SDE's prior (``sde.prior_logp``). The divergence is computed

* exactly (``divergence="exact"``): ``div v = sum_i dv_i/dx_i`` by one reverse-mode pass per
  dimension (cost grows with ``D``: fine for low-dimensional data);
* by Hutchinson's estimator (``divergence="hutchinson"``): ``div v ~ eps^T (dv/dx) eps`` with
  ``E[eps eps^T] = I``, one vector-Jacobian product per evaluation. The probe ``eps``
  (Rademacher or Gaussian) is drawn once per solve and held fixed, so the integrand is a smooth
  function of time the adaptive solver can integrate (Grathwohl et al. 2019, FFJORD). The
  estimate of ``log p`` is unbiased (to integration error); its spread is reported by the
  caller over repeated probes.

All of it runs without building a graph for the caller: the result is detached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from solvers.protocol import ScoreFn
from solvers.resolve import check_tolerances
from solvers.sampling import NonFiniteScoreError

LogDensityFn = Callable[[Tensor], Tensor]

DIVERGENCES = ("exact", "hutchinson")
DEFAULT_FIXED_STEPS = 1000
"""Uniform steps over ``[t_eps, T]`` a fixed-step method takes when given no step size."""
PROBES = ("rademacher", "gaussian")
ERROR_NORMS = ("per_sample", "rms")


def _torchdiffeq_solvers() -> dict[str, type]:
    import sys

    import torchdiffeq  # noqa: F401  (registers the module below)

    return dict(sys.modules["torchdiffeq._impl.odeint"].SOLVERS)


def _per_sample_norm(state: tuple[Tensor, Tensor]) -> Tensor:
    """Error norm of the augmented state that controls every sample: the largest over the batch
    of ``max(RMS_j(x_err[b, j]), |delta_err[b]|)`` (torchdiffeq's default RMS over the whole batch
    lets one hard sample hide among easy ones)."""
    x, delta = state
    rms = x.reshape(x.shape[0], -1).pow(2).mean(1).sqrt()
    return torch.maximum(rms, delta.abs()).max()


def _is_adaptive_rk(solver_cls: type) -> bool:
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    return issubclass(solver_cls, RKAdaptiveStepsizeODESolver)


def ode_methods() -> list[str]:
    """The torchdiffeq method names ``log_likelihood`` accepts."""
    return list(_torchdiffeq_solvers())


def is_fixed_step(method: str) -> bool:
    """Whether the torchdiffeq ``method`` steps on a fixed grid (euler, midpoint, rk4, ...)."""
    from torchdiffeq._impl.solvers import FixedGridODESolver

    solvers = _torchdiffeq_solvers()
    return method in solvers and issubclass(solvers[method], FixedGridODESolver)


@dataclass
class LikelihoodResult:
    """The output of :func:`log_likelihood`.

    Attributes:
        logp: ``log p(x)`` per sample in nats, shape ``(B,)`` (the model's density of ``x`` read
            as a state at time ``t_eps``).
        prior_logp: ``log p_T(x_T)``, shape ``(B,)``.
        delta_logp: ``int_{t_eps}^T div v(x_t, t) dt``, shape ``(B,)``;
            ``logp = prior_logp + delta_logp``.
        z: the end point ``x_T`` of the flow (the latent code of ``x``), shaped like ``x``.
        nfe: evaluations of the augmented vector field (each is one score evaluation plus
            ``D`` (exact) or ``num_probes`` (Hutchinson) vector-Jacobian products).
        dim: ``D``, the number of elements of one sample.
        divergence: ``"exact"`` or ``"hutchinson"``.
    """

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    dim: int
    divergence: str

    @property
    def nll(self) -> Tensor:
        """``-log p(x)`` in nats, shape ``(B,)``."""
        return -self.logp

    def bits_per_dim(
        self, data_range: tuple[float, float] | None = None, num_bins: int = 256
    ) -> Tensor:
        """Bits per dimension; see :func:`bits_per_dim` for the dequantisation offset."""
        return bits_per_dim(self.logp, self.dim, data_range=data_range, num_bins=num_bins)


def dequantization_offset(
    data_range: tuple[float, float] = (0.0, 1.0), num_bins: int = 256
) -> float:
    """Bits per dimension added when ``num_bins``-level data is scaled to ``data_range``.

    Uniformly dequantised data on ``{0, ..., num_bins - 1}`` has the density
    ``p_bins(k + u) = p(x) / s^D`` with ``s = num_bins / (hi - lo)`` the Jacobian of the map to
    ``[lo, hi]``, so ``bpd = -log2 p(x) / D + log2 s``: ``+8`` for 8-bit data in ``[0, 1]`` and
    ``+7`` in ``[-1, 1]`` (the offsets of the score-SDE reference code).
    """
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range={data_range!r}: expected (lo, hi) with lo < hi")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins={num_bins!r} must be an integer >= 2")
    return math.log2(num_bins / (hi - lo))


def bits_per_dim(
    logp: Tensor,
    dim: int,
    data_range: tuple[float, float] | None = None,
    num_bins: int = 256,
) -> Tensor:
    """``bpd = -log p(x) / (D ln 2) + offset``.

    Args:
        logp: log-density in nats, shape ``(B,)``.
        dim: ``D``, the number of elements per sample.
        data_range: ``None`` for no offset (a continuous density); ``(lo, hi)`` for
            ``num_bins``-level data that was uniformly dequantised and scaled to ``[lo, hi]``
            (offset ``log2(num_bins / (hi - lo))``: 8 for ``(0, 1)``, 7 for ``(-1, 1)`` at 8 bits).
        num_bins: the number of quantisation levels (256 for 8-bit images).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim={dim!r} must be a positive integer")
    offset = 0.0 if data_range is None else dequantization_offset(data_range, num_bins)
    return -logp / (dim * math.log(2.0)) + offset


def uniform_dequantize(
    x: Tensor,
    data_range: tuple[float, float] = (0.0, 1.0),
    num_bins: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform dequantisation of data on a ``num_bins``-level grid of ``[lo, hi]``.

    ``x = lo + k (hi - lo) / (num_bins - 1)`` (the usual ``uint8 / 255`` scaling) becomes
    ``lo + (k + u) (hi - lo) / num_bins`` with ``u ~ U[0, 1)``, a continuous variable whose density
    bounds the discrete probability: ``log P(k) >= E_u[log p(x)] - D log s`` (see
    :func:`dequantization_offset`).
    """
    lo, hi = (float(v) for v in data_range)
    dequantization_offset((lo, hi), num_bins)  # validates
    k = torch.round((x - lo) / (hi - lo) * (num_bins - 1)).clamp(0, num_bins - 1)
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    return lo + (k + u) * ((hi - lo) / num_bins)


def draw_probe(
    like: Tensor, probe: str = "rademacher", generator: torch.Generator | None = None
) -> Tensor:
    """A Hutchinson probe with ``E[eps eps^T] = I``: Rademacher (+-1) or standard Gaussian."""
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r}; expected one of {', '.join(PROBES)}")
    dev = generator.device if generator is not None else like.device
    if probe == "gaussian":
        eps = torch.randn(like.shape, generator=generator, device=dev, dtype=like.dtype)
    else:
        bits = torch.randint(0, 2, like.shape, generator=generator, device=dev)
        eps = (2 * bits - 1).to(like.dtype)
    return eps.to(like.device)


def exact_divergence(fx: Tensor, x: Tensor) -> Tensor:
    """``div f(x) = sum_i d f_i / d x_i`` per sample, by one reverse-mode pass per dimension.

    ``fx = f(x)`` must have been computed from ``x`` with gradients enabled; ``x`` is ``(B, ...)``
    and the samples are independent (the Jacobian is block-diagonal over the batch).
    """
    flat_f = fx.reshape(fx.shape[0], -1)
    dim = flat_f.shape[1]
    div = torch.zeros(fx.shape[0], dtype=fx.dtype, device=fx.device)
    for i in range(dim):
        (grad,) = torch.autograd.grad(flat_f[:, i].sum(), x, retain_graph=i < dim - 1)
        div = div + grad.reshape(grad.shape[0], -1)[:, i]
    return div


def hutchinson_divergence(fx: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """``div f(x) ~ mean_k eps_k^T (df/dx) eps_k`` per sample.

    ``probes`` has shape ``(K, *x.shape)``; each term is one vector-Jacobian product.
    """
    num = probes.shape[0]
    est = torch.zeros(fx.shape[0], dtype=fx.dtype, device=fx.device)
    for k in range(num):
        eps = probes[k]
        (vjp,) = torch.autograd.grad(fx, x, grad_outputs=eps, retain_graph=k < num - 1)
        est = est + (vjp * eps).reshape(eps.shape[0], -1).sum(1)
    return est / num


class _AugmentedFlow(torch.nn.Module):
    """The vector field of ``(x, Delta)``: ``(v(x, t), div v(x, t))``; counts its evaluations."""

    def __init__(
        self,
        sde: Any,
        score_fn: ScoreFn,
        divergence: str,
        probes: Tensor | None,
        on_time: Callable[[float], None] | None = None,
    ):
        super().__init__()
        self.flow = sde.probability_flow(score_fn)
        self.divergence = divergence
        self.probes = probes
        self.on_time = on_time

    @property
    def nfe(self) -> int:
        return self.flow.nfe

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, _ = state
        # torchdiffeq's initial-step heuristic probes t0 + h0, which may lie beyond T; the flow
        # clamps its time to [0, T], and steps themselves end exactly at T (``step_t``).
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v, score = self.flow.velocity_and_score(t, x)
            if not score.requires_grad:
                raise ValueError(
                    "score_fn returned a tensor without a graph to x (it detached its output or "
                    "ran under torch.no_grad); the divergence needs a score differentiable in x"
                )
            if self.divergence == "exact":
                div = exact_divergence(v, x)
            else:
                div = hutchinson_divergence(v, x, self.probes)
        # a NaN/Inf makes the sum non-finite; caught here, before torchdiffeq turns it into a
        # NaN result or an "underflow in dt" assertion
        if not math.isfinite(float(v.sum() + div.sum())):
            raise NonFiniteScoreError(
                f"the probability-flow field (score or its divergence) became NaN or Inf at "
                f"t={float(t):.6g} (evaluation {self.nfe}); check the model, its dtype and t_eps"
            )
        if self.on_time is not None:
            self.on_time(float(t))
        return v.detach(), div.detach()


def log_likelihood(
    sde: Any,
    score_fn: ScoreFn,
    x: Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    divergence: str = "exact",
    probe: str = "rademacher",
    t_eps: float = 1e-5,
    generator: torch.Generator | None = None,
    num_probes: int = 1,
    prior_logp: LogDensityFn | None = None,
    error_norm: str = "per_sample",
    options: dict[str, Any] | None = None,
    steps: int | None = None,
    progress: bool = False,
) -> LikelihoodResult:
    """Per-sample ``log p(x)`` (nats) of the score model, by the probability-flow ODE.

    ``log p_{t_eps}(x) = log p_T(x_T) + int_{t_eps}^T div v(x_t, t) dt`` with
    ``v = f - g^2 score / 2``, solved forward from ``t_eps`` to ``T`` by ``torchdiffeq.odeint`` on
    the augmented state ``(x_t, Delta_t)``.

    Args:
        sde: the diffusion: ``drift(x, t)``, ``diffusion(t)``, ``T`` and ``prior_logp(x)``
            (every :class:`~scoresde.sde.DiffusionSDE`).
        score_fn: ``(x, t) -> score`` with ``t`` of shape ``(B,)``; any state shape.
        x: data, ``(B, ...)``. The integration runs in ``x.dtype`` (use float64 for accuracy
            checks) on ``x.device``.
        rtol, atol: tolerances of the adaptive solver (score-SDE uses 1e-5 with RK45).
        method: a torchdiffeq method (``dopri5`` = RK45 Dormand-Prince by default). Fixed-step
            methods (euler, midpoint, rk4, ...) take ``steps`` uniform steps over ``[t_eps, T]``
            (or ``options={"step_size": h}``); they never default to one step over the range.
        divergence: ``"exact"`` (one backward pass per dimension) or ``"hutchinson"``.
        probe: ``"rademacher"`` or ``"gaussian"`` (Hutchinson only).
        t_eps: the start time (the likelihood is that of the density at ``t_eps``).
        generator: draws the Hutchinson probes (once per call).
        num_probes: probes averaged per evaluation (Hutchinson only); the variance of the
            estimate falls as ``1 / num_probes``.
        prior_logp: ``z -> log p_T(z)``, shape ``(B,)``; default ``sde.prior_logp``. (Passing the
            exactly diffused data density isolates the integration error in tests.)
        error_norm: how adaptive solvers measure the local error: ``"per_sample"`` (default)
            holds every sample's ``(x, log p)`` to ``rtol``/``atol`` (the worst sample sets the
            step); ``"rms"`` is torchdiffeq's RMS over the whole batch (as the score-SDE
            reference's flattened RK45), cheaper but a sample's accuracy then depends on the
            rest of its batch.
        options: extra torchdiffeq solver options.
        steps: the number of uniform steps of a fixed-step method (default
            ``DEFAULT_FIXED_STEPS`` = 1000); an error for adaptive methods, which choose their own.
        progress: show a tqdm bar of the time integrated so far.

    Raises:
        NonFiniteScoreError: the field turned NaN or Inf (the message names ``t``).

    Returns:
        :class:`LikelihoodResult` with ``logp`` (nats), the prior and divergence terms, ``x_T``
        and the NFE. ``result.bits_per_dim(data_range=(0, 1))`` adds the dequantisation offset.
    """
    from torchdiffeq import odeint

    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"x has shape {got}; expected a batch (B, ...) with at least 1 dimension per sample"
        )
    if not x.is_floating_point():
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point tensor")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r}; expected one of {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r}; expected one of {', '.join(PROBES)}")
    check_tolerances(rtol, atol)
    methods = _torchdiffeq_solvers()
    if method not in methods:
        raise ValueError(f"method={method!r}; expected a torchdiffeq method: {', '.join(methods)}")
    options = dict(options or {})
    T = float(sde.T)
    if not 0 < float(t_eps) < T:
        raise ValueError(f"t_eps={t_eps!r} must lie in (0, T={T})")
    if is_fixed_step(method):
        if steps is not None and ("step_size" in options or "grid_constructor" in options):
            raise ValueError("give either steps or options['step_size'/'grid_constructor']")
        if "step_size" not in options and "grid_constructor" not in options:
            n = DEFAULT_FIXED_STEPS if steps is None else steps
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"steps={steps!r} must be a positive integer")
            options["step_size"] = (T - float(t_eps)) / n
    elif steps is not None:
        raise ValueError(
            f"steps={steps!r} is for fixed-step methods; method={method!r} chooses its own steps "
            "(set rtol/atol instead)"
        )
    if error_norm not in ERROR_NORMS:
        raise ValueError(f"error_norm={error_norm!r}; expected one of {', '.join(ERROR_NORMS)}")
    if error_norm == "per_sample" and "norm" not in options:
        options["norm"] = _per_sample_norm
    if _is_adaptive_rk(methods[method]) and "step_t" not in options:
        # torchdiffeq's adaptive RK steps may overshoot the final time and interpolate back;
        # the schedule is undefined beyond T, so force a step boundary exactly at T.
        options["step_t"] = [float(sde.T)]
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes={num_probes!r} must be a positive integer")
    if prior_logp is None:
        if not hasattr(sde, "prior_logp"):
            raise ValueError(
                f"{type(sde).__name__} has no prior_logp(x); pass prior_logp=callable explicitly"
            )
        prior_logp = sde.prior_logp

    x = x.detach()
    probes = None
    if divergence == "hutchinson":
        probes = torch.stack([draw_probe(x, probe, generator) for _ in range(num_probes)])
    bar = tqdm(
        total=T - float(t_eps),
        disable=not progress,
        leave=False,
        desc="ODE",
        bar_format="{desc} {percentage:3.0f}%|{bar}| t {n:.3g} of {total:.3g} [{elapsed}]",
    )

    def on_time(t: float) -> None:  # the bar shows the furthest time reached
        done = min(t, T) - float(t_eps)
        if done > bar.n:
            bar.update(done - bar.n)

    flow = _AugmentedFlow(sde, score_fn, divergence, probes, on_time if progress else None)
    ts = torch.tensor([float(t_eps), T], dtype=x.dtype, device=x.device)
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    try:
        with torch.no_grad():
            xs, deltas = odeint(
                flow, (x, delta0), ts, rtol=rtol, atol=atol, method=method, options=options
            )
            z, delta = xs[-1], deltas[-1]
            prior = prior_logp(z).to(x.dtype)
    finally:
        bar.close()
    if prior.shape != (x.shape[0],):
        raise ValueError(
            f"prior_logp returned shape {tuple(prior.shape)}; expected ({x.shape[0]},)"
        )
    return LikelihoodResult(
        logp=prior + delta,
        prior_logp=prior,
        delta_logp=delta,
        z=z,
        nfe=flow.nfe,
        dim=x[0].numel(),
        divergence=divergence,
    )


__all__ = [
    "DEFAULT_FIXED_STEPS",
    "DIVERGENCES",
    "ERROR_NORMS",
    "PROBES",
    "LikelihoodResult",
    "bits_per_dim",
    "dequantization_offset",
    "draw_probe",
    "exact_divergence",
    "hutchinson_divergence",
    "is_fixed_step",
    "ode_methods",
    "log_likelihood",
    "uniform_dequantize",
]
