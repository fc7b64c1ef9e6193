"""Deterministic endpoint tests: every schedule and SDE at t = 0 and t = T.

The hypothesis properties in test_schedules.py draw t = 0 only by luck; the endpoints are where
round-off turns into NaN (CosineVP once gave I(0) = -2.7e-20, so sigma(0) = sqrt(-tiny) = NaN).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import schedules as S
from scoresde import VESDE, VPSDE, SubVPSDE

SCHEDULES = [
    S.LinearVP(),
    S.LinearVP(beta_min=0.01, beta_max=0.01),
    S.LinearVP(beta_min=5.0, beta_max=45.0, T=2.0),
    S.CosineVP(),
    S.CosineVP(s=1e-4, T=0.5),
    S.CosineVP(s=0.1, T=0.999),
    S.VEGeometric(),
    S.VEGeometric(sigma_min=1e-3, sigma_max=10.0, T=3.0),
]
VP = [s for s in SCHEDULES if s.variance_preserving]
VE = [s for s in SCHEDULES if not s.variance_preserving]
SDES = [VPSDE(), VPSDE(S.CosineVP()), SubVPSDE(), SubVPSDE(S.CosineVP()), VESDE()]
DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("schedule", VP, ids=repr)
def test_vp_at_zero_is_the_data(schedule, dtype):
    t = torch.zeros((), dtype=dtype)
    assert schedule.integral_beta(t).item() == 0.0
    assert schedule.alpha(t).item() == 1.0
    assert schedule.sigma(t).item() == 0.0
    assert schedule.log_snr(t).item() == math.inf
    assert schedule.t_from_log_snr(torch.tensor(math.inf, dtype=dtype)).item() == 0.0
    assert math.isfinite(schedule.beta(t).item()) and schedule.beta(t).item() > 0


def test_cosine_integral_is_never_negative_at_zero():
    # The old log(cos phi) - log(cos phi0) was negative for ~4% of s in [1e-4, 0.1].
    for s in torch.linspace(1e-4, 0.1, 400, dtype=torch.float64).tolist():
        schedule = S.CosineVP(s=s)
        assert schedule.integral_beta(0.0).item() == 0.0, s
        assert schedule.sigma(0.0).item() == 0.0, s
        assert 0.0 <= schedule.t_from_log_snr(math.inf).item() < 1e-15, s  # phi - phi0 round-off


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("schedule", VE, ids=repr)
def test_ve_endpoints_are_sigma_min_and_sigma_max(schedule, dtype):
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    zero, end = torch.zeros((), dtype=dtype), torch.tensor(schedule.T, dtype=dtype)
    assert schedule.integral_beta(zero).item() == 0.0
    assert math.isclose(schedule.sigma(zero).item(), schedule.sigma_min, rel_tol=rtol)
    assert math.isclose(schedule.sigma(end).item(), schedule.sigma_max, rel_tol=rtol)
    assert schedule.alpha(zero).item() == schedule.alpha(end).item() == 1.0
    assert math.isclose(schedule.log_snr(zero).item(), -math.log(schedule.sigma_min), rel_tol=rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_everything_finite_at_T_and_round_trips(schedule, dtype):
    end = torch.tensor(schedule.T, dtype=dtype)
    values = {
        name: getattr(schedule, name)(end).item()
        for name in ("beta", "integral_beta", "alpha", "sigma", "log_snr")
    }
    assert all(math.isfinite(v) for v in values.values()), values
    assert values["alpha"] > 0 and values["sigma"] > 0 and values["beta"] > 0
    if schedule.variance_preserving:
        assert math.isclose(values["alpha"] ** 2 + values["sigma"] ** 2, 1.0, rel_tol=1e-6)
        assert values["sigma"] <= 1.0  # 1 - exp(-90) rounds to 1 for LinearVP(5, 45, T=2)
    back = schedule.t_from_log_snr(torch.tensor(values["log_snr"], dtype=torch.float64)).item()
    # log_snr(T) was rounded to the dtype before the float64 inverse
    assert math.isclose(back, schedule.T, rel_tol=1e-9 if dtype == torch.float64 else 1e-5)
    # the time check accepts T itself but nothing past it
    with pytest.raises(ValueError, match="outside the time interval"):
        schedule.sigma(schedule.T * 1.01)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_sde_endpoints(sde):
    for t in (0.0, sde.T):
        alpha, sigma = sde.marginal(t)
        assert math.isfinite(alpha.item()) and math.isfinite(sigma.item()), (t, alpha, sigma)
        assert alpha.item() > 0 and sigma.item() >= 0
        assert math.isfinite(sde.diffusion(t).item()) and math.isfinite(sde.drift_coef(t).item())
        lam = sde.log_snr(t)
        assert not math.isnan(lam.item())
        assert math.isclose(sde.t_from_log_snr(lam).item(), t, abs_tol=1e-12, rel_tol=1e-9)
    alpha0, sigma0 = sde.marginal(0.0)
    assert alpha0.item() == 1.0
    if sde.schedule.variance_preserving:
        assert sigma0.item() == 0.0 and sde.log_snr(0.0).item() == math.inf
    # the prior is the marginal at T up to the (tiny) data term
    assert math.isclose(sde.marginal(sde.T)[1].item(), sde.prior_std, rel_tol=1e-3)
    a, s = sde.transition(0.0, sde.T)
    assert math.isfinite(a.item()) and math.isfinite(s.item()) and s.item() > 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: S.CosineVP(s=0.0), "s=0.0 must be a finite positive number"),
        (lambda: S.CosineVP(T=1.0), "T=1.0 must be < 1 for the cosine schedule"),
        (lambda: S.CosineVP(T=-0.5), "T=-0.5 must be a finite positive number"),
        (lambda: S.VEGeometric(sigma_min=2.0, sigma_max=2.0), "sigma_min=2.0 >= sigma_max=2.0"),
        (lambda: S.VEGeometric(sigma_min=-1.0), "sigma_min=-1.0 must be a finite positive"),
        (lambda: S.VEGeometric(sigma_max=math.inf), "sigma_max=inf must be a finite positive"),
        (lambda: S.VEGeometric(T=0.0), "T=0.0 must be a finite positive number"),
        (lambda: S.LinearVP(beta_min=2.0, beta_max=1.0), "beta_min=2.0 > beta_max=1.0"),
    ],
)
def test_bad_schedule_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_t_from_log_snr_keeps_the_dtype_and_rejects_nan(schedule):
    t = 0.3 * schedule.T
    lam = schedule.log_snr(torch.tensor([t], dtype=torch.float32))
    back = schedule.t_from_log_snr(lam)
    assert back.dtype == torch.float32 and math.isclose(back.item(), t, rel_tol=1e-5)
    with pytest.raises(ValueError, match="log-SNR lam contains NaN"):
        schedule.t_from_log_snr(torch.tensor([0.0, math.nan]))
