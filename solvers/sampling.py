"""The one entry point, :func:`sample`, and the context every solver receives."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from schedules.parametrization import tweedie_denoise

from .protocol import DiffusionProcess, ScoreFn, pf_velocity
from .registry import get
from .resolve import resolve

Callback = Callable[[int, float, Tensor], None]
StepHook = Callable[[Tensor, float], Tensor]
DEFAULT_STEPS = 100


class NonFiniteScoreError(FloatingPointError):
    """The score function returned NaN or Inf."""


@dataclass
class SampleStats:
    """What a sampling run cost.

    Attributes:
        nfe: score-function evaluations, the final denoising step included.
        steps: solver steps taken (accepted steps for adaptive solvers).
        wall_time: seconds, device-synchronised.
        solver: the solver's registry name.
        grid: the float64 time grid used (``None`` for adaptive solvers that choose their own).
        t_end: the truncation time.
        accepted, rejected: for solvers with error control that report them (``sde_adaptive``),
            the accepted and rejected steps per sample, averaged over the batch; ``None``
            otherwise.
    """

    nfe: int
    steps: int
    wall_time: float
    solver: str
    grid: Tensor | None
    t_end: float
    accepted: float | None = None
    rejected: float | None = None


class SampleResult(NamedTuple):
    """``samples, stats = sample(...)``."""

    samples: Tensor
    stats: SampleStats


@dataclass(frozen=True)
class Coefficients:
    """Coefficients of the process at a list of times, as Python floats computed in float64.

    Attributes (one entry per time):
        t: the times.
        alpha, sigma: the kernel ``x_t = alpha x_0 + sigma eps``.
        log_snr: ``lambda = log(alpha / sigma)``.
        f: the drift coefficient, ``f(x, t) = f(t) x``.
        g2: ``g(t)^2``.
    """

    t: list[float]
    alpha: list[float]
    sigma: list[float]
    log_snr: list[float]
    f: list[float]
    g2: list[float]


class SolverContext:
    """Everything a solver needs, with the float64 coefficient math done on the CPU.

    A solver loops ``for t, s in ctx.steps():`` (``t`` the current, ``s < t`` the next time, both
    Python floats), starts each step with ``x = ctx.before_step(x, t)``, updates ``x`` and calls
    ``ctx.done(x)`` at the end of each step. Hot loops take their coefficients as Python floats
    from :meth:`coefficients`, :meth:`transitions` and :meth:`posteriors` (computed once for the
    whole grid), so a step costs no device sync and no small-tensor arithmetic.
    """

    def __init__(
        self,
        sde: DiffusionProcess,
        score_fn: ScoreFn,
        grid: Tensor,
        generator: torch.Generator | None,
        callback: Callback | None,
        progress: bool,
        noise_fn: Callable[[Tensor], Tensor] | None = None,
        hook: StepHook | None = None,
    ) -> None:
        self.sde = sde
        self.score_fn = score_fn
        self.grid = grid
        self.times: list[float] = grid.tolist()
        self.generator = generator
        self.callback = callback
        self.noise_fn = noise_fn
        self.hook = hook
        self.hook_calls = 0
        self.nfe = 0
        self.step = 0
        self.t = self.times[0]
        self.steps_taken = 0
        self.accepted: float | None = None  # set by solvers with error control
        self.rejected: float | None = None
        self._pbar = tqdm(total=len(self.times) - 1, disable=not progress, leave=False)
        self._pending: list[tuple[Tensor, int, float]] = []  # deferred finiteness checks (GPU)
        self._grid_coefs: Coefficients | None = None

    # -- stepping -----------------------------------------------------------------------------
    def steps(self):
        """Yield ``(t, s)`` for each step of the grid, from ``T`` down to ``t_end``."""
        for i in range(len(self.times) - 1):
            self.step, self.t = i, self.times[i]
            yield self.times[i], self.times[i + 1]

    def before_step(self, x: Tensor, t: float, scale: float = 1.0) -> Tensor:
        """The state to start the step at ``t`` from: ``x`` itself, or the caller's hook applied.

        :func:`sample`'s ``before_step(x, t) -> x`` runs here at the start of every step (and
        before the final denoising), e.g. inpainting's replacement of the known entries. A
        solver whose state is ``x / scale`` (EDM's ``x / alpha_t``) passes that ``scale``.
        """
        if self.hook is None:
            return x
        self.hook_calls += 1
        if scale == 1.0:
            return self.hook(x, t)
        return self.hook(x * scale, t) / scale

    def done(self, x: Tensor, t: float | None = None) -> None:
        """Mark the current step as finished: progress bar and user callback.

        ``t`` is the time ``x`` has reached; by default the next grid time (solvers that choose
        their own steps pass it).
        """
        self.steps_taken += 1
        self._pbar.update(1)
        if self.callback is not None:
            if t is None:
                t = self.times[min(self.step + 1, len(self.times) - 1)]
            self.callback(self.step, t, x)

    @property
    def process(self) -> DiffusionProcess:
        """Deprecated name of :attr:`sde` (solvers written before the rename read it)."""
        return self.sde

    def close(self) -> None:
        self._pbar.close()

    # -- score --------------------------------------------------------------------------------
    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``score_fn(x, t * ones(B))`` in ``x``'s dtype; counts NFE, checks the shape on every
        call and detects NaN/Inf.

        The state keeps its dtype: a score of another precision is cast to ``x.dtype`` here, once
        for every solver. ``t`` may also be a per-sample tensor of shape ``(B,)`` (solvers with
        per-sample steps).
        """
        if isinstance(t, Tensor):
            tvec = t.to(dtype=x.dtype, device=x.device).expand(x.shape[0])
        else:
            tvec = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        out = self.score_fn(x, tvec)
        self.nfe += 1
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"score_fn returned {got} at step {self.step} (t={float(tvec[0]):.6g}); expected the "
                f"state's shape {tuple(x.shape)}"
            )
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if out.device.type == "cpu":
            # a NaN or Inf makes the sum non-finite; one reduction pass is far cheaper than
            # isfinite(out).all() (an elementwise tensor, then a reduction), which then only
            # confirms (a finite sum may overflow)
            acc = None if out.dtype in (torch.float32, torch.float64) else torch.float32
            if not math.isfinite(float(out.sum(dtype=acc))) and not bool(torch.isfinite(out).all()):
                bad = ~torch.isfinite(out.reshape(out.shape[0], -1)).all(1)
                self._raise_nonfinite(self.step, float(tvec[bad.nonzero()[0, 0]]))
        else:  # no device sync on the hot path: checked once at the end
            t_at = float(tvec[0]) if isinstance(t, Tensor) else float(t)
            self._pending.append((torch.isfinite(out).all(), self.step, t_at))
        return out

    def _raise_nonfinite(self, step: int, t: float) -> None:
        raise NonFiniteScoreError(
            f"score_fn returned NaN or Inf at step {step} (t={t:.6g}); check the model, "
            "its dtype and the time range"
        )

    def check_pending(self) -> None:
        if self._pending:
            flags = torch.stack([f for f, _, _ in self._pending]).cpu()
            if not bool(flags.all()):
                k = int((~flags).nonzero()[0])
                self._raise_nonfinite(self._pending[k][1], self._pending[k][2])
            self._pending.clear()

    # -- coefficients (Python floats computed in float64) --------------------------------------
    def coefficients(self, times: Sequence[float] | Tensor | None = None) -> Coefficients:
        """The process coefficients at ``times`` (default: every grid time, cached)."""
        if times is None:
            if self._grid_coefs is None:
                self._grid_coefs = self.coefficients(self.grid)
            return self._grid_coefs
        t = torch.as_tensor(times, dtype=torch.float64).flatten().cpu()
        alpha, sigma = self.sde.marginal(t)
        return Coefficients(
            t=t.tolist(),
            alpha=alpha.to(torch.float64).tolist(),
            sigma=sigma.to(torch.float64).tolist(),
            log_snr=self.sde.log_snr(t).to(torch.float64).tolist(),
            f=self.sde.drift_coef(t).to(torch.float64).tolist(),
            g2=(self.sde.diffusion(t).to(torch.float64) ** 2).tolist(),
        )

    def transitions(self) -> tuple[list[float], list[float]]:
        """Per step ``(alpha_{t|s}, sigma_{t|s})`` of the forward kernel ``x_t | x_s``."""
        a, sig = self.sde.transition(self.grid[1:], self.grid[:-1])
        return a.to(torch.float64).tolist(), sig.to(torch.float64).tolist()

    def posteriors(self) -> tuple[list[float], list[float], list[float]]:
        """Per step ``(c_t, c_0, var)`` of ``q(x_s | x_t, x_0)`` (:meth:`DiffusionProcess.posterior`)."""
        c_t, c_0, var = self.sde.posterior(self.grid[1:], self.grid[:-1])
        return (
            c_t.to(torch.float64).tolist(),
            c_0.to(torch.float64).tolist(),
            var.to(torch.float64).tolist(),
        )

    def marginal(self, t: float) -> tuple[float, float]:
        """``(alpha(t), sigma(t))``."""
        alpha, sigma = self.sde.marginal(t)
        return float(alpha), float(sigma)

    def g2(self, t: float) -> float:
        """``g(t)^2``."""
        return float(self.sde.diffusion(t)) ** 2

    def log_snr(self, t: float) -> float:
        return float(self.sde.log_snr(t))

    def pf_drift(self, x: Tensor, t: float) -> Tensor:
        """The probability-flow velocity :func:`~solvers.protocol.pf_velocity` at ``(x, t)``."""
        c = self.coefficients([t])
        return pf_velocity(x, self.score(x, t), c.f[0], c.g2[0])

    def noise_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like ``x`` from the run's generator.

        Drawn on the generator's device and moved, so a CPU generator reproduces a run on any device.
        A ``noise_fn`` given to :func:`sample` replaces the draw (exact moment propagation).
        """
        if self.noise_fn is not None:
            return self.noise_fn(x)
        g = self.generator
        if g is None or g.device == x.device:
            return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)


def sample(
    sde: DiffusionProcess,
    score_fn: ScoreFn,
    shape: Sequence[int] | None = None,
    x_T: Tensor | None = None,
    solver: str = "euler_maruyama",
    steps: int | None = None,
    grid: str | Tensor | Sequence[float] | None = None,
    t_end: float | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    noise_fn: Callable[[Tensor], Tensor] | None = None,
    before_step: StepHook | None = None,
    **options: Any,
) -> SampleResult:
    """Sample from the model by integrating the reverse process from ``T`` to ``t_end``.

    Args:
        sde: the diffusion (any :class:`DiffusionProcess`).
        score_fn: ``(x, t) -> score`` with ``t`` of shape ``(B,)``; any state shape.
        shape: batch-first shape of the samples, when ``x_T`` is not given.
        x_T: the starting state (default: drawn from the prior with ``generator``).
        solver: a registered solver name (see ``solvers.available()``).
        steps: number of steps (default 100). Adaptive solvers (``ode_adaptive``, the torchsde
            solvers with ``adaptive=True``, any ``SolverSpec.adaptive``) choose their own steps
            from their tolerances: ``steps`` only sets their first trial step (``sde_adaptive``'s
            default exponential pair ignores it), and passing it warns (``stats.steps`` reports
            the steps they took).
        grid: a grid name (``uniform``, ``quadratic``, ``karras``, ``log_snr``), an explicit
            decreasing sequence of times, or ``None`` for the solver's default grid.
        t_end: truncation time (default ``sde.default_t_end``: 1e-3 VP/sub-VP, 1e-5 VE).
        denoise: finish with Tweedie's step ``x0 = (x + sigma^2 score) / alpha`` at ``t_end``
            (one more score evaluation).
        generator: the source of all randomness (prior and solver noise; the torchsde
            solvers' adaptive Brownian paths are seeded from it too, never from numpy's global
            RNG). The same seed, batch size, device and dtype give identical samples. Noise is
            drawn batch-wide, so sample ``k`` changes with the batch size; two solvers also
            couple the samples of a batch: the Langevin corrector of ``predictor_corrector``
            (its step size uses batch-averaged norms, as the reference code) and
            ``ode_adaptive`` (one step-size sequence for the whole batch). All other solvers
            treat each sample independently given its noise.
        progress: show a tqdm progress bar.
        callback: ``callback(step, t, x)`` after every step.
        device, dtype: where and in what precision to draw ``x_T`` (when not given).
        noise_fn: replaces every solver noise draw ``ctx.noise_like(x)`` by ``noise_fn(x)``
            (used to propagate moments exactly through affine solvers).
        before_step: ``(x, t) -> x`` applied to the state at the start of every step and before
            the final denoising (inpainting's replacement); needs a fixed-step solver.
        options: solver-specific options (see the solver's ``SolverSpec.options``).

    Returns:
        ``(samples, stats)`` with :class:`SampleStats` (NFE, steps, wall time).
    """
    spec = get(solver)
    merged = {**spec.options, **options}
    # tolerance-driven solvers pick their own steps; restart is registered adaptive (its path
    # leaves the grid) but spends exactly `steps` Heun steps, so it gets no warning
    tolerance_driven = "rtol" in merged and (spec.adaptive or merged.get("adaptive") is True)
    if steps is not None and tolerance_driven:
        warnings.warn(
            f"solver {solver!r} chooses its own steps from rtol/atol; steps={steps} at most "
            "sets its first trial step (stats.steps reports the steps taken)",
            stacklevel=2,
        )
    steps = DEFAULT_STEPS if steps is None else steps
    plan = resolve(sde, solver, steps, grid, t_end, options)
    spec, t_end = plan.spec, plan.t_end
    if before_step is not None and spec.adaptive:
        raise ValueError(
            f"solver {solver!r} is adaptive (it chooses its own steps); a before_step hook "
            "needs a fixed-step solver"
        )

    if x_T is None:
        if shape is None:
            raise ValueError("give either shape or x_T")
        x = sde.prior_sample(tuple(shape), generator=generator, device=device, dtype=dtype)
    else:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape={tuple(shape)} does not match x_T.shape={tuple(x_T.shape)}")
        if x_T.dim() < 1:
            raise ValueError("x_T must have a batch dimension")
        if not x_T.is_floating_point():
            raise ValueError(f"x_T has dtype {x_T.dtype}; expected a floating-point tensor")
        x = x_T
    if x.shape[0] == 0:
        raise ValueError(f"the batch is empty (state shape {tuple(x.shape)}); expected >= 1 sample")

    grid_t = plan.grid
    ctx = SolverContext(sde, score_fn, grid_t, generator, callback, progress, noise_fn, before_step)
    sync = x.device.type == "cuda"
    if sync:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    try:
        # Samplers never backpropagate through the trajectory; a score that needs gradients
        # (classifier guidance) enables them itself.
        with torch.no_grad():
            x = spec.fn(ctx, x, **plan.options)
            if before_step is not None and ctx.hook_calls != len(ctx.times) - 1:
                raise RuntimeError(
                    f"solver {solver!r} called ctx.before_step {ctx.hook_calls} times in "
                    f"{len(ctx.times) - 1} steps; a solver starts every step with "
                    "x = ctx.before_step(x, t)"
                )
            if denoise:
                ctx.step, ctx.t = len(ctx.times) - 1, t_end
                x = ctx.before_step(x, t_end)
                alpha, sigma = ctx.marginal(t_end)
                x = tweedie_denoise(x, ctx.score(x, t_end), alpha, sigma)
        ctx.check_pending()
    finally:
        ctx.close()
    if sync:
        torch.cuda.synchronize(x.device)
    wall = time.perf_counter() - start
    stats = SampleStats(
        nfe=ctx.nfe,
        steps=ctx.steps_taken,
        wall_time=wall,
        solver=solver,
        grid=None if spec.adaptive else grid_t,
        t_end=t_end,
        accepted=ctx.accepted,
        rejected=ctx.rejected,
    )
    return SampleResult(x, stats)
