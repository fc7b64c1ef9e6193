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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .registry import register
from .sampling import SolverContext

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


class _ReverseTimeSDE:
    """The reverse SDE in ``s = T - t`` on the flattened state, scored through ``ctx.score``.

    ``f(s, y) = g(t)^2 score(y, t) - f(t) y``; the subclasses give the diffusion.
    """

    def __init__(
        self, ctx: SolverContext, event_shape: tuple[int, ...], sde_type: str, noise_type: str
    ) -> None:
        self.ctx = ctx
        self.sde_type = sde_type
        self.noise_type = noise_type
        self.event_shape = event_shape
        self.T = ctx.times[0]
        self.probe = False
        self._memo: tuple[float, Tensor, Tensor] | None = None
        c = ctx.coefficients()
        self.s_grid = [self.T - t for t in c.t]
        # coefficients by reverse time: the grid's exactly, stage times on demand
        self._coefs: dict[float, tuple[float, float, float]] = {
            s: (t, f, g2) for s, t, f, g2 in zip(self.s_grid, c.t, c.f, c.g2, strict=True)
        }

    def _at(self, s: float) -> tuple[float, float, float]:
        """``(t, f(t), g(t)^2)`` at reverse time ``s``."""
        hit = self._coefs.get(s)
        if hit is None:
            t = min(max(self.T - s, 0.0), self.T)
            c = self.ctx.coefficients([t])
            hit = (t, c.f[0], c.g2[0])
        return hit

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        if self.probe:  # torchsde's shape check: it only reads the size
            self.probe = False
            return torch.zeros_like(y)
        sf = float(s)
        memo = self._memo
        if memo is not None and memo[1] is y and memo[0] == sf:
            return memo[2]
        t, f, g2 = self._at(sf)
        score = self.ctx.score(y.reshape(y.shape[0], *self.event_shape), t)
        out = torch.mul(score.reshape(y.shape), g2).add_(y, alpha=-f)
        self._memo = (sf, y, out)
        return out


class _DiagonalReverseSDE(_ReverseTimeSDE):
    """Diagonal noise: ``g(s, y) = g(t)`` broadcast to ``y``'s shape."""

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        g = math.sqrt(self._at(float(s))[2])
        return torch.full((1, 1), g, dtype=y.dtype, device=y.device).expand_as(y)


class _AdditiveReverseSDE(_ReverseTimeSDE):
    """Additive noise without the ``(B, d, d)`` matrix: ``g_prod(s, y, v) = g(t) v``."""

    def g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> Tensor:
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


def _check_tolerances(rtol: float, atol: float) -> None:
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0:
            raise ValueError(f"{name}={tol!r} must be a positive number")


def _run(
    ctx: SolverContext, x: Tensor, method: str, adaptive: bool, rtol: float, atol: float
) -> Tensor:
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive={adaptive!r} must be True or False")
    _check_tolerances(rtol, atol)
    spec = _METHODS[method]
    cls = _AdditiveReverseSDE if spec["noise_type"] == "additive" else _DiagonalReverseSDE
    sde = cls(ctx, tuple(x.shape[1:]), spec["sde_type"], spec["noise_type"])
    y = x.reshape(x.shape[0], -1)
    opts = None if spec["options"] is None else dict(spec["options"])
    if adaptive:
        s0, s1 = sde.s_grid[0], sde.s_grid[-1]
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
        sde.probe = True
        with _rng_fork(y):
            ys = sdeint(
                sde,
                y,
                ts,
                bm=bm,
                method=method,
                dt=(s1 - s0) / (len(sde.s_grid) - 1),
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
    for i, _ in enumerate(ctx.steps()):
        s0, s1 = sde.s_grid[i], sde.s_grid[i + 1]
        ts = torch.tensor([s0, s1], dtype=torch.float64)
        sde.probe = True
        with _rng_fork(y):
            ys, extra = sdeint(
                sde,
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


def _make(method: str, order: float, evals: int, reference: str, doc: str) -> Callable:
    def solver(
        ctx: SolverContext,
        x: Tensor,
        adaptive: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-3,
    ) -> Tensor:
        return _run(ctx, x, method, adaptive, rtol, atol)

    solver.__doc__ = doc
    solver.__name__ = solver.__qualname__ = f"torchsde_{method}"
    return register(
        f"torchsde_{method}",
        kind="sde",
        order=order,
        evals_per_step=evals,
        options=dict(_OPTIONS),
        affine=True,
        affine_when=_fixed,
        reference=reference,
    )(solver)


_TAIL = """

    Options: ``adaptive`` (default False: one step per grid interval; True: torchsde's
    step-doubling error control from ``dt = (T - t_end) / steps`` with ``rtol``/``atol``,
    default 1e-3, on a seeded ``BrownianInterval``; then not affine and ``stats.steps`` counts
    accepted steps).
    """

torchsde_euler = _make(
    "euler",
    1.0,
    1,
    "torchsde.sdeint(method='euler')",
    """torchsde Euler-Maruyama on the reverse SDE in ``s = T - t`` (Ito, diagonal noise):

    ``y <- y + F(s, y) ds + g dW``, ``F = g^2 score - f y``. Weak order 1; the same update as
    ``euler_maruyama``."""
    + _TAIL,
)
torchsde_milstein = _make(
    "milstein",
    1.0,
    1,
    "torchsde.sdeint(method='milstein'), derivative-free",
    """torchsde Milstein (Ito, diagonal noise, derivative-free) on the reverse SDE in ``s = T - t``:

    ``y <- y + F ds + g dW + (g(y') - g(y)) (dW^2 - ds) / (2 sqrt(ds))``; the correction is exactly
    0 for the additive noise here, so it is Euler-Maruyama. Weak order 1."""
    + _TAIL,
)
torchsde_srk = _make(
    "srk",
    2.0,  # weak order (the registry's order for SDE solvers); strong order 1.5
    2,
    "torchsde.sdeint(method='srk'); Rossler 2010, SRA1 for additive noise",
    """torchsde stochastic Runge-Kutta (Rossler's SRA1, additive noise) in ``s = T - t``:

    with ``I = dW``, ``I0 = U / ds`` (space-time Levy area) and ``s' = s + ds``,
    ``H1 = y + 3/4 F(s, y) ds + 3/2 g(s') I0``,
    ``y <- y + (F(s, y) / 3 + 2 F(s + 3/4 ds, H1) / 3) ds + g(s') (I - I0) + g(s) I0``.
    Strong order 1.5, weak order 2 (additive noise; Rossler 2010); two drift (score)
    evaluations per step."""
    + _TAIL,
)
torchsde_reversible_heun = _make(
    "reversible_heun",
    2.0,  # weak order on this additive-noise problem (measured: tests/test_solver_orders.py)
    1,
    "torchsde.sdeint(method='reversible_heun'); Kidger et al. 2021",
    """torchsde reversible Heun (Stratonovich = Ito here) in ``s = T - t``, with the extra state ``z``:

    ``z' = 2 y - z + F(z) ds + g dW``, ``y <- y + (F(z) + F(z')) ds / 2 + g dW``, ``z <- z'``.
    One score evaluation per step (plus one at the start). Only weakly stable: on the
    contracting reverse SDE its parasitic mode ``y - z`` grows like ``exp(int g^2 / S ds)``
    (``S`` the marginal variance), which nonlinear scores excite. Measured on a 2-D mixture: on
    VP it needs ~4,000 steps; on VE (``sigma_max = 50``) it diverges at any practical step
    count. Prefer ``torchsde_srk`` or the native samplers."""
    + _TAIL,
)
