"""Tests written to kill surviving mutants of solvers/ (mutation testing, TESTING.md).

Each checks behaviour: values against closed forms for Gaussian data (linear score), the
documented bookkeeping of a sampling run, or errors that name the bad value.
"""

from __future__ import annotations

import math

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
