"""Schedules and grids: identities as hypothesis properties, float32 stability, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import schedules as S
from scoresde import VESDE, VPSDE, SubVPSDE

settings.register_profile("scoresde", max_examples=60, deadline=None)
settings.load_profile("scoresde")

linear_vp = st.builds(
    lambda lo, span: S.LinearVP(beta_min=lo, beta_max=lo + span),
    st.floats(0.01, 5.0),
    st.floats(0.0, 40.0),
)
cosine_vp = st.builds(S.CosineVP, s=st.floats(1e-4, 0.1), T=st.floats(0.5, 0.999))
ve_geometric = st.builds(
    lambda lo, ratio: S.VEGeometric(sigma_min=lo, sigma_max=lo * ratio),
    st.floats(1e-3, 1.0),
    st.floats(1.5, 1e4),
)
vp_schedules = st.one_of(linear_vp, cosine_vp)
any_schedule = st.one_of(linear_vp, cosine_vp, ve_geometric)
unit = st.floats(0.0, 1.0)


@given(vp_schedules, unit)
def test_vp_alpha_sigma_preserve_variance(schedule, u):
    t = torch.tensor(u * schedule.T, dtype=torch.float64)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones((), dtype=torch.float64), atol=1e-12)


@given(any_schedule, st.floats(1e-4, 1.0))
def test_log_snr_inverse_round_trips(schedule, u):
    t = torch.tensor(u * schedule.T, dtype=torch.float64)
    back = schedule.t_from_log_snr(schedule.log_snr(t))
    assert abs(float(back - t)) <= 1e-9 * max(1.0, float(t)) + 1e-12


@given(any_schedule, st.floats(1e-4, 1.0))
def test_log_snr_matches_alpha_over_sigma(schedule, u):
    t = torch.tensor(u * schedule.T, dtype=torch.float64)
    expected = torch.log(schedule.alpha(t) / schedule.sigma(t))
    assert torch.allclose(schedule.log_snr(t), expected, rtol=1e-9, atol=1e-9)


@given(any_schedule)
def test_sigma_positive_and_increasing_and_log_snr_decreasing(schedule):
    t = torch.linspace(1e-5, 1.0, 257, dtype=torch.float64) * schedule.T
    sigma, lam = schedule.sigma(t), schedule.log_snr(t)
    assert bool((sigma > 0).all())
    assert bool((sigma[1:] > sigma[:-1]).all())
    assert bool((lam[1:] < lam[:-1]).all())


@given(any_schedule, st.floats(0.0, 0.99))
def test_beta_is_derivative_of_integral(schedule, u):
    t = u * schedule.T
    h = 1e-6 * schedule.T
    num = (schedule.integral_beta(t + h) - schedule.integral_beta(t)) / h
    assert math.isclose(float(num), float(schedule.beta(t + h / 2)), rel_tol=1e-5, abs_tol=1e-6)


@given(vp_schedules, st.floats(0.0, 0.999))
def test_vp_integral_is_minus_two_log_alpha(schedule, u):
    t = torch.tensor(u * schedule.T, dtype=torch.float64)
    assert torch.allclose(schedule.integral_beta(t), -2 * schedule.log_alpha(t), atol=1e-12)
    assert torch.allclose(schedule.t_from_log_alpha(schedule.log_alpha(t)), t, atol=1e-9)


@pytest.mark.parametrize("schedule", [S.LinearVP(), S.CosineVP(), S.VEGeometric()], ids=repr)
def test_float32_stable_near_zero(schedule):
    t32 = torch.tensor([1e-5, 1e-4, 1e-3], dtype=torch.float32)
    t64 = t32.to(torch.float64)
    sigma32, sigma64 = schedule.sigma(t32), schedule.sigma(t64)
    assert sigma32.dtype == torch.float32
    assert bool((sigma32 > 0).all())
    assert torch.allclose(sigma32.double(), sigma64, rtol=1e-6)
    assert bool(torch.isfinite(schedule.log_snr(t32)).all())


def test_reference_values():
    """Closed forms at hand-checked points (score-SDE constants)."""
    vp = S.LinearVP()
    # I(1) = 0.1 + 19.9 / 2 = 10.05
    assert math.isclose(float(vp.integral_beta(1.0)), 10.05, rel_tol=1e-12)
    assert math.isclose(float(vp.alpha(1.0)), math.exp(-10.05 / 2), rel_tol=1e-12)
    ve = S.VEGeometric()
    assert math.isclose(float(ve.sigma(1.0)), 50.0, rel_tol=1e-12)
    assert math.isclose(float(ve.sigma(0.0)), 0.01, rel_tol=1e-12)
    cos = S.CosineVP()
    assert math.isclose(float(cos.alpha(0.0)), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("process", [S.LinearVP(), S.CosineVP(), VPSDE(), SubVPSDE(), VESDE()])
@given(steps=st.integers(1, 400), t_end=st.floats(1e-5, 0.5), grid=st.sampled_from(list(S.GRIDS)))
def test_grids_monotone_with_exact_endpoints(process, steps, t_end, grid):
    T = process.T
    g = S.time_grid(grid, process, steps, T, t_end)
    assert g.dtype == torch.float64 and g.shape == (steps + 1,)
    assert float(g[0]) == T and float(g[-1]) == t_end
    assert bool((g[1:] < g[:-1]).all())


def test_log_snr_grid_is_uniform_in_log_snr():
    sde = VPSDE()
    g = S.log_snr_grid(sde, 10, 1.0, 1e-3)
    lam = sde.log_snr(g)
    d = lam[1:] - lam[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-9)


def test_karras_grid_matches_edm_formula():
    sde = VESDE()
    g = S.karras_grid(sde, 5, 1.0, 1e-5, rho=7.0)
    s = sde.marginal(g)[1]
    smax, smin = float(s[0]), float(s[-1])
    i = torch.arange(6, dtype=torch.float64) / 5
    expected = (smax ** (1 / 7) + i * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    assert torch.allclose(s, expected, rtol=1e-9)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: S.LinearVP(beta_min=20.0, beta_max=0.1), "beta_min=20.0 > beta_max=0.1"),
        (lambda: S.LinearVP(beta_min=-1.0), "beta_min=-1.0"),
        (lambda: S.VEGeometric(sigma_min=-0.01), "sigma_min=-0.01"),
        (lambda: S.VEGeometric(sigma_min=5.0, sigma_max=1.0), "sigma_min=5.0 >= sigma_max=1.0"),
        (lambda: S.CosineVP(T=1.0), "T=1.0"),
        (lambda: S.LinearVP().sigma(1.5), r"t=1.5 is outside"),
        (lambda: S.LinearVP().alpha(torch.tensor([0.2, -0.1])), r"t=-0.1"),
        (lambda: S.time_grid("cubic", S.LinearVP(), 10, 1.0, 1e-3), "available grids: uniform"),
        (lambda: S.uniform_grid(0, 1.0, 1e-3), "steps=0"),
        (lambda: S.uniform_grid(10, 1e-3, 1.0), "t_start=0.001"),
        (lambda: S.from_config({"name": "Foo"}), "available: LinearVP"),
    ],
)
def test_bad_parameters_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_config_round_trip():
    for schedule in [S.LinearVP(0.2, 10.0), S.CosineVP(0.01, 0.99), S.VEGeometric(0.02, 80.0)]:
        assert S.from_config(schedule.to_config()) == schedule
