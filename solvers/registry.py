"""The solver registry: ``@register(name, ...)``, ``get(name)``, ``available()``.

A user adds a solver with one decorated function in their own code:

    @solvers.register("my_euler", kind="ode", order=1, evals_per_step=1)
    def my_euler(ctx, x):
        for t, s in ctx.steps():
            x = ctx.before_step(x, t)
            dt = t - s
            x = x - dt * ctx.pf_drift(x, t)
            ctx.done(x)
        return x

A solver is ``fn(ctx: SolverContext, x_T: Tensor, **options) -> x_{t_end}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schedules import GRIDS

SolverFn = Callable[..., Any]
KINDS = ("sde", "ode")


@dataclass(frozen=True)
class SolverSpec:
    """What a solver declares about itself.

    Attributes:
        name: registry key.
        fn: ``fn(ctx, x, **options) -> x``.
        kind: ``"sde"`` (stochastic) or ``"ode"`` (deterministic probability flow).
        order: convergence order (weak order for SDE solvers) on smooth problems.
        evals_per_step: score evaluations per step (``None`` for adaptive solvers).
        default_grid: the time grid used when the caller gives none.
        adaptive: whether it chooses its own steps (``steps`` is then a hint or ignored).
        affine: whether, for a score affine in x, the output is affine in ``x_T`` and in the
            noise drawn through ``ctx.noise_like`` (so its moments can be propagated exactly).
            False for adaptive solvers, whose step sizes depend on the state.
        options: the keyword options it accepts, with defaults, for documentation and checks.
        reference: where the method comes from.
        description: the first line of the solver's docstring.
        affine_when: optional ``(options) -> bool`` refining ``affine`` for given options (a
            predictor-corrector sampler is affine only without its Langevin corrector, a torchsde
            solver only with fixed steps); ``None`` means ``affine`` holds for every option.
        order_option: the name of the integer option that selects the order, if any (UniPC's
            ``order``): the solver then has order ``k`` with that option set to ``k``, for
            ``k = 1 .. order``. The registry-driven order tests measure each ``k``.
        order_untested: why the registry-driven order tests cannot measure this solver's order
            (empty: they measure it; every registered solver is measured unless it says why).
        order_exceptions: ``{grid: (order, reason)}`` for a grid of ``schedules.GRIDS`` on which
            the method itself (not a bug) has a different order: the order tests measure it on
            that grid against the stated order, so losing it there is still caught. It applies
            to the declared ``order`` (with ``order_option``, to ``k = order`` only).
        order_steps: the three doubling step counts at which the order tests measure, for a
            solver whose error reaches its asymptotic slope only there (``None``: the tests'
            own counts).
    """

    name: str
    fn: SolverFn
    kind: str
    order: float
    evals_per_step: int | None
    default_grid: str = "uniform"
    adaptive: bool = False
    affine: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    description: str = ""
    affine_when: Callable[[dict[str, Any]], bool] | None = None
    order_option: str | None = None
    order_untested: str = ""
    order_exceptions: dict[str, tuple[float, str]] = field(default_factory=dict)
    order_steps: tuple[int, int, int] | None = None

    def is_affine(self, **options: Any) -> bool:
        """Whether the solver run with ``options`` (over the defaults) is affine (see ``affine``)."""
        if self.affine_when is None:
            return self.affine
        return bool(self.affine_when({**self.options, **options}))


_REGISTRY: dict[str, SolverSpec] = {}


def register(
    name: str,
    *,
    kind: str,
    order: float,
    evals_per_step: int | None,
    default_grid: str = "uniform",
    adaptive: bool = False,
    affine: bool | None = None,
    options: dict[str, Any] | None = None,
    reference: str = "",
    overwrite: bool = False,
    affine_when: Callable[[dict[str, Any]], bool] | None = None,
    order_option: str | None = None,
    order_untested: str = "",
    order_exceptions: dict[str, tuple[float, str]] | None = None,
    order_steps: tuple[int, int, int] | None = None,
) -> Callable[[SolverFn], SolverFn]:
    """Decorator that registers a solver under ``name``.

    The keyword arguments are the :class:`SolverSpec` fields; ``affine`` defaults to
    ``not adaptive``. ``overwrite=True`` replaces an existing solver of the same name.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be a non-empty string")
    if not (isinstance(order, int | float) and order > 0):
        raise ValueError(f"order={order!r} must be a positive number")
    if evals_per_step is not None and (
        isinstance(evals_per_step, bool)
        or not isinstance(evals_per_step, int)
        or evals_per_step < 1
    ):
        raise ValueError(f"evals_per_step={evals_per_step!r} must be a positive integer or None")
    if order_option is not None and order_option not in (options or {}):
        raise ValueError(
            f"order_option={order_option!r} is not one of the options "
            f"{', '.join(options or {}) or '(none)'}"
        )
    for grid, value in (order_exceptions or {}).items():
        if grid not in GRIDS:
            raise ValueError(f"order_exceptions: grid {grid!r} is not one of {', '.join(GRIDS)}")
        ok = isinstance(value, tuple) and len(value) == 2
        if not (
            ok and isinstance(value[0], int | float) and value[0] > 0 and str(value[1]).strip()
        ):
            raise ValueError(
                f"order_exceptions[{grid!r}]={value!r} must be (positive order, reason)"
            )
    if order_steps is not None and not (
        isinstance(order_steps, tuple)
        and len(order_steps) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) for n in order_steps)
        and order_steps[0] >= 1
        and order_steps[1] == 2 * order_steps[0]
        and order_steps[2] == 2 * order_steps[1]
    ):
        raise ValueError(
            f"order_steps={order_steps!r} must be three doubling step counts (n, 2n, 4n)"
        )

    def decorate(fn: SolverFn) -> SolverFn:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"a solver named {name!r} is already registered (pass overwrite=True)")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = SolverSpec(
            name=name,
            fn=fn,
            kind=kind,
            order=order,
            evals_per_step=evals_per_step,
            default_grid=default_grid,
            adaptive=adaptive,
            affine=(not adaptive) if affine is None else affine,
            options=dict(options or {}),
            reference=reference,
            description=doc[0] if doc else "",
            affine_when=affine_when,
            order_option=order_option,
            order_untested=order_untested,
            order_exceptions=dict(order_exceptions or {}),
            order_steps=order_steps,
        )
        return fn

    return decorate


def get(name: str) -> SolverSpec:
    """The :class:`SolverSpec` registered as ``name``; unknown names list the valid ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown solver {name!r}; available solvers: {', '.join(available())}"
        ) from None


def available(kind: str | None = None) -> list[str]:
    """Names of the registered solvers (optionally only ``"sde"`` or ``"ode"`` ones), sorted."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {', '.join(KINDS)} or None")
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def unregister(name: str) -> None:
    """Remove a solver (for tests and experiments)."""
    get(name)
    del _REGISTRY[name]
