"""The shared plumbing of ``solvers``: the per-step ``before_step`` hook that ``inpaint`` runs on,
the one resolver of a sampling call, and the torchsde ``ReverseSDE`` wrapper.

Every registered solver, present and future, is checked from the registry.
"""

from __future__ import annotations

import pytest
import torch

import solvers
from scoresde import VESDE, VPSDE, Gaussian
from scoresde.guidance import inpaint
from solvers.resolve import check_tolerances, resolve

F64 = torch.float64
PRIOR = Gaussian(
    torch.tensor([0.5, -1.0, 0.3], dtype=F64),
    torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=F64),
)
FIXED_STEP = [n for n in solvers.available() if not solvers.get(n).adaptive]
SDES = {"VP": VPSDE(), "VE": VESDE()}


def _seed() -> torch.Generator:
    return torch.Generator().manual_seed(3)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name", FIXED_STEP)
def test_inpaint_with_nothing_known_is_sample(name: str, sde_name: str) -> None:
    """One sampling loop: with an all-zero mask inpainting is ``sample`` bit for bit (a solver
    restarted at every step, as multistep ones were, would differ)."""
    sde = SDES[sde_name]
    score = PRIOR.score_fn(sde)
    known = torch.full((6, 3), 7.0, dtype=F64)
    a, sa = solvers.sample(
        sde, score, shape=(6, 3), dtype=F64, solver=name, steps=5, generator=_seed()
    )
    b, sb = inpaint(
        sde, score, known, torch.zeros(3, dtype=F64), solver=name, steps=5, generator=_seed()
    )
    assert torch.equal(a, b)
    assert (sa.nfe, sa.steps) == (sb.nfe, sb.steps)


@pytest.mark.parametrize("name", FIXED_STEP)
def test_before_step_runs_before_every_step_and_the_solver_uses_its_state(name: str) -> None:
    """The hook runs at every grid time but the last, then before the denoising step; a hook
    that swaps in ``z`` at ``T`` gives exactly the run started from ``z``."""
    sde = VPSDE()
    score = PRIOR.score_fn(sde)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    seen: list[float] = []

    def swap_at_start(x: torch.Tensor, t: float) -> torch.Tensor:
        seen.append(t)
        return z.clone() if len(seen) == 1 else x

    out, stats = solvers.sample(
        sde, score, x_T=x_T, solver=name, steps=5, generator=_seed(), before_step=swap_at_start
    )
    ref, _ = solvers.sample(sde, score, x_T=z, solver=name, steps=5, generator=_seed())
    assert seen == stats.grid.tolist()[:-1] + [stats.t_end]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_before_step_needs_a_fixed_step_solver_that_calls_it() -> None:
    sde = VPSDE()
    score = PRIOR.score_fn(sde)
    with pytest.raises(ValueError, match="adaptive"):
        solvers.sample(sde, score, shape=(2, 3), solver="ode_adaptive", before_step=lambda x, t: x)
    with pytest.raises(ValueError, match="fixed steps"):
        solvers.sample(
            sde,
            score,
            shape=(2, 3),
            solver="torchsde_euler",
            adaptive=True,
            before_step=lambda x, t: x,
        )

    @solvers.register("test_hookless_euler", kind="ode", order=1, evals_per_step=1)
    def hookless(ctx, x):
        for t, s in ctx.steps():
            x = x - (t - s) * ctx.pf_drift(x, t)
            ctx.done(x)
        return x

    try:
        solvers.sample(sde, score, shape=(2, 3), solver="test_hookless_euler", steps=3)
        with pytest.raises(RuntimeError, match="ctx.before_step"):
            solvers.sample(
                sde,
                score,
                shape=(2, 3),
                solver="test_hookless_euler",
                steps=3,
                before_step=lambda x, t: x,
            )
    finally:
        solvers.unregister("test_hookless_euler")


def test_one_resolver_checks_every_sampling_call() -> None:
    sde = VPSDE()
    plan = resolve(sde, "dpm_solver_pp_2m", 8)
    assert plan.options == {"lower_order_final": True} and plan.steps == 8
    assert plan.grid.dtype == F64 and plan.grid.numel() == 9 and plan.t_end == sde.default_t_end
    plan = resolve(sde, "ddim", 2, grid=[1.0, 0.5, 0.1])
    assert plan.t_end == 0.1
    for call, match in [
        (lambda: resolve(sde, "nope", 4), "available solvers"),
        (lambda: resolve(sde, "ddim", 4, options={"bogus": 1}), r"unknown option\(s\) \['bogus'\]"),
        (lambda: resolve(sde, "ddim", 0), "steps=0"),
        (lambda: resolve(sde, "ddim", 4, t_end=1.5), r"t_end=1.5 must lie in \(0, T=1.0\)"),
        (lambda: resolve(sde, "ddim", 4, grid=[0.5, 0.7]), "strictly decreasing"),
        (lambda: check_tolerances(1e-3, 0.0), "atol=0.0"),
        (lambda: check_tolerances(float("nan"), 1e-3), "rtol=nan"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    # the same messages reach the user from sample, inpaint and the harness
    with pytest.raises(ValueError, match="must lie in"):
        inpaint(sde, PRIOR.score_fn(sde), torch.zeros(2, 3), torch.ones(3), t_end=2.0)


def test_reverse_sde_is_one_wrapper() -> None:
    """``sde.reverse`` is the torchsde solvers' own ``ReverseSDE``: its drift is
    ``g^2 score - f y`` in reverse time ``s = T - t``."""
    sde = VPSDE()
    score = PRIOR.score_fn(sde)
    rev = sde.reverse(score)
    assert isinstance(rev, solvers.ReverseSDE)
    y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = 0.3
    s = torch.tensor(sde.T - t, dtype=F64)
    f, g = float(sde.drift_coef(t)), float(sde.diffusion(t))
    expected = g**2 * score(y, torch.full((5,), t, dtype=F64)) - f * y
    torch.testing.assert_close(rev.f(s, y), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rev.g(s, y), torch.full_like(y, g), rtol=1e-12, atol=0)
    assert rev.nfe == 1
