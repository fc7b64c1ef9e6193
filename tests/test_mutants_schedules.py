"""Tests written to kill surviving mutants of schedules/ (mutation testing, TESTING.md).

Each checks behaviour against a closed form or a documented contract (grid endpoints and
spacing, argument errors naming the bad value), not the code's own expression.
"""

from __future__ import annotations

import math

import pytest
import torch

import schedules as S
from schedules.parametrization import convert, from_eps, to_eps, tweedie_denoise
from scoresde import VESDE, VPSDE

F64 = torch.float64


@pytest.mark.parametrize("steps, t_start, t_end", [(1, 1.0, 0.0), (7, 1.0, 1e-3), (50, 2.5, 0.5)])
def test_uniform_grid_has_equal_steps_and_exact_ends(steps, t_start, t_end):
    g = S.uniform_grid(steps, t_start, t_end)
    assert g.dtype == F64 and g.shape == (steps + 1,)
    assert g[0].item() == t_start and g[-1].item() == t_end
    d = g[:-1] - g[1:]
    torch.testing.assert_close(d, torch.full_like(d, (t_start - t_end) / steps), rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps, t_start, t_end", [(1, 1.0, 0.0), (8, 1.0, 1e-3), (40, 3.0, 0.25)])
def test_quadratic_grid_is_uniform_in_the_square_root_of_the_distance_to_t_end(
    steps, t_start, t_end
):
    g = S.quadratic_grid(steps, t_start, t_end)
    assert g[0].item() == t_start and g[-1].item() == t_end
    u = ((g - t_end) / (t_start - t_end)).sqrt()
    torch.testing.assert_close(
        u, torch.linspace(1.0, 0.0, steps + 1, dtype=F64), rtol=0, atol=1e-12
    )
    if steps > 1:  # dense near t_end: the last step is the smallest
        d = g[:-1] - g[1:]
        assert d[-1] < d[0]


@pytest.mark.parametrize("process", [VPSDE(), VESDE(), S.CosineVP()], ids=repr)
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_grid_is_uniform_in_the_rho_root_of_the_noise_level(process, rho):
    t_start, t_end, steps = process.T, 2e-3, 6
    g = S.karras_grid(process, steps, t_start, t_end, rho=rho)
    assert g[0].item() == t_start and g[-1].item() == t_end
    noise = torch.exp(-process.log_snr(g))  # sigma / alpha
    root = noise ** (1 / rho)
    d = root[1:] - root[:-1]
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-7, atol=0)
    assert bool((d < 0).all())
    via_name = S.time_grid("karras", process, steps, t_start, t_end, rho=rho)
    torch.testing.assert_close(via_name, g, rtol=0, atol=0)


def test_karras_default_rho_is_seven_and_the_grid_depends_on_rho():
    sde = VPSDE()
    g7 = S.karras_grid(sde, 5, 1.0, 1e-3)
    torch.testing.assert_close(g7, S.karras_grid(sde, 5, 1.0, 1e-3, rho=7.0), rtol=0, atol=0)
    assert not torch.allclose(g7, S.karras_grid(sde, 5, 1.0, 1e-3, rho=3.0))


@pytest.mark.parametrize("rho", [0.0, -2.0, math.nan])
def test_karras_rejects_a_non_positive_rho_by_value(rho):
    with pytest.raises(ValueError, match=rf"rho={rho!r} must be positive"):
        S.karras_grid(VPSDE(), 5, 1.0, 1e-3, rho=rho)


@pytest.mark.parametrize("process", [VPSDE(), VESDE(), S.CosineVP(), S.VELinear()], ids=repr)
def test_log_snr_grid_has_equal_log_snr_steps(process):
    t_start, t_end, steps = process.T, 1e-2, 9
    g = S.log_snr_grid(process, steps, t_start, t_end)
    assert g[0].item() == t_start and g[-1].item() == t_end
    lam = process.log_snr(g)
    d = lam[1:] - lam[:-1]
    expected = (process.log_snr(t_end) - process.log_snr(t_start)).item() / steps
    torch.testing.assert_close(d, torch.full_like(d, expected), rtol=1e-9, atol=0)
    via_name = S.time_grid("log_snr", process, steps, t_start, t_end)
    torch.testing.assert_close(via_name, g, rtol=0, atol=0)


def test_time_grid_dispatches_by_name():
    p = VPSDE()
    assert torch.equal(S.time_grid("uniform", p, 4, 1.0, 0.1), S.uniform_grid(4, 1.0, 0.1))
    assert torch.equal(S.time_grid("quadratic", p, 4, 1.0, 0.1), S.quadratic_grid(4, 1.0, 0.1))
    assert not torch.equal(
        S.time_grid("uniform", p, 4, 1.0, 0.1), S.time_grid("quadratic", p, 4, 1.0, 0.1)
    )


@pytest.mark.parametrize("grid", list(S.GRIDS))
def test_a_grid_finer_than_float64_is_refused_naming_grid_and_steps(grid):
    # 10 steps across 1e-15 at t = 1 are below one ulp (2.2e-16): points coincide
    with pytest.raises(
        ValueError, match=rf"the {grid} grid with 10 steps on .*not strictly decreasing"
    ):
        S.time_grid(grid, VPSDE(), 10, 1.0, 1.0 - 1e-15)


@pytest.mark.parametrize(
    "steps, t_start, t_end, match",
    [
        (True, 1.0, 0.0, "steps=True must be a positive integer"),
        (2.0, 1.0, 0.0, "steps=2.0 must be a positive integer"),
        (-3, 1.0, 0.0, "steps=-3 must be a positive integer"),
        (4, 0.5, 0.5, r"t_start=0.5, t_end=0.5: expected t_start > t_end >= 0"),
        (4, 0.5, -0.1, r"t_start=0.5, t_end=-0.1"),
    ],
)
def test_grid_arguments_are_checked_by_value(steps, t_start, t_end, match):
    for make in (S.uniform_grid, S.quadratic_grid):
        with pytest.raises(ValueError, match=match):
            make(steps, t_start, t_end)
    with pytest.raises(ValueError, match=match):
        S.log_snr_grid(VPSDE(), steps, t_start, t_end)
    with pytest.raises(ValueError, match=match):
        S.karras_grid(VPSDE(), steps, t_start, t_end)


def test_one_step_and_t_end_zero_are_allowed():
    g = S.uniform_grid(1, 1.0, 0.0)
    assert g.tolist() == [1.0, 0.0]


def test_unknown_grid_lists_every_grid():
    with pytest.raises(
        ValueError,
        match="unknown grid 'cubic'; available grids: uniform, quadratic, karras, log_snr$",
    ):
        S.time_grid("cubic", VPSDE(), 4, 1.0, 0.1)


class _Float32Times:
    """A process whose inverse log-SNR answers in float32 (the protocol does not fix a dtype)."""

    def __init__(self, inner):
        self.inner = inner

    def log_snr(self, t):
        return self.inner.log_snr(t)

    def t_from_log_snr(self, lam):
        return self.inner.t_from_log_snr(lam).to(torch.float32)


@pytest.mark.parametrize("grid", ["karras", "log_snr"])
def test_grids_are_float64_whatever_the_process_returns(grid):
    g = S.time_grid(grid, _Float32Times(VESDE()), 6, 1.0, 0.01)
    assert g.dtype == F64 and g[0].item() == 1.0 and g[-1].item() == 0.01


# -- schedules: construction inside the test (mutmut cannot see objects built at import) --------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: S.LinearVP(beta_max=-1.0), "beta_max=-1.0 must be a finite positive number"),
        (lambda: S.LinearVP(T=0.0), "T=0.0 must be a finite positive number"),
        (lambda: S.LinearVP(beta_min=math.inf), "beta_min=inf must be a finite positive number"),
        (lambda: S.CosineVP(s=0.0), "s=0.0 must be a finite positive number"),
        (lambda: S.CosineVP(T=-1.0), "T=-1.0 must be a finite positive number"),
        (lambda: S.VEGeometric(sigma_max=0.0), "sigma_max=0.0 must be a finite positive number"),
        (lambda: S.VEGeometric(T=math.nan), "T=nan must be a finite positive number"),
        (lambda: S.VELinear(sigma_max=-1.0), "sigma_max=-1.0 must be a finite positive number"),
        (
            lambda: S.from_config({"beta_min": 0.1}),
            "unknown schedule None; available: LinearVP, CosineVP, VEGeometric, TabulatedVP, VELinear$",
        ),
        (
            lambda: S.LinearVP().t_from_log_snr(torch.tensor([0.0, math.nan])),
            "log-SNR lam contains NaN; expected real numbers$",
        ),
    ],
)
def test_bad_arguments_are_named_with_their_value(make, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        make()


def test_default_arguments_are_the_documented_ones():
    assert S.CosineVP().to_config() == {"name": "CosineVP", "s": 0.008, "T": 0.9946}
    assert S.LinearVP().to_config() == {
        "name": "LinearVP",
        "beta_min": 0.1,
        "beta_max": 20.0,
        "T": 1.0,
    }
    assert S.VEGeometric().to_config() == {
        "name": "VEGeometric",
        "sigma_min": 0.01,
        "sigma_max": 50.0,
        "T": 1.0,
    }
    assert S.VELinear().to_config() == {"name": "VELinear", "sigma_max": 80.0}


def test_repr_eq_and_hash_follow_the_config():
    a, b = S.LinearVP(0.2, 10.0), S.LinearVP(0.2, 10.0)
    assert repr(a) == "LinearVP(beta_min=0.2, beta_max=10.0, T=1.0)"
    assert repr(S.VELinear(30.0)) == "VELinear(sigma_max=30.0)"
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    others = [S.LinearVP(0.2, 11.0), S.CosineVP(), S.VEGeometric(), S.VELinear()]
    assert all(a != o for o in others)
    assert a != object() and a != "LinearVP"
    assert len({hash(x) for x in [a, *others]}) == 5  # the hash depends on the config
    for x in [a, *others]:
        assert S.from_config(x.to_config()) == x


@pytest.mark.parametrize("T", [3.0, 0.25])
def test_ve_geometric_reaches_sigma_max_at_any_end_time(T):
    sched = S.VEGeometric(sigma_min=0.02, sigma_max=20.0, T=T)
    assert math.isclose(sched.sigma(T).item(), 20.0, rel_tol=1e-12)
    assert math.isclose(sched.sigma(T / 2).item(), math.sqrt(0.02 * 20.0), rel_tol=1e-12)
    # beta = d sigma^2 / dt = 2 log(r) / T sigma^2
    assert math.isclose(sched.beta(T).item(), 2 * math.log(1000.0) / T * 400.0, rel_tol=1e-12)


@pytest.mark.parametrize("T", [1e-4, 1e-6, 2.0])
def test_t_equal_to_a_small_or_large_T_is_accepted_and_above_it_refused(T):
    sched = S.LinearVP(T=T)
    for t in (T, torch.tensor(T), torch.tensor([0.0, T]), torch.tensor(T, dtype=torch.float32)):
        assert bool(torch.isfinite(sched.sigma(t)).all())
    for t in (torch.tensor(1.5 * T), torch.tensor(1.5 * T, dtype=torch.float32), 1.5 * T):
        with pytest.raises(ValueError, match=r"t=.* is outside the time interval \[0, T="):
            sched.sigma(t)


def test_an_integer_time_tensor_gives_float64():
    out = S.LinearVP().sigma(torch.tensor([0, 1]))
    assert out.dtype == F64
    assert out[0].item() == 0.0 and math.isclose(out[1].item(), math.sqrt(-math.expm1(-10.05)))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_t_from_log_alpha_inverts_log_alpha_in_the_input_dtype(dtype):
    for sched in (
        S.LinearVP(),
        S.CosineVP(),
        S.TabulatedVP(torch.linspace(0.99, 0.01, 10, dtype=F64)),
    ):
        t = torch.tensor([0.05, 0.3, 0.7], dtype=dtype)
        back = sched.t_from_log_alpha(sched.log_alpha(t))
        assert back.dtype == dtype
        torch.testing.assert_close(back, t, rtol=1e-5 if dtype == torch.float32 else 1e-9, atol=0)


# -- TabulatedVP and VELinear --------------------------------------------------------------------

AB = torch.tensor([0.99, 0.9, 0.7, 0.45, 0.2, 0.05], dtype=F64)  # unequal log-SNR slopes


def test_tabulated_vp_is_exact_at_its_table_times():
    sched = S.TabulatedVP(AB)
    n = len(AB)
    assert sched.T == 1.0 and sched.num_timesteps == n
    t_k = (torch.arange(n, dtype=F64) + 1) / n
    torch.testing.assert_close(sched.alpha(t_k) ** 2, AB, rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.time_of(list(range(n))), t_k, rtol=0, atol=0)
    torch.testing.assert_close(
        sched.timestep_of(t_k), torch.arange(n, dtype=F64), rtol=0, atol=1e-12
    )
    assert sched.alpha(0.0).item() == 1.0
    with pytest.raises(ValueError, match=r"t=1.5 is outside"):
        sched.sigma(1.5)


@pytest.mark.parametrize("bad", [[6], [-1], [0, 5, 6]])
def test_tabulated_time_of_names_the_valid_timesteps(bad):
    with pytest.raises(ValueError, match=rf"^timesteps must lie in 0..{len(AB) - 1}$"):
        S.TabulatedVP(AB).time_of(bad)


@pytest.mark.parametrize(
    "table, message",
    [
        ([0.5], "alphas_cumprod has 1 entries; expected at least 2"),
        ([0.9, 0.5, 0.0], r"alphas_cumprod must lie strictly inside \(0, 1\)"),
        ([1.0, 0.5], r"alphas_cumprod must lie strictly inside \(0, 1\)"),
        ([0.9, 0.5, 0.5], "alphas_cumprod must be strictly decreasing"),
        ([0.9, 0.5, 0.7], "alphas_cumprod must be strictly decreasing"),
    ],
)
def test_tabulated_rejects_bad_tables_by_reason(table, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        S.TabulatedVP(torch.tensor(table, dtype=F64))


def _right_derivative(fn, t: float, h: float = 1e-7) -> float:
    return (fn(t + h).item() - fn(t).item()) / h


@pytest.mark.parametrize(
    "where", ["below t_0", "at t_0", "in the first segment", "at t_2", "inside"]
)
def test_tabulated_beta_is_the_right_derivative_of_the_integral(where):
    sched = S.TabulatedVP(AB)
    t = {
        "below t_0": 0.07,
        "at t_0": 1 / 6,
        "in the first segment": 0.25,
        "at t_2": 0.5,
        "inside": 0.61,
    }[where]
    assert math.isclose(
        sched.beta(t).item(), _right_derivative(sched.integral_beta, t), rel_tol=1e-5
    )


def test_tabulated_log_snr_round_trips_in_every_segment():
    sched = S.TabulatedVP(AB)
    t = torch.tensor([0.01, 0.1, 1 / 6, 0.2, 0.3, 1 / 3, 0.45, 0.55, 0.8, 0.95, 1.0], dtype=F64)
    torch.testing.assert_close(sched.t_from_log_snr(sched.log_snr(t)), t, rtol=1e-12, atol=1e-15)
    # below t_0 the noise-to-signal ratio is linear in t: lambda = lambda_0 - log(t / t_0)
    lam0 = 0.5 * math.log(0.99 / 0.01)
    assert math.isclose(sched.log_snr(1 / 12).item(), lam0 + math.log(2.0), rel_tol=1e-12)


def test_ve_linear_is_the_edm_noise_level():
    sched = S.VELinear(sigma_max=30.0)
    assert sched.T == 30.0
    t = torch.tensor([0.5, 2.0, 30.0], dtype=F64)
    torch.testing.assert_close(sched.sigma(t), t, rtol=0, atol=0)
    torch.testing.assert_close(sched.integral_beta(t), t * t, rtol=1e-15, atol=0)
    torch.testing.assert_close(sched.beta(t), 2 * t, rtol=1e-15, atol=0)
    torch.testing.assert_close(sched.t_from_log_snr(sched.log_snr(t)), t, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="t=31.0 is outside"):
        sched.sigma(31.0)


@pytest.mark.parametrize("state_dtype", [torch.float32, F64])
def test_per_sample_coefficients_give_per_sample_conversions_in_the_state_dtype(state_dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 2, generator=g, dtype=state_dtype)
    eps = torch.randn(4, 3, 2, generator=g, dtype=state_dtype)
    alpha = torch.tensor([0.9, 0.5, 0.2, 1.0], dtype=F64)
    sigma = torch.tensor([0.3, 0.8, 0.97, 2.0], dtype=F64)
    score = -eps / sigma.to(state_dtype).view(-1, 1, 1)
    x0 = tweedie_denoise(x, score, alpha, sigma)
    assert x0.dtype == state_dtype
    for b in range(4):  # each sample with its own scalar coefficients
        a, s_ = float(alpha[b]), float(sigma[b])
        torch.testing.assert_close(x0[b], (x[b] + s_ * s_ * score[b]) / a)
        for kind in ("x0", "score", "v"):
            pred = from_eps(eps, kind, x, alpha, sigma)
            assert pred.dtype == state_dtype
            torch.testing.assert_close(
                pred[b], from_eps(eps[b : b + 1], kind, x[b : b + 1], a, s_)[0]
            )
            torch.testing.assert_close(to_eps(pred, kind, x, alpha, sigma), eps)
            torch.testing.assert_close(convert(pred, kind, "eps", x, alpha, sigma), eps)
