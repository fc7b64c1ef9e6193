"""Tests written to kill surviving mutants of solvers/ (mutation testing, TESTING.md).

Each checks behaviour: values against closed forms for Gaussian data (linear score), the
documented bookkeeping of a sampling run, or errors that name the bad value.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

import solvers
from schedules import time_grid
from schedules.parametrization import tweedie_denoise
from scoresde import VESDE, VPSDE, Gaussian

F64 = torch.float64
GAUSS = Gaussian(
    torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[0.6, 0.1], [0.1, 0.3]], dtype=F64)
)
VP, VE = VPSDE(), VESDE()


def _x_T(sde, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sde.prior_sample((n, 2), generator=g, dtype=F64)


@pytest.mark.parametrize("sde", [VP, VE], ids=["VP", "VE"])
def test_denoise_is_one_more_evaluation_giving_the_tweedie_mean(sde):
    x_T, score = _x_T(sde), GAUSS.score_fn(sde)
    raw, st_raw = solvers.sample(sde, score, x_T=x_T, solver="ddim", steps=8, denoise=False)
    den, st_den = solvers.sample(sde, score, x_T=x_T, solver="ddim", steps=8)
    assert (st_raw.nfe, st_den.nfe) == (8, 9) and st_raw.steps == st_den.steps == 8
    t_end = sde.default_t_end
    assert st_den.t_end == t_end and st_den.solver == "ddim"
    alpha, sigma = (float(v) for v in sde.marginal(t_end))
    t_vec = torch.full((x_T.shape[0],), t_end, dtype=F64)
    torch.testing.assert_close(den, tweedie_denoise(raw, score(raw, t_vec), alpha, sigma))
    torch.testing.assert_close(st_den.grid, time_grid("uniform", sde, 8, sde.T, t_end))
    assert math.isclose(float(st_den.grid[-1]), t_end) and st_den.wall_time >= 0


# -- the registry: register() is called at import for the built-in solvers, so its contract is
# tested here on solvers registered inside the test -------------------------------------------


def _user_solver(ctx, x, k=1):
    """First line of the doc.

    More text.
    """
    return x


def test_register_records_every_field_as_given():
    def when(options):
        return options["k"] == 1

    solvers.register(
        "t_full",
        kind="sde",
        order=1.5,
        evals_per_step=3,
        default_grid="karras",
        adaptive=True,
        affine=True,
        options={"k": 1},
        reference="ref",
        affine_when=when,
        order_option="k",
        order_untested="why",
    )(_user_solver)
    spec = solvers.get("t_full")
    assert (spec.name, spec.fn, spec.kind, spec.order, spec.evals_per_step) == (
        "t_full",
        _user_solver,
        "sde",
        1.5,
        3,
    )
    assert (spec.default_grid, spec.adaptive, spec.affine, spec.options) == (
        "karras",
        True,
        True,
        {"k": 1},
    )
    assert (spec.reference, spec.description, spec.affine_when) == (
        "ref",
        "First line of the doc.",
        when,
    )
    assert (spec.order_option, spec.order_untested) == ("k", "why")
    assert spec.is_affine() and not spec.is_affine(k=2)
    assert solvers.available("sde").count("t_full") == 1 and "t_full" not in solvers.available(
        "ode"
    )


def test_register_defaults():
    solvers.register("t_min", kind="ode", order=2, evals_per_step=None)(lambda ctx, x: x)
    spec = solvers.get("t_min")
    assert (spec.default_grid, spec.adaptive, spec.affine, spec.options) == (
        "uniform",
        False,
        True,
        {},
    )
    assert (spec.reference, spec.description, spec.affine_when) == ("", "", None)
    assert (spec.order_option, spec.order_untested, spec.evals_per_step) == (None, "", None)
    assert spec.is_affine() and spec.is_affine(anything=1)
    # affine defaults to "not adaptive"; an explicit value wins
    solvers.register("t_adapt", kind="ode", order=2, evals_per_step=None, adaptive=True)(
        _user_solver
    )
    assert solvers.get("t_adapt").affine is False and not solvers.get("t_adapt").is_affine()
    solvers.register("t_aff", kind="ode", order=2, evals_per_step=1, adaptive=True, affine=True)(
        _user_solver
    )
    assert solvers.get("t_aff").affine is True
    solvers.register("t_naff", kind="ode", order=2, evals_per_step=1, affine=False)(_user_solver)
    assert solvers.get("t_naff").affine is False


def test_register_copies_the_options_and_overwrites_only_when_asked():
    options = {"k": 1}
    solvers.register("t_copy", kind="ode", order=1, evals_per_step=1, options=options)(_user_solver)
    options["k"] = 2
    assert solvers.get("t_copy").options == {"k": 1}
    with pytest.raises(
        ValueError, match=r"^a solver named 't_copy' is already registered \(pass overwrite=True\)$"
    ):
        solvers.register("t_copy", kind="ode", order=1, evals_per_step=1)(_user_solver)
    solvers.register("t_copy", kind="sde", order=2, evals_per_step=1, overwrite=True)(_user_solver)
    assert solvers.get("t_copy").kind == "sde"
    solvers.unregister("t_copy")
    assert "t_copy" not in solvers.available()
    with pytest.raises(ValueError, match="unknown solver 't_copy'"):
        solvers.unregister("t_copy")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "pde"}, "kind='pde'; expected one of sde, ode"),
        ({"name": ""}, "name='' must be a non-empty string"),
        ({"name": 3}, "name=3 must be a non-empty string"),
        ({"order": 0}, "order=0 must be a positive number"),
        ({"order": -1.0}, "order=-1.0 must be a positive number"),
        ({"order": "2"}, "order='2' must be a positive number"),
        ({"evals_per_step": True}, "evals_per_step=True must be a positive integer or None"),
        ({"evals_per_step": 1.0}, "evals_per_step=1.0 must be a positive integer or None"),
        ({"evals_per_step": 0}, "evals_per_step=0 must be a positive integer or None"),
        ({"order_option": "p"}, r"order_option='p' is not one of the options \(none\)"),
        (
            {"order_option": "p", "options": {"a": 1, "b": 2}},
            "order_option='p' is not one of the options a, b",
        ),
    ],
)
def test_register_rejects_bad_declarations_by_value(kwargs, message):
    args = {"name": "t_bad", "kind": "ode", "order": 1, "evals_per_step": 1, **kwargs}
    with pytest.raises(ValueError, match=f"^{message}$"):
        solvers.register(args.pop("name"), **args)


def test_unknown_names_and_kinds_list_the_valid_ones():
    names = ", ".join(solvers.available())
    with pytest.raises(ValueError, match=f"^unknown solver 'nope'; available solvers: {names}$"):
        solvers.get("nope")
    with pytest.raises(ValueError, match="unknown solver"):
        solvers.get(["not", "hashable"])
    with pytest.raises(ValueError, match=r"^kind='pde'; expected one of sde, ode or None$"):
        solvers.available("pde")
    assert solvers.available() == sorted(solvers.available("sde") + solvers.available("ode"))


# -- resolve: explicit grids, steps, t_end, options --------------------------------------------


@pytest.mark.parametrize(
    "grid, message",
    [
        ([1.0], "an explicit grid needs at least 2 times, got 1"),
        ([1.0, 0.5, 0.5], r"an explicit grid must be strictly decreasing \(from T towards t_end\)"),
        ([1.0, 0.5, 0.7], r"an explicit grid must be strictly decreasing \(from T towards t_end\)"),
        ([1.5, 0.5, 0.1], r"grid runs from 1.5 to 0.1; expected within \(0, 1.0\]"),
        ([2.5, 0.1], r"grid runs from 2.5 to 0.1; expected within \(0, 1.0\]"),
        ([1.0, 0.5, 0.0], r"grid runs from 1.0 to 0.0; expected within \(0, 1.0\]"),
        ([1.0, 0.5, -0.1], r"grid runs from 1.0 to -0.1; expected within \(0, 1.0\]"),
    ],
)
def test_explicit_grids_are_checked_with_the_reason(grid, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        solvers.sample(VP, GAUSS.score_fn(VP), x_T=_x_T(VP), solver="ddim", grid=grid)


def test_an_explicit_grid_sets_steps_and_t_end():
    grid = [1.0, 0.6, 0.3, 0.05]
    x, st = solvers.sample(
        VP, GAUSS.score_fn(VP), x_T=_x_T(VP), solver="ddim", grid=grid, denoise=False
    )
    assert st.steps == 3 and st.nfe == 3 and st.t_end == 0.05 and st.grid.tolist() == grid
    plan = solvers.resolve(VP, "ddim", 3, torch.tensor(grid, dtype=F64), None, {})
    assert plan.t_end == 0.05 and plan.grid.dtype == F64 and plan.options == {"eta": 0.0}


# -- the solver context's helpers (the API of a user-written solver) ----------------------------


def _context(sde, steps: int = 4, **kwargs) -> solvers.SolverContext:
    grid = time_grid("uniform", sde, steps, sde.T, sde.default_t_end)
    return solvers.SolverContext(sde, GAUSS.score_fn(sde), grid, None, None, False, **kwargs)


@pytest.mark.parametrize("sde", [VP, VE], ids=["VP", "VE"])
def test_context_helpers_are_the_process_coefficients(sde):
    ctx = _context(sde)
    t = 0.37
    alpha, sigma = (float(v) for v in sde.marginal(t))
    assert ctx.marginal(t) == (alpha, sigma)
    assert math.isclose(ctx.g2(t), float(sde.diffusion(t)) ** 2, rel_tol=1e-15)
    assert ctx.log_snr(t) == float(sde.log_snr(t)) and math.isclose(
        ctx.log_snr(t), math.log(alpha / sigma)
    )
    c = ctx.coefficients([t, 0.5])
    assert c.t == [t, 0.5] and c.alpha[0] == alpha and c.sigma[0] == sigma
    assert math.isclose(c.g2[1], float(sde.diffusion(0.5)) ** 2, rel_tol=1e-15)
    assert math.isclose(c.f[1], float(sde.drift_coef(0.5)), rel_tol=1e-15)
    assert ctx.coefficients() is ctx.coefficients()  # the grid's coefficients are cached
    assert ctx.coefficients().t == ctx.grid.tolist()
    x = _x_T(sde)
    v = ctx.pf_drift(x, t)  # f x - g^2 score / 2
    t_vec = torch.full((x.shape[0],), t, dtype=F64)
    expected = float(sde.drift_coef(t)) * x - 0.5 * ctx.g2(t) * GAUSS.score_fn(sde)(x, t_vec)
    torch.testing.assert_close(v, expected, rtol=1e-12, atol=1e-12)
    assert ctx.nfe == 1
    a_ts, sig_ts = ctx.transitions()
    s_, t_ = ctx.times[1], ctx.times[0]
    a_ref, sig_ref = (float(v) for v in sde.transition(s_, t_))
    assert math.isclose(a_ts[0], a_ref, rel_tol=1e-14) and math.isclose(
        sig_ts[0], sig_ref, rel_tol=1e-14
    )
    c_t, c_0, var = ctx.posteriors()
    ref = [float(v) for v in sde.posterior(s_, t_)]
    assert [c_t[0], c_0[0], var[0]] == pytest.approx(ref, rel=1e-14)
    assert len(c_t) == len(a_ts) == 4


def test_a_nan_score_names_the_step_the_time_and_what_to_check():
    def score(x, t):
        return torch.full_like(x, math.nan) if float(t[0]) < 0.5 else -x

    msg = r"^score_fn returned NaN or Inf at step 3 \(t=0\.25\); check the model, its dtype and the time range$"
    with pytest.raises(solvers.NonFiniteScoreError, match=msg):
        solvers.sample(VP, score, x_T=_x_T(VP), solver="ode_euler", grid=[1.0, 0.75, 0.5, 0.25])


# -- option checks of the ODE and SDE solvers: the error names the option, its value and the rule --

OPTION_ERRORS = [
    ("ddim", {"eta": -0.1}, r"eta=-0.1 must be a number in \[0, 1\] \(0: ODE, 1: ancestral\)"),
    ("ddim", {"eta": 1.5}, r"eta=1.5 must be a number in \[0, 1\] \(0: ODE, 1: ancestral\)"),
    ("ddim", {"eta": True}, r"eta=True must be a number in \[0, 1\] \(0: ODE, 1: ancestral\)"),
    ("ddim", {"eta": "0"}, r"eta='0' must be a number in \[0, 1\] \(0: ODE, 1: ancestral\)"),
    ("dpm_solver_pp_2m", {"lower_order_final": 1}, "lower_order_final=1 must be True or False"),
    (
        "dpm_solver_pp_3m",
        {"lower_order_final": None},
        "lower_order_final=None must be True or False",
    ),
    ("edm_heun", {"s_churn": -1.0}, "s_churn=-1.0 must be a finite non-negative number"),
    ("edm_heun", {"s_churn": math.inf}, "s_churn=inf must be a finite non-negative number"),
    ("edm_heun", {"s_tmin": "0"}, "s_tmin='0' must be a finite non-negative number"),
    ("edm_heun", {"s_noise": -0.5}, "s_noise=-0.5 must be a finite non-negative number"),
    ("edm_heun", {"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax=1.0 must be a number >= s_tmin=2.0"),
    ("edm_heun", {"s_tmax": None}, "s_tmax=None must be a number >= s_tmin=0.0"),
    ("unipc", {"order": 4}, "order=4 must be an integer in 1..3"),
    ("unipc", {"order": 0}, "order=0 must be an integer in 1..3"),
    ("unipc", {"order": True}, "order=True must be an integer in 1..3"),
    ("unipc", {"order": 2.0}, "order=2.0 must be an integer in 1..3"),
    ("unipc", {"variant": "bh3"}, "variant='bh3'; expected one of bh1, bh2"),
    ("unipc", {"prediction": "v"}, "prediction='v'; expected one of data, noise"),
    ("unipc", {"lower_order_final": "yes"}, "lower_order_final='yes' must be True or False"),
    ("ipndm", {"order": 5}, "order=5 must be an integer in 1..4"),
    ("ipndm", {"order": 0}, "order=0 must be an integer in 1..4"),
    (
        "ode_adaptive",
        {"method": "rk4"},
        r"method='rk4'; expected one of dopri5, dopri8, bosh3, fehlberg2, adaptive_heun \(for fixed "
        r"steps use the ode_euler, ode_heun or ode_rk4 solvers\)",
    ),
    ("ode_adaptive", {"rtol": 0.0}, "rtol=0.0 must be a finite positive number"),
    ("ode_adaptive", {"atol": -1.0}, "atol=-1.0 must be a finite positive number"),
    (
        "predictor_corrector",
        {"predictor": "heun"},
        "predictor='heun'; expected one of euler_maruyama, reverse_diffusion, ancestral",
    ),
    (
        "predictor_corrector",
        {"corrector": "ald"},
        "corrector='ald'; expected one of langevin, none",
    ),
    (
        "predictor_corrector",
        {"corrector_steps": -1},
        "corrector_steps=-1 must be a non-negative integer",
    ),
    (
        "predictor_corrector",
        {"corrector_steps": 1.0},
        "corrector_steps=1.0 must be a non-negative integer",
    ),
    (
        "predictor_corrector",
        {"corrector_steps": True},
        "corrector_steps=True must be a non-negative integer",
    ),
    ("predictor_corrector", {"snr": 0.0}, "snr=0.0 must be a positive number"),
    ("predictor_corrector", {"snr": math.nan}, "snr=nan must be a positive number"),
    ("predictor_corrector", {"snr": "0.1"}, "snr='0.1' must be a positive number"),
    ("dpm_solver_pp_2m_sde", {"eta": -1.0}, "eta=-1.0 must be a finite non-negative number"),
    ("dpm_solver_pp_3m_sde", {"eta": math.inf}, "eta=inf must be a finite non-negative number"),
    ("sa_solver", {"tau": -0.5}, "tau=-0.5 must be a finite non-negative number"),
    ("sa_solver", {"predictor_order": 5}, r"predictor_order=5 must be an integer in \[1, 4\]"),
    ("sa_solver", {"predictor_order": 0}, r"predictor_order=0 must be an integer in \[1, 4\]"),
    ("sa_solver", {"corrector_order": -1}, r"corrector_order=-1 must be an integer in \[0, 4\]"),
    ("torchsde_euler", {"adaptive": 1}, "adaptive=1 must be True or False"),
    ("torchsde_srk", {"rtol": -1e-3}, "rtol=-0.001 must be a finite positive number"),
    ("torchsde_milstein", {"atol": math.inf}, "atol=inf must be a finite positive number"),
]


@pytest.mark.parametrize(
    "solver, options, message",
    OPTION_ERRORS,
    ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(OPTION_ERRORS)],
)
def test_solver_options_are_checked_by_value(solver, options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        solvers.sample(VP, GAUSS.score_fn(VP), x_T=_x_T(VP, 2), solver=solver, **options)


def test_a_hook_with_an_adaptive_torchsde_run_is_refused():
    msg = r"^adaptive=True chooses its own steps; a before_step hook \(inpainting\) needs fixed steps \(adaptive=False\)$"
    with pytest.raises(ValueError, match=msg):
        solvers.sample(
            VP,
            GAUSS.score_fn(VP),
            x_T=_x_T(VP, 2),
            solver="torchsde_euler",
            adaptive=True,
            before_step=lambda x, t: x,
        )


# -- noise and the probability-flow velocity ------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_solver_noise_is_the_generators_standard_normal_in_the_state_dtype(dtype):
    # one Euler-Maruyama step from t = 1 to s = 0.5: x_s = (1 - dt f) x + dt g^2 score + sqrt(dt g^2) z
    x = _x_T(VP, 8).to(dtype)
    score = GAUSS.score_fn(VP)
    out, _ = solvers.sample(
        VP,
        score,
        x_T=x,
        solver="euler_maruyama",
        grid=[1.0, 0.5],
        denoise=False,
        generator=torch.Generator().manual_seed(7),
    )
    dt, f, g2 = 0.5, float(VP.drift_coef(1.0)), float(VP.diffusion(1.0)) ** 2
    mean = (1 - dt * f) * x + dt * g2 * score(x, torch.ones(8, dtype=dtype))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    assert out.dtype == dtype
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close((out - mean) / math.sqrt(dt * g2), z, rtol=0, atol=tol)


def test_pf_velocity_takes_floats_tensors_or_a_mix():
    g = torch.Generator().manual_seed(1)
    x, score = torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, 2, generator=g, dtype=F64)
    f_vec = torch.tensor([[-0.5], [-1.0], [-2.0]], dtype=F64)
    x0, s0 = x.clone(), score.clone()
    for f, g2 in [(-0.7, 1.3), (f_vec, 1.3), (-0.7, f_vec.abs()), (f_vec, f_vec.abs())]:
        expected = f * x - 0.5 * g2 * score
        torch.testing.assert_close(
            solvers.pf_velocity(x, score, f, g2), expected, rtol=1e-15, atol=0
        )
    assert torch.equal(x, x0) and torch.equal(score, s0)  # the inputs are left alone


# -- ODE solvers: warm start, lower-order final steps, callbacks, EDM churn, adaptive steps ------


def _states(solver: str, grid, **options) -> tuple[list[torch.Tensor], torch.Tensor]:
    seen: list[torch.Tensor] = []
    out, _ = solvers.sample(
        VP,
        GAUSS.score_fn(VP),
        x_T=_x_T(VP),
        solver=solver,
        grid=grid,
        denoise=False,
        callback=lambda i, t, x: seen.append(x.clone()),
        **options,
    )
    return seen, out


def _ddim_step(x: torch.Tensor, t: float, s: float) -> torch.Tensor:
    return solvers.sample(VP, GAUSS.score_fn(VP), x_T=x, solver="ddim", grid=[t, s], denoise=False)[
        0
    ]


UNIFORM6 = [1.0, 0.8, 0.55, 0.35, 0.2, 0.1, 0.04]  # unequal log-SNR steps: r != 1


@pytest.mark.parametrize("solver", ["dpm_solver_pp_2m", "dpm_solver_pp_3m"])
def test_lower_order_final_makes_only_the_last_step_first_order(solver):
    seen, out = _states(solver, UNIFORM6, lower_order_final=True)
    torch.testing.assert_close(
        out, _ddim_step(seen[-2], UNIFORM6[-2], UNIFORM6[-1]), rtol=1e-12, atol=1e-12
    )
    seen_off, out_off = _states(solver, UNIFORM6, lower_order_final=False)
    assert not torch.allclose(
        out_off, _ddim_step(seen_off[-2], UNIFORM6[-2], UNIFORM6[-1]), rtol=1e-6
    )
    if solver == "dpm_solver_pp_2m":  # only the last step changes
        torch.testing.assert_close(seen[-2], seen_off[-2], rtol=0, atol=0)
    # the first step is DPM-Solver-1 (= DDIM) either way
    torch.testing.assert_close(
        seen[0], _ddim_step(_x_T(VP), UNIFORM6[0], UNIFORM6[1]), rtol=1e-12, atol=1e-12
    )


def test_dpm_solver_3m_warms_up_with_solver_1_then_2m():
    grid = UNIFORM6[:3]  # two steps: orders 1 and 2
    a = _states("dpm_solver_pp_3m", grid, lower_order_final=False)[1]
    b = _states("dpm_solver_pp_2m", grid, lower_order_final=False)[1]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    c = _states("dpm_solver_pp_3m", UNIFORM6[:4], lower_order_final=False)[1]  # third step: order 3
    d = _states("dpm_solver_pp_2m", UNIFORM6[:4], lower_order_final=False)[1]
    assert not torch.allclose(c, d, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:torchsde_reversible_heun with steps")
@pytest.mark.parametrize("name", [n for n in solvers.available() if not solvers.get(n).adaptive])
def test_the_callback_sees_each_steps_state(name):
    grid = [1.0, 0.6, 0.3, 0.1]
    seen: list = []
    out, st = solvers.sample(
        VP,
        GAUSS.score_fn(VP),
        x_T=_x_T(VP),
        solver=name,
        grid=grid,
        denoise=False,
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x: seen.append((i, t, x.clone())),
    )
    assert [(i, t) for i, t, _ in seen] == [(0, 0.6), (1, 0.3), (2, 0.1)]
    assert all(isinstance(x, torch.Tensor) and x.shape == (6, 2) for _, _, x in seen)
    torch.testing.assert_close(seen[-1][2], out, rtol=1e-12, atol=1e-12)
    assert st.steps == 3


def _recording_score(sde, record: list):
    score = GAUSS.score_fn(sde)

    def fn(x, t):
        record.append(float(t[0]))
        return score(x, t)

    return fn


@pytest.mark.parametrize("s_churn", [0.6, 1.2])
def test_edm_churn_raises_the_noise_level_by_the_documented_factor(s_churn):
    # gamma = min(s_churn / N, sqrt(2) - 1) on steps with s_tmin <= sigma~_i <= s_tmax (inclusive),
    # seen in the time of each step's first evaluation: sigma~(t_hat) = (1 + gamma) sigma~(t_i)
    sde, n = VP, 6
    grid = time_grid("karras", sde, n, sde.T, sde.default_t_end)
    alpha, sigma = sde.marginal(grid)
    sig = [s / a for s, a in zip(sigma.tolist(), alpha.tolist(), strict=True)]  # as the solver
    s_tmax = sig[3]  # exactly a grid level: that step is churned
    rec: list = []
    solvers.sample(
        sde,
        _recording_score(sde, rec),
        x_T=_x_T(sde),
        solver="edm_heun",
        grid=grid,
        denoise=False,
        generator=torch.Generator().manual_seed(0),
        s_churn=s_churn,
        s_tmin=sig[4],
        s_tmax=s_tmax,
    )
    first = rec[0::2]  # two evaluations per step
    gamma = min(s_churn / n, math.sqrt(2) - 1)
    for i in range(n):
        ratio = math.exp(-float(sde.log_snr(first[i]))) / float(sig[i])
        expected = 1 + gamma if 3 <= i <= 4 else 1.0
        assert math.isclose(ratio, expected, rel_tol=1e-9), (i, ratio, expected)
    # s_tmin == s_tmax is a valid (one-level) window
    solvers.sample(
        sde,
        GAUSS.score_fn(sde),
        x_T=_x_T(sde),
        solver="edm_heun",
        steps=3,
        s_churn=1.0,
        s_tmin=1.0,
        s_tmax=1.0,
    )


def test_ode_adaptive_reports_states_on_the_exact_flow_and_starts_with_the_given_step():
    from scoresde.accuracy import gaussian_flow_map

    sde, x_T, rec, seen = VP, _x_T(VP), [], []
    out, st = solvers.sample(
        sde,
        _recording_score(sde, rec),
        x_T=x_T,
        solver="ode_adaptive",
        rtol=1e-8,
        atol=1e-8,
        denoise=False,
        callback=lambda i, t, x: seen.append((t, x.clone())),
    )
    assert len(seen) == st.steps > 3
    for t, x in seen:  # each reported state is the flow of x_T to its reported time
        flow = gaussian_flow_map(sde, GAUSS.mean, GAUSS.cov, sde.T, t)
        torch.testing.assert_close(x, flow(x_T), rtol=0, atol=1e-5)
    # dopri5 evaluates at T, then at T - h0 / 5 with h0 = (T - t_end) / steps (steps = 100)
    h0 = (sde.T - sde.default_t_end) / 100
    assert rec[0] == sde.T and math.isclose(rec[1], sde.T - 0.2 * h0, rel_tol=1e-12)
    # lands on t_end (to round-off in float64; a float32 time span misses it by 5e-11), never beyond
    assert 0 <= min(rec) - sde.default_t_end < 1e-15


@pytest.mark.parametrize("method, c2", [("bosh3", 0.5), ("fehlberg2", 0.5), ("dopri8", 1 / 18)])
def test_ode_adaptive_runs_the_named_method(method, c2):
    rec: list = []
    solvers.sample(
        VP, _recording_score(VP, rec), x_T=_x_T(VP), solver="ode_adaptive", method=method
    )
    h0 = (VP.T - VP.default_t_end) / 100
    assert math.isclose(rec[1], VP.T - c2 * h0, rel_tol=1e-9)


@pytest.mark.parametrize(
    "variant, prediction", [("bh1", "data"), ("bh1", "noise"), ("bh2", "noise")]
)
def test_unipc_variants_match_diffusers_before_the_last_step(variant, prediction):
    """As test_multistep.py's parity test (bh2, data), for the other variants: every state but the
    last (diffusers' bh1 gives NaN on its last step to sigma = 0)."""
    diffusers = pytest.importorskip("diffusers")
    sde, steps = VP, 8
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=sde.ddpm(1000).betas[1:].tolist(),
        solver_order=2,
        solver_type=variant,
        predict_x0=prediction == "data",
    )
    sched.set_timesteps(steps)
    sched.sigmas = sched.sigmas.to(F64)
    sched.sigmas[0] = math.exp(-float(sde.log_snr(float(sde.T))))
    times = sde.t_from_log_snr(-torch.log(sched.sigmas[:-1])).to(F64).clamp(max=float(sde.T))
    score, x_T = GAUSS.score_fn(sde), _x_T(sde, 16)
    x, theirs = x_T * float(sched.init_noise_sigma), []
    for t, k in zip(times.tolist(), sched.timesteps, strict=True):
        eps = -float(sde.marginal(t)[1]) * score(x, torch.full((x.shape[0],), t, dtype=F64))
        x = sched.step(eps, k, x).prev_sample
        theirs.append(x)
    ours: list = []
    solvers.sample(
        sde,
        score,
        x_T=x_T,
        solver="unipc",
        grid=times,
        order=2,
        variant=variant,
        prediction=prediction,
        callback=lambda i, t, y: ours.append(y.clone()),
    )
    for a, b in zip(ours, theirs[:-1], strict=True):  # their last step is our denoising
        assert float((a - b).abs().max()) < 1e-9 * float(b.abs().max())


def test_unipc_lower_order_final_caps_the_last_step_at_order_two():
    # p = min(order, i + 1, n + 1 - i): only order 3 is lowered (to 2) on the last step
    for order, same in ((2, True), (3, False)):
        a = _states("unipc", UNIFORM6, order=order, lower_order_final=True)[1]
        b = _states("unipc", UNIFORM6, order=order, lower_order_final=False)[1]
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-13) == same, order


# -- torchsde solvers ------------------------------------------------------------------------


def test_torchsde_registration_helper_declares_the_shared_options():
    from solvers.torchsde_solvers import _register

    _register("t_tsde", 1.5, 2, "ref")(_user_solver)
    spec = solvers.get("t_tsde")
    assert (spec.kind, spec.order, spec.evals_per_step, spec.reference) == ("sde", 1.5, 2, "ref")
    assert spec.options == {"adaptive": False, "rtol": 1e-3, "atol": 1e-3}
    assert spec.affine and spec.is_affine() and not spec.is_affine(adaptive=True)
    for name in ("torchsde_euler", "torchsde_milstein", "torchsde_srk", "torchsde_reversible_heun"):
        assert solvers.get(name).options == spec.options and solvers.get(name).kind == "sde"


@pytest.mark.filterwarnings("ignore:Numerical solution is not guaranteed")
def test_adaptive_torchsde_counts_the_accepted_steps_that_tile_the_interval(monkeypatch):
    from solvers import torchsde_solvers as ts

    made = []

    class Keep(ts._RecordingBrownian):
        __slots__ = ()

        def __init__(self, bm, ctx):
            super().__init__(bm, ctx)
            made.append(self)

    monkeypatch.setattr(ts, "_RecordingBrownian", Keep)
    _, st = solvers.sample(
        VP,
        GAUSS.score_fn(VP),
        x_T=_x_T(VP),
        solver="torchsde_euler",
        adaptive=True,
        rtol=1e-2,
        atol=1e-2,
        generator=torch.Generator().manual_seed(0),
    )
    calls = made[0].calls
    assert len(calls) % 3 == 0
    tries = []
    for k in range(0, len(calls), 3):  # each try: the full step, then its two halves
        (a, b), (a1, m), (m2, b2) = calls[k : k + 3]
        assert a1 == a and m2 == m and b2 == b and math.isclose(m, (a + b) / 2, rel_tol=1e-12)
        tries.append((a, b))
    # the accepted tries are those the next try continues from; they tile [0, T - t_end]
    accepted = [cur for cur, nxt in zip(tries, tries[1:], strict=False) if nxt[0] == cur[1]] + [
        tries[-1]
    ]
    assert accepted[0][0] == 0.0 and math.isclose(accepted[-1][1], VP.T - VP.default_t_end)
    assert all(p[1] == q[0] for p, q in zip(accepted, accepted[1:], strict=False))
    assert len(tries) > len(accepted) > 3  # some steps were rejected
    assert st.steps == len(accepted)


# -- native SDE solvers ----------------------------------------------------------------------


@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion", "ancestral"])
def test_zero_corrector_steps_is_the_predictor_alone(predictor):
    runs = {}
    for key, opts in {"zero": {"corrector_steps": 0}, "none": {"corrector": "none"}}.items():
        runs[key] = solvers.sample(
            VP,
            GAUSS.score_fn(VP),
            x_T=_x_T(VP),
            solver="predictor_corrector",
            steps=5,
            predictor=predictor,
            generator=torch.Generator().manual_seed(0),
            **opts,
        )
    assert torch.equal(runs["zero"][0], runs["none"][0]) and runs["zero"][1].nfe == 6
    assert solvers.get("predictor_corrector").is_affine(corrector_steps=0)
    assert not solvers.get("predictor_corrector").is_affine()


def test_fresh_increments_need_an_interval_and_give_no_levy_area():
    from solvers.torchsde_solvers import _FreshIncrements

    bm = _FreshIncrements(_context(VP), torch.zeros(3, 2, dtype=F64), "none")
    msg = r"^fresh increments need an interval \(ta, tb\) and provide no Levy area A$"
    with pytest.raises(ValueError, match=msg):
        bm(0.1)
    with pytest.raises(ValueError, match=msg):
        bm(0.1, 0.2, return_A=True)
    assert bm(0.1, 0.2).shape == (3, 2)


def test_only_reversible_heun_warns_about_coarse_steps():
    kw = {"x_T": _x_T(VP), "steps": 5, "generator": torch.Generator().manual_seed(0)}
    with pytest.warns(
        RuntimeWarning, match=r"^torchsde_reversible_heun with steps=5: its parasitic mode"
    ):
        solvers.sample(VP, GAUSS.score_fn(VP), solver="torchsde_reversible_heun", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("torchsde_euler", "torchsde_milstein", "torchsde_srk"):
            solvers.sample(VP, GAUSS.score_fn(VP), solver=name, **kw)


@pytest.mark.filterwarnings("ignore:Numerical solution is not guaranteed")
def test_adaptive_torchsde_is_seeded_reports_its_end_and_milstein_is_euler():
    TOL = {"rtol": 1e-2, "atol": 1e-2}
    runs = {}
    for name, seed in (("torchsde_euler", 1), ("torchsde_euler", 2), ("torchsde_milstein", 1)):
        seen: list = []
        out, st = solvers.sample(
            VP,
            GAUSS.score_fn(VP),
            x_T=_x_T(VP),
            solver=name,
            adaptive=True,
            denoise=False,
            generator=torch.Generator().manual_seed(seed),
            callback=lambda i, t, x, seen=seen: seen.append((t, x)),
            **TOL,
        )
        assert len(seen) == 1 and seen[0][0] == VP.default_t_end and torch.equal(seen[0][1], out)
        runs[name, seed] = out, st.steps
    again = solvers.sample(
        VP,
        GAUSS.score_fn(VP),
        x_T=_x_T(VP),
        solver="torchsde_euler",
        adaptive=True,
        denoise=False,
        generator=torch.Generator().manual_seed(1),
        **TOL,
    )[0]
    assert torch.equal(again, runs["torchsde_euler", 1][0])
    assert not torch.allclose(runs["torchsde_euler", 2][0], runs["torchsde_euler", 1][0])
    # additive noise: Milstein's correction is exactly 0, so on the same Brownian path it is Euler
    assert torch.equal(runs["torchsde_milstein", 1][0], runs["torchsde_euler", 1][0])
    assert runs["torchsde_milstein", 1][1] == runs["torchsde_euler", 1][1]


# -- sample(): argument errors by their full message, warnings, progress, overflow ------------


def test_unknown_options_list_the_valid_ones_or_none():
    from solvers.resolve import check_options

    with pytest.raises(
        ValueError,
        match=r"^unknown option\(s\) \['snr'\] for solver 'ode_euler'; valid options: none$",
    ):
        solvers.sample(VP, GAUSS.score_fn(VP), x_T=_x_T(VP), solver="ode_euler", snr=0.1)
    msg = r"^unknown option\(s\) \['k'\] for solver 'ddim'; valid options: eta=0.0 \(and grid, seed\)$"
    with pytest.raises(ValueError, match=msg):
        check_options(solvers.get("ddim"), {"k": 1}, extra=("grid", "seed"))
    check_options(solvers.get("ddim"), {"grid": 1, "eta": 0.5}, extra=("grid",))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (3, 2)}, r"shape=\(3, 2\) does not match x_T.shape=\(6, 2\)"),
        ({"x_T": torch.tensor(1.0, dtype=F64)}, "x_T must have a batch dimension"),
        (
            {"x_T": torch.zeros(0, 2, dtype=F64)},
            r"the batch is empty \(state shape \(0, 2\)\); expected >= 1 sample",
        ),
        (
            {"x_T": torch.zeros(2, 2, dtype=torch.int64)},
            "x_T has dtype torch.int64; expected a floating-point tensor",
        ),
        ({"x_T": None}, "give either shape or x_T"),
    ],
)
def test_sample_names_a_bad_start_state(kwargs, message):
    args = {"x_T": _x_T(VP), **kwargs}
    with pytest.raises(ValueError, match=f"^{message}$"):
        solvers.sample(VP, GAUSS.score_fn(VP), solver="ddim", steps=2, **args)


def test_a_hook_needs_a_fixed_step_solver_by_message():
    msg = r"^solver 'ode_adaptive' is adaptive \(it chooses its own steps\); a before_step hook needs a fixed-step solver$"
    with pytest.raises(ValueError, match=msg):
        solvers.sample(
            VP, GAUSS.score_fn(VP), x_T=_x_T(VP), solver="ode_adaptive", before_step=lambda x, t: x
        )


@pytest.mark.filterwarnings("ignore:Numerical solution is not guaranteed")
def test_the_steps_warning_of_tolerance_driven_runs_points_at_the_caller():
    msg = (
        r"^solver 'torchsde_euler' chooses its own steps from rtol/atol; steps=5 at most sets its "
        r"first trial step \(stats.steps reports the steps taken\)$"
    )
    kw = {"x_T": _x_T(VP), "solver": "torchsde_euler", "steps": 5, "rtol": 0.05, "atol": 0.05}
    with pytest.warns(UserWarning, match=msg) as record:
        solvers.sample(VP, GAUSS.score_fn(VP), adaptive=True, **kw)
    # the caller's line (under mutmut its trampoline adds one frame between the test and sample)
    assert Path(record[0].filename).name in (Path(__file__).name, "trampoline.py")
    with warnings.catch_warnings():  # fixed steps: steps is the step count, no warning
        warnings.simplefilter("error")
        solvers.sample(VP, GAUSS.score_fn(VP), adaptive=False, **kw)


def test_progress_bar_counts_the_steps(capsys, monkeypatch):
    import functools

    from solvers import sampling

    # redraw on every update (a short run would otherwise show only its first frame)
    monkeypatch.setattr(
        sampling, "tqdm", functools.partial(sampling.tqdm, mininterval=0, miniters=1)
    )
    solvers.sample(VP, GAUSS.score_fn(VP), x_T=_x_T(VP), solver="ddim", steps=7, progress=True)
    err = capsys.readouterr().err
    assert "7/7" in err and "/8" not in err and "/9" not in err and "14/" not in err
    solvers.sample(VP, GAUSS.score_fn(VP), x_T=_x_T(VP), solver="ddim", steps=7)
    assert capsys.readouterr().err == ""


def test_a_nan_at_the_first_adaptive_evaluation_is_step_0():
    def score(x, t):
        return torch.full_like(x, math.nan)

    with pytest.raises(solvers.NonFiniteScoreError, match=r"at step 0 \(t=1\);"):
        solvers.sample(VP, score, x_T=_x_T(VP), solver="ode_adaptive")


def test_a_finite_score_whose_sum_overflows_is_not_called_non_finite():
    x = torch.ones(4, 2, dtype=torch.float32)

    def score(x, t):  # every entry finite, their float32 sum is inf
        return torch.full_like(x, 3e38)

    out, st = solvers.sample(VP, score, x_T=x, solver="ode_euler", grid=[1.0, 0.5], denoise=False)
    assert st.nfe == 1 and out.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Numerical solution is not guaranteed")
def test_adaptive_torchsde_runs_without_a_generator():
    out, st = solvers.sample(
        VP,
        GAUSS.score_fn(VP),
        x_T=_x_T(VP),
        solver="torchsde_euler",
        adaptive=True,
        rtol=0.05,
        atol=0.05,
    )
    assert out.shape == (6, 2) and bool(torch.isfinite(out).all()) and st.steps > 1


# -- restart ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"restart_steps": 2.5}, "restart_steps=2.5 must be a non-negative integer"),
        ({"restarts": -1}, "restarts=-1 must be a non-negative integer"),
        ({"restarts": 1, "restart_steps": 0}, "restart_steps=0 must be >= 1 when restarts > 0"),
        ({"s_min": 0.3, "s_max": 0.3}, "s_max=0.3 must exceed s_min=0.3"),
    ],
)
def test_restart_options_are_checked_by_value(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        solvers.sample(VP, GAUSS.score_fn(VP), x_T=_x_T(VP), solver="restart", **options)


def test_restart_reports_its_main_path_and_restarts_uniformly_in_log_snr():
    rec, seen = [], []
    out, st = solvers.sample(
        VP,
        _recording_score(VP, rec),
        x_T=_x_T(VP),
        solver="restart",
        steps=24,
        denoise=False,
        restarts=1,
        restart_steps=4,
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x: seen.append((t, x.clone())),
    )
    times = [t for t, _ in seen]
    assert all(isinstance(x, torch.Tensor) and x.shape == (6, 2) for _, x in seen)
    assert times == sorted(times, reverse=True) and times[-1] == VP.default_t_end
    assert torch.equal(seen[-1][1], out) and len(seen) == 24 - 4
    # the restart: a jump up to t_b (sigma~ = s_max = 0.3), then 4 Heun steps uniform in log-SNR
    first = rec[0::2]  # the first evaluation of each Heun step
    b = next(k for k in range(1, len(first)) if first[k] > first[k - 1])
    lam = [float(VP.log_snr(t)) for t in first[b : b + 4]]
    assert math.isclose(lam[0], -math.log(0.3), rel_tol=1e-9)
    steps = [q - p for p, q in zip(lam, lam[1:], strict=False)]
    assert max(steps) - min(steps) < 1e-9 * abs(steps[0])
    lam_a = float(VP.log_snr(first[b + 4]))  # where the restart ends: the main path resumes
    assert math.isclose(lam[0] + 4 * steps[0], lam_a, rel_tol=1e-9)


# -- sde_adaptive's exponential-integrator weights against their integrals ----------------------


@pytest.mark.parametrize("a", [0.0, 5e-5, 9.9e-5, 2e-4, 9.9e-4, 1.1e-3, 0.05, 0.5, 3.0, 40.0])
def test_sde_adaptive_weights_are_their_integrals(a):
    import mpmath

    from solvers.sde_adaptive import _c1, _j1

    mpmath.mp.dps = 40
    a_ = mpmath.mpf(a)
    j1 = mpmath.quad(lambda v: mpmath.exp(-a_ * (1 - v)) * v, [0, 1])  # int_0^1 e^{-a(1-v)} v dv
    c1 = mpmath.quad(lambda u: mpmath.exp(-u) * u / a_, [0, a_]) if a > 0 else mpmath.mpf(0)
    got_j1 = float(_j1(torch.tensor([a], dtype=F64))[0])
    got_c1 = float(_c1(torch.tensor([a], dtype=F64))[0])
    # below the switch points the two-term series' next term bounds the error: a^3/120 relative
    # to 1/2 at a = 1e-3 (1.7e-11) and h^2/4 at h = 1e-4 (2.5e-9); above them, round-off
    assert math.isclose(got_j1, float(j1), rel_tol=3e-11), (got_j1, float(j1))
    assert math.isclose(got_c1, float(c1), rel_tol=3e-9, abs_tol=1e-300), (got_c1, float(c1))


def test_sde_adaptive_brownian_path_is_refined_extended_and_consumed():
    """Rejection sampling with memory: a shorter retry splits the stored increment by the
    Brownian bridge, a longer one extends the path, an accepted step consumes its part."""
    from solvers.sde_adaptive import BrownianStack

    x = torch.zeros(2, 3, dtype=F64)
    on = torch.tensor([True, True])
    z = [torch.randn(2, 3, generator=torch.Generator().manual_seed(k), dtype=F64) for k in range(5)]
    path = BrownianStack(x)
    w1 = path.increment(torch.tensor([1.0, 1.0], dtype=F64), on, z[0])  # fresh: W_1 = z0
    torch.testing.assert_close(w1, z[0], rtol=0, atol=1e-15)
    # rejected; retry over 0.4: the bridge W_0.4 = 0.4 W_1 + sqrt(0.4 * 0.6 / 1) z1
    w04 = path.increment(torch.tensor([0.4, 0.4], dtype=F64), on, z[1])
    torch.testing.assert_close(w04, 0.4 * z[0] + math.sqrt(0.24) * z[1], rtol=0, atol=1e-15)
    # over the whole stored path again: exactly W_1; beyond it: W_1 + sqrt(0.5) z3
    w1_again = path.increment(torch.tensor([1.0, 1.0], dtype=F64), on, z[2])
    torch.testing.assert_close(w1_again, z[0], rtol=0, atol=1e-14)
    w15 = path.increment(torch.tensor([1.5, 1.5], dtype=F64), on, z[3])
    torch.testing.assert_close(w15, z[0] + math.sqrt(0.5) * z[3], rtol=0, atol=1e-14)
    # accept a step of 0.4 on row 0 only: row 0's path now starts at 0.4, row 1's is unchanged
    path.increment(torch.tensor([0.4, 0.4], dtype=F64), on, z[4])
    path.accept(torch.tensor([True, False]))
    rest = path.increment(torch.tensor([1.1, 1.5], dtype=F64), on, z[4])
    torch.testing.assert_close(rest[0], (z[0] + math.sqrt(0.5) * z[3] - w04)[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(rest[1], w15[1], rtol=0, atol=1e-14)
    # an inactive row (the solver passes it h = 0) gets W = 0 and keeps its path
    frozen = path.increment(torch.tensor([0.0, 0.2], dtype=F64), torch.tensor([False, True]), z[2])
    assert torch.equal(frozen[0], torch.zeros(3, dtype=F64))
    again = path.increment(torch.tensor([1.1, 1.5], dtype=F64), on, z[2])
    torch.testing.assert_close(again[0], rest[0], rtol=0, atol=1e-14)


@pytest.mark.filterwarnings("ignore:solver 'sde_adaptive' chooses its own steps")
@pytest.mark.parametrize("sde", [VP, VE], ids=["VP", "VE"])
def test_sde_adaptive_exp_pair_starts_at_T_whatever_the_steps_hint(sde):
    """The exponential pair integrates from the grid's first time ``T`` in log-SNR and ignores
    the ``steps`` hint (the paper's pair takes ``T - t_1`` as its first trial step): the same
    seed gives the same samples for any hint, and a hint of one step (``t_1 = t_end``) still
    moves the state."""
    x_T, score = _x_T(sde, n=64), GAUSS.score_fn(sde)

    def run(steps: int, method: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        return solvers.sample(
            sde, score, x_T=x_T, solver="sde_adaptive", steps=steps, method=method,
            generator=g, denoise=False,
        )[0]  # fmt: skip

    one, many = run(1, "exp"), run(40, "exp")
    assert torch.equal(one, many)
    assert (one - x_T).abs().max() > 0.1
    assert not torch.equal(run(1, "em"), run(40, "em"))


@pytest.mark.parametrize("lam_end", [0.5, 4.0], ids=["end-just-above-SNR-1", "default-like"])
def test_sde_adaptive_exp_pair_stops_at_snr_1_between_its_forms(lam_end):
    """Steps of the exponential pair never cross SNR 1 (log-SNR 0), where it changes from the
    data to the noise prediction: an accepted step lands exactly there, also when the run ends
    just above it."""
    sde = VP
    t_end = float(sde.t_from_log_snr(torch.tensor(lam_end, dtype=F64)))
    t_switch = float(sde.t_from_log_snr(torch.tensor(0.0, dtype=F64)))
    seen: list[float] = []
    solvers.sample(
        sde, GAUSS.score_fn(sde), x_T=_x_T(sde, n=64), solver="sde_adaptive", t_end=t_end,
        generator=torch.Generator().manual_seed(3), denoise=False,
        callback=lambda i, t, x: seen.append(t),
    )  # fmt: skip
    assert min(abs(t - t_switch) for t in seen) < 1e-12, (t_switch, seen)
    assert seen[-1] == pytest.approx(t_end, abs=1e-15)
