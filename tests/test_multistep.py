"""UniPC, DPM-Solver++(3M) and iPNDM (solvers/multistep.py): convergence orders on the exact
Gaussian by exact moment propagation, identities of their coefficients, and parity with
diffusers' UniPC.

The order error is ``|mean - mean*| + ||cov - cov*||_F`` against the exact law of the continuous
probability flow at ``t_end`` (no denoising step), as in test_solvers_convergence.py. Step ranges
are where each solver is asymptotic on the grid used; the log-SNR grid (uniform steps in
lambda) is avoided for the order fits because the multistep error constants nearly cancel there
on this Gaussian (DPM-Solver++(3M) shows slope 4 there, a super-convergence of the test problem,
not of the method).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers
from scoresde import VESDE, VPSDE, Gaussian, GaussianMixture, SubVPSDE
from scoresde.accuracy import exact_output_moments, exact_solution_moments
from solvers.multistep import _adams_bashforth_weights, _unipc_weights

GAUSS = Gaussian(
    torch.tensor([1.0, -0.5, 0.3]),
    torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]]),
)
SDES = {"VP": VPSDE(), "subVP": SubVPSDE(), "VE": VESDE()}


def moment_error(sde_name: str, solver: str, steps: int, grid: str, **options) -> float:
    sde = SDES[sde_name]
    mean, cov = exact_output_moments(
        sde, GAUSS.score_fn(sde), 3, solver, steps, grid=grid, denoise=False, **options
    )
    ref_mean, ref_cov = exact_solution_moments(sde, GAUSS.mean, GAUSS.cov, "ode", denoise=False)
    return float(torch.linalg.norm(mean - ref_mean) + torch.linalg.norm(cov - ref_cov))


# (solver, options, expected order, grid, steps); measured slopes on VP / sub-VP / VE:
# 3m karras 3.05 / 3.0 / 3.03; unipc p=1 2.0, p=2 3.04, p=3 4.1 / - / 4.0 (UniC: p + 1); ipndm
# karras 3.8-3.9 (its low-order warm-start steps keep it just below 4 at these step counts)
CASES = [
    ("dpm_solver_pp_3m", {}, 3.0, "karras", [40, 80, 160]),
    ("unipc", {}, 3.0, "karras", [40, 80, 160]),
    ("unipc", {"order": 1}, 2.0, "karras", [40, 80, 160]),
    ("unipc", {"order": 3}, 4.0, "karras", [40, 80, 160]),
    ("unipc", {"variant": "bh1"}, 3.0, "quadratic", [40, 80, 160]),
    ("unipc", {"prediction": "noise"}, 3.0, "karras", [40, 80, 160]),
    ("ipndm", {}, 4.0, "karras", [80, 160, 320]),
]


PARAMS = [
    pytest.param(sde_name, *case, id=f"{case[0]}-{case[1]}-{sde_name}")
    for case in CASES
    for sde_name in ("VP", "subVP", "VE")
]


@pytest.mark.parametrize("sde_name, solver, options, order, grid, steps", PARAMS)
def test_convergence_order(sde_name, solver, options, order, grid, steps):
    errors = [moment_error(sde_name, solver, n, grid, **options) for n in steps]
    slope = -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])
    detail = ", ".join(f"{n}: {e:.2e}" for n, e in zip(steps, errors, strict=True))
    assert abs(slope - order) <= 0.25, f"{solver} {options} on {sde_name}: {slope:.2f} ({detail})"


def test_declared_orders():
    assert solvers.get("dpm_solver_pp_3m").order == 3.0
    assert solvers.get("unipc").order == solvers.get("unipc").options["order"] + 1
    assert solvers.get("ipndm").order == solvers.get("ipndm").options["order"] == 4


def test_third_order_beats_second_order_at_equal_nfe():
    """At 40 steps on VP's Karras grid the order-3+ methods beat 2M by 3-5x (ratios 0.21 3M,
    0.34 UniPC, 0.34 iPNDM)."""
    e2 = moment_error("VP", "dpm_solver_pp_2m", 40, "karras")
    for name in ("dpm_solver_pp_3m", "unipc", "ipndm"):
        assert moment_error("VP", name, 40, "karras") < 0.5 * e2, name


# ------------------------------------------------------------------------------------------------
# coefficient identities
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "nodes, expected",
    [
        ([0.0], [1.0]),
        ([0.0, -1.0], [3 / 2, -1 / 2]),
        ([0.0, -1.0, -2.0], [23 / 12, -16 / 12, 5 / 12]),
        ([0.0, -1.0, -2.0, -3.0], [55 / 24, -59 / 24, 37 / 24, -9 / 24]),
    ],
)
def test_ipndm_weights_on_uniform_steps_are_the_papers(nodes, expected):
    assert _adams_bashforth_weights(nodes) == pytest.approx(expected, abs=1e-12)


def test_ipndm_weights_integrate_polynomials_exactly():
    nodes = [0.0, -0.8, -1.9, -3.3]  # uneven steps
    beta = _adams_bashforth_weights(nodes)
    for degree in range(4):
        quad = sum(b * tau**degree for b, tau in zip(beta, nodes, strict=True))
        assert quad == pytest.approx(1.0 / (degree + 1), abs=1e-12)


def test_unipc_weights_solve_the_order_conditions():
    """``sum_j rho_j r_j^(k-1) = k! psi_k(hh) / B(h)`` with ``psi_k`` from its series."""
    r, hh = [-0.7, 1.0], -0.4
    b_h = math.expm1(hh)
    rho = _unipc_weights(r, hh, b_h)

    def psi(k: int) -> float:  # sum_{m>=0} hh^(m+1) / (m+k+1)!, the series of the recursion
        return sum(hh ** (m + 1) / math.factorial(m + k + 1) for m in range(30))

    for k in (1, 2):
        lhs = sum(p * rj ** (k - 1) for p, rj in zip(rho, r, strict=True))
        assert lhs == pytest.approx(math.factorial(k) * psi(k) / b_h, rel=1e-12)
    assert _unipc_weights([1.0], hh, b_h) == [0.5]


# ------------------------------------------------------------------------------------------------
# cost and validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["unipc", "dpm_solver_pp_3m", "ipndm"])
def test_one_evaluation_per_step(solver):
    sde = VPSDE()
    x, stats = solvers.sample(
        sde,
        GAUSS.score_fn(sde),
        (7, 3),
        solver=solver,
        steps=6,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert stats.nfe == 6 + 1  # the corrector reuses the next step's evaluation
    assert x.shape == (7, 3) and bool(torch.isfinite(x).all())


@pytest.mark.parametrize(
    "solver, options, match",
    [
        ("unipc", {"order": 4}, "order=4"),
        ("unipc", {"order": 0}, "order=0"),
        ("unipc", {"variant": "bh3"}, "bh1, bh2"),
        ("unipc", {"prediction": "eps"}, "data, noise"),
        ("unipc", {"lower_order_final": 1}, "lower_order_final=1"),
        ("ipndm", {"order": 5}, "1..4"),
        ("ipndm", {"order": 2.0}, "order=2.0"),
        ("dpm_solver_pp_3m", {"lower_order_final": "yes"}, "True or False"),
    ],
)
def test_bad_options_name_the_value(solver, options, match):
    sde = VPSDE()
    with pytest.raises(ValueError, match=match):
        solvers.sample(sde, GAUSS.score_fn(sde), (2, 3), solver=solver, steps=4, **options)


# ------------------------------------------------------------------------------------------------
# parity with diffusers' UniPCMultistepScheduler
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order, steps", [(2, 10), (3, 8), (1, 5)])
def test_unipc_matches_diffusers(order, steps):
    """Same algorithm, same times, same start: identical to round-off in float64.

    diffusers builds its noise levels in float32; they are cast to float64 after
    ``set_timesteps`` (so every coefficient it computes is float64) and our grid is the times of
    exactly those noise levels (the first snapped to ``sigma(T) / alpha(T)``, which float32 had
    moved 3e-8 above ``T``). Its last step to sigma = 0 is our final denoising step. Variant bh2
    only: diffusers' bh1 returns NaN on that last step (``B(h) = hh = -inf`` times a zero sum).
    """
    diffusers = pytest.importorskip("diffusers")
    sde = VPSDE()
    target = GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.5, 0.5], [1.0, -0.5]]),
        torch.stack([0.05 * torch.eye(2), torch.tensor([[0.2, 0.05], [0.05, 0.1]])]),
    )
    score = target.score_fn(sde)
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=sde.ddpm(1000).betas[1:].tolist(),
        solver_order=order,
    )
    sched.set_timesteps(steps)
    sched.sigmas = sched.sigmas.to(torch.float64)
    sched.sigmas[0] = math.exp(-float(sde.log_snr(float(sde.T))))
    lam = -torch.log(sched.sigmas[:-1])
    times = sde.t_from_log_snr(lam).to(torch.float64).clamp(max=float(sde.T))

    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T * float(sched.init_noise_sigma)
    for t, k in zip(times.tolist(), sched.timesteps, strict=True):
        _, sigma = sde.marginal(t)
        eps = -float(sigma) * score(x, torch.full((x.shape[0],), t, dtype=torch.float64))
        x = sched.step(eps, k, x).prev_sample
    ours, stats = solvers.sample(sde, score, x_T=x_T, solver="unipc", grid=times, order=order)
    assert stats.nfe == steps
    assert float((ours - x).abs().max()) < 1e-9 * float(x.abs().max())
