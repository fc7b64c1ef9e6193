"""The reverse-time SDE through ``torchsde.sdeint``: Euler, Milstein, SRK and reversible Heun.

torchsde needs increasing times and a 2-D state, so the reverse SDE is integrated in
``s = T - t`` on the flattened state ``y = x.reshape(B, -1)``:

    dy = -[f(t) y - g(t)^2 score(y, t)] ds + g(t) dW_s,      t = T - s.

The noise is additive (``g`` does not depend on the state), so the Ito and Stratonovich forms are
the same SDE, Milstein's correction vanishes (it coincides with Euler-Maruyama), and SRK uses
Rossler's additive-noise scheme SRA1 (strong order 1.5, two drift evaluations per step here).

Fixed steps land exactly on the sampling grid: each grid interval is one ``sdeint`` call with
``dt = (s_{i+1} - s_i)(1 + 1e-6)`` (exactly one step; the solver state of reversible Heun is
carried across calls). The Brownian increments are drawn fresh through ``ctx.noise_like`` (the
run's generator; exact moment propagation works), with the space-time Levy area for SRK. With
``adaptive=True`` one ``sdeint`` call covers ``[0, T - t_end]`` with a ``BrownianInterval``
seeded from the generator (``entropy=``; numpy's global RNG is never used), since rejected
steps must see the same Brownian path.

Two torchsde habits are neutralised: its shape check calls the drift once per ``sdeint`` call
(answered here with zeros of the right shape, no score evaluation), and SRK evaluates the drift
twice at the start of a step (answered from a one-entry cache).

Options of every solver here: ``adaptive`` (default False: one step per grid interval; True:
torchsde's step-doubling error control from ``dt = (T - t_end) / steps`` with ``rtol``/``atol``,
default 1e-3, on a seeded ``BrownianInterval``; then not affine and ``stats.steps`` counts
accepted steps).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .protocol import DiffusionProcess, ScoreFn
from .registry import register
from .resolve import check_tolerances
from .sampling import Coefficients, SolverContext

try:  # torchsde is a dependency, but keep `import solvers` working without it
    from torchsde import BaseBrownian, BrownianInterval, sdeint
except ImportError:  # pragma: no cover
    BaseBrownian = object  # type: ignore[assignment,misc]
    BrownianInterval = sdeint = None  # type: ignore[assignment]


class _FreshIncrements(BaseBrownian):
    """Brownian increments ``W(tb) - W(ta) = sqrt(h) z`` drawn fresh on every query.

    Valid for fixed-step solvers, which query each interval exactly once. With ``return_U`` it
    also returns the space-time Levy area ``U = int_ta^tb (W_r - W_ta) dr = h (W / 2 + H)``,
    ``H ~ N(0, h / 12)`` independent of ``W`` (torchsde's convention).
    """

    __slots__ = ("_ctx", "_like", "_levy")

    def __init__(self, ctx: SolverContext, like: Tensor, levy: str) -> None:
        self._ctx = ctx
        self._like = like
        self._levy = levy

    def __call__(self, ta, tb=None, return_U: bool = False, return_A: bool = False):
        if tb is None or return_A:
            raise ValueError(
                "fresh increments need an interval (ta, tb) and provide no Levy area A"
            )
        h = float(tb) - float(ta)
        w = self._ctx.noise_like(self._like).mul_(math.sqrt(h))
        if not return_U:
            return w
        u = self._ctx.noise_like(self._like).mul_(h * math.sqrt(h / 12.0)).add_(w, alpha=0.5 * h)
        return w, u

    def __repr__(self) -> str:
        return f"_FreshIncrements(shape={tuple(self.shape)}, levy={self._levy!r})"

    @property
    def dtype(self) -> torch.dtype:
        return self._like.dtype

    @property
    def device(self) -> torch.device:
        return self._like.device

    @property
    def shape(self) -> torch.Size:
        return self._like.shape

    @property
    def levy_area_approximation(self) -> str:
        return self._levy


class _RecordingBrownian(BaseBrownian):
    """A ``BrownianInterval`` that records the intervals queried (to count adaptive steps)."""

    __slots__ = ("_bm", "_ctx", "calls")

    def __init__(self, bm: Any, ctx: SolverContext) -> None:
        self._bm = bm
        self._ctx = ctx
        self.calls: list[tuple[float, float]] = []

    def __call__(self, ta, tb=None, return_U: bool = False, return_A: bool = False):
        self.calls.append((float(ta), float(tb)))
        self._ctx.step = (len(self.calls) - 1) // 3
        return self._bm(ta, tb, return_U=return_U, return_A=return_A)

    def accepted_steps(self) -> int:
        """torchsde's adaptive loop tries each step as one full and two half steps; a try is
        accepted when the next try starts where it ended (the last try is always accepted)."""
        tries = self.calls[::3]
        return 1 + sum(nxt[0] == cur[1] for cur, nxt in zip(tries[:-1], tries[1:], strict=True))

    def __repr__(self) -> str:
        return f"_RecordingBrownian({self._bm!r})"

    @property
    def dtype(self) -> torch.dtype:
        return self._bm.dtype

    @property
    def device(self) -> torch.device:
        return self._bm.device

    @property
    def shape(self) -> torch.Size:
        return self._bm.shape

    @property
    def levy_area_approximation(self) -> str:
        return self._bm.levy_area_approximation


class ReverseSDE:
    """The reverse SDE in the increasing time ``s = T0 - t`` on the flattened state ``y``:

        dy = [g(t)^2 score(y, t) - f(t) y] ds + g(t) dW_s,      t = T0 - s,

    the form ``torchsde.sdeint`` integrates (``T0``: where the reverse run starts, default
    ``sde.T``). ``score(x, t)`` takes a Python float time: the solvers pass ``ctx.score`` (NFE,
    NaN checks); :meth:`from_score_fn` wraps a user ``score_fn(x, t)`` with ``t`` of shape
    ``(B,)``. With ``event_shape`` (an image's ``(C, H, W)``, say) the state is unflattened
    before the score is called. Diagonal noise gives ``g``; additive noise only ``g_prod``
    (torchsde would otherwise build the ``(B, d, d)`` matrix). Times are clamped into
    ``[0, T0]`` (integrators land a hair outside). ``nfe`` counts the score evaluations.
    """

    def __init__(
        self,
        sde: DiffusionProcess,
        score: Callable[[Tensor, float], Tensor],
        event_shape: Sequence[int] | None = None,
        sde_type: str = "ito",
        noise_type: str = "diagonal",
        T0: float | None = None,
    ) -> None:
        self.sde = sde
        self.score = score
        self.event_shape = None if event_shape is None else tuple(int(n) for n in event_shape)
        self.sde_type = sde_type
        self.noise_type = noise_type
        self.T0 = float(sde.T if T0 is None else T0)
        self.nfe = 0
        self.probe = False  # answer torchsde's shape check with zeros (no score evaluation)
        self._memo: tuple[float, Tensor, Tensor] | None = None
        self._coefs: dict[float, tuple[float, float, float]] = {}
        if noise_type == "diagonal":  # torchsde reads additive noise from g_prod only: no g
            self.g = self._g_diagonal

    @classmethod
    def from_score_fn(
        cls,
        sde: DiffusionProcess,
        score_fn: ScoreFn,
        event_shape: Sequence[int] | None = None,
    ) -> ReverseSDE:
        """The reverse SDE of ``sde`` for a ``score_fn(x, t)`` with ``t`` of shape ``(B,)``."""

        def score(x: Tensor, t: float) -> Tensor:
            return score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))

        return cls(sde, score, event_shape)

    def cache(self, c: Coefficients) -> None:
        """Remember the coefficients at the grid times ``c.t`` (looked up by reverse time)."""
        for t, f, g2 in zip(c.t, c.f, c.g2, strict=True):
            self._coefs[self.T0 - t] = (t, f, g2)

    def _at(self, s: float) -> tuple[float, float, float]:
        """``(t, f(t), g(t)^2)`` at reverse time ``s``."""
        hit = self._coefs.get(s)
        if hit is None:
            t = min(max(self.T0 - s, 0.0), self.T0)
            t64 = torch.tensor([t], dtype=torch.float64)
            f = float(self.sde.drift_coef(t64).to(torch.float64))
            g2 = float(self.sde.diffusion(t64).to(torch.float64)) ** 2
            hit = (t, f, g2)
        return hit

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        """The drift ``g(t)^2 score(y, t) - f(t) y`` (the last value is reused for the same
        ``(s, y)``: SRK evaluates it twice at the start of a step)."""
        if self.probe:  # torchsde's shape check: it only reads the size
            self.probe = False
            return torch.zeros_like(y)
        sf = float(s)
        memo = self._memo
        if memo is not None and memo[1] is y and memo[0] == sf:
            return memo[2]
        t, f, g2 = self._at(sf)
        x = y if self.event_shape is None else y.reshape(y.shape[0], *self.event_shape)
        self.nfe += 1
        out = torch.mul(self.score(x, t).reshape(y.shape), g2).add_(y, alpha=-f)
        self._memo = (sf, y, out)
        return out

    def _g_diagonal(self, s: Tensor, y: Tensor) -> Tensor:
        """Diagonal noise: ``g(t)`` broadcast to ``y``'s shape."""
        g = math.sqrt(self._at(float(s))[2])
        return torch.full((1,) * y.dim(), g, dtype=y.dtype, device=y.device).expand_as(y)

    def g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Additive noise: ``g(t) v``."""
        return v * math.sqrt(self._at(float(s))[2])


_METHODS: dict[str, dict[str, Any]] = {
    # method: sde_type, noise_type, Levy area, torchsde options
    "euler": {"sde_type": "ito", "noise_type": "diagonal", "levy": "none", "options": None},
    "milstein": {
        "sde_type": "ito",
        "noise_type": "diagonal",
        "levy": "none",
        "options": {"grad_free": True},  # g does not depend on y: the correction is exactly 0
    },
    "srk": {"sde_type": "ito", "noise_type": "additive", "levy": "space-time", "options": None},
    "reversible_heun": {
        "sde_type": "stratonovich",
        "noise_type": "diagonal",
        "levy": "none",
        "options": None,
    },
}


def _rng_fork(x: Tensor):
    """torchsde's shape check draws from the global RNG (for ``g_prod``): leave it untouched."""
    if x.device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    mod = torch.get_device_module(x.device.type)
    index = x.device.index if x.device.index is not None else mod.current_device()
    return torch.random.fork_rng(devices=[index], device_type=x.device.type)


# Reversible Heun's parasitic mode needs fine steps. Measured (ring_2d, VP, exact score, 2,000
# samples, per-mode W2; EM reaches 0.09 at 20 steps): 1.31 / 0.94 / 0.71 / 0.49 / 0.21 at 250 /
# 500 / 1,000 / 2,000 / 4,000 steps. See BENCHMARKS.md.
REVERSIBLE_HEUN_MIN_STEPS = 4000


def _warn_coarse(method: str, steps: int) -> None:
    if method == "reversible_heun" and steps < REVERSIBLE_HEUN_MIN_STEPS:
        warnings.warn(
            f"torchsde_reversible_heun with steps={steps}: its parasitic mode makes it inaccurate "
            f"below about {REVERSIBLE_HEUN_MIN_STEPS} steps on a VP mixture (per-mode W2 0.49 at "
            "2,000 steps, where euler_maruyama reaches 0.09 at 20) and it diverges on VE; use "
            "torchsde_srk or a native sampler",
            RuntimeWarning,
            stacklevel=4,
        )


def _run(
    ctx: SolverContext, x: Tensor, method: str, adaptive: bool, rtol: float, atol: float
) -> Tensor:
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive={adaptive!r} must be True or False")
    if not adaptive:
        _warn_coarse(method, len(ctx.times) - 1)
    check_tolerances(rtol, atol)
    spec = _METHODS[method]
    reverse = ReverseSDE(
        ctx.sde, ctx.score, x.shape[1:], spec["sde_type"], spec["noise_type"], ctx.times[0]
    )
    reverse.cache(ctx.coefficients())
    s_grid = [reverse.T0 - t for t in ctx.times]
    y = x.reshape(x.shape[0], -1)
    opts = None if spec["options"] is None else dict(spec["options"])
    if adaptive:
        if ctx.hook is not None:
            raise ValueError(
                "adaptive=True chooses its own steps; a before_step hook (inpainting) needs "
                "fixed steps (adaptive=False)"
            )
        s0, s1 = s_grid[0], s_grid[-1]
        g = ctx.generator
        entropy = int(
            torch.randint(0, 2**62, (1,), generator=g, device=g.device if g is not None else "cpu")
        )
        bm = _RecordingBrownian(
            BrownianInterval(
                t0=s0,
                t1=s1,
                size=tuple(y.shape),
                dtype=y.dtype,
                device=y.device,
                entropy=entropy,
                levy_area_approximation=spec["levy"],
            ),
            ctx,
        )
        ts = torch.tensor([s0, s1], dtype=torch.float64)
        reverse.probe = True
        with _rng_fork(y):
            ys = sdeint(
                reverse,
                y,
                ts,
                bm=bm,
                method=method,
                dt=(s1 - s0) / (len(s_grid) - 1),
                adaptive=True,
                rtol=float(rtol),
                atol=float(atol),
                options=opts,
            )
        out = ys[-1].reshape(x.shape)
        ctx.steps_taken += bm.accepted_steps() - 1
        ctx.done(out, ctx.times[-1])
        return out
    bm = _FreshIncrements(ctx, y, spec["levy"])
    extra = None
    for i, (t, _s) in enumerate(ctx.steps()):
        y = ctx.before_step(y.reshape(x.shape), t).reshape(y.shape)
        s0, s1 = s_grid[i], s_grid[i + 1]
        ts = torch.tensor([s0, s1], dtype=torch.float64)
        reverse.probe = True
        with _rng_fork(y):
            ys, extra = sdeint(
                reverse,
                y,
                ts,
                bm=bm,
                method=method,
                dt=(s1 - s0) * (1.0 + 1e-6),  # exactly one step (sdeint accumulates t + dt)
                options=opts,
                extra=True,
                extra_solver_state=extra,
            )
        y = ys[-1]
        ctx.done(y.reshape(x.shape))
    return y.reshape(x.shape)


def _fixed(options: dict[str, Any]) -> bool:
    return not options["adaptive"]


_OPTIONS = {"adaptive": False, "rtol": 1e-3, "atol": 1e-3}


def _register(name: str, order: float, evals: int, reference: str) -> Callable:
    return register(
        name,
        kind="sde",
        order=order,
        evals_per_step=evals,
        options=dict(_OPTIONS),
        affine=True,
        affine_when=_fixed,
        reference=reference,
    )


@_register("torchsde_euler", 1.0, 1, "torchsde.sdeint(method='euler')")
def torchsde_euler(
    ctx: SolverContext, x: Tensor, adaptive: bool = False, rtol: float = 1e-3, atol: float = 1e-3
) -> Tensor:
    """torchsde Euler-Maruyama on the reverse SDE in ``s = T - t`` (Ito, diagonal noise):

    ``y <- y + F(s, y) ds + g dW``, ``F = g^2 score - f y``. Weak order 1; the same update as
    ``euler_maruyama``. Options: see the module docstring.
    """
    return _run(ctx, x, "euler", adaptive, rtol, atol)


@_register("torchsde_milstein", 1.0, 1, "torchsde.sdeint(method='milstein'), derivative-free")
def torchsde_milstein(
    ctx: SolverContext, x: Tensor, adaptive: bool = False, rtol: float = 1e-3, atol: float = 1e-3
) -> Tensor:
    """torchsde Milstein (Ito, diagonal noise, derivative-free) on the reverse SDE in ``s = T - t``:

    ``y <- y + F ds + g dW + (g(y') - g(y)) (dW^2 - ds) / (2 sqrt(ds))``; the correction is exactly
    0 for the additive noise here, so it is Euler-Maruyama. Weak order 1. Options: see the
    module docstring.
    """
    return _run(ctx, x, "milstein", adaptive, rtol, atol)


@_register(
    "torchsde_srk",
    2.0,  # weak order (the registry's order for SDE solvers); strong order 1.5
    2,
    "torchsde.sdeint(method='srk'); Rossler 2010, SRA1 for additive noise",
)
def torchsde_srk(
    ctx: SolverContext, x: Tensor, adaptive: bool = False, rtol: float = 1e-3, atol: float = 1e-3
) -> Tensor:
    """torchsde stochastic Runge-Kutta (Rossler's SRA1, additive noise) in ``s = T - t``:

    with ``I = dW``, ``I0 = U / ds`` (space-time Levy area) and ``s' = s + ds``,
    ``H1 = y + 3/4 F(s, y) ds + 3/2 g(s') I0``,
    ``y <- y + (F(s, y) / 3 + 2 F(s + 3/4 ds, H1) / 3) ds + g(s') (I - I0) + g(s) I0``.
    Strong order 1.5, weak order 2 (additive noise; Rossler 2010); two drift (score)
    evaluations per step. Options: see the
    module docstring.
    """
    return _run(ctx, x, "srk", adaptive, rtol, atol)


@_register(
    "torchsde_reversible_heun",
    2.0,  # weak order on this additive-noise problem (measured: tests/test_solver_orders.py)
    1,
    "torchsde.sdeint(method='reversible_heun'); Kidger et al. 2021",
)
def torchsde_reversible_heun(
    ctx: SolverContext, x: Tensor, adaptive: bool = False, rtol: float = 1e-3, atol: float = 1e-3
) -> Tensor:
    """torchsde reversible Heun (Stratonovich = Ito here) in ``s = T - t``, with the extra state ``z``:

    ``z' = 2 y - z + F(z) ds + g dW``, ``y <- y + (F(z) + F(z')) ds / 2 + g dW``, ``z <- z'``.
    One score evaluation per step (plus one at the start). Only weakly stable: on the
    contracting reverse SDE its parasitic mode ``y - z`` grows like ``exp(int g^2 / S ds)``
    (``S`` the marginal variance), which nonlinear scores excite (measurements in
    BENCHMARKS.md); prefer ``torchsde_srk`` or the native samplers. Options: see the module
    docstring.
    """
    return _run(ctx, x, "reversible_heun", adaptive, rtol, atol)
