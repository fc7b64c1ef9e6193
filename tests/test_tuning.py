"""Tuned time grids: the grid family, tune_grid's contract, the JSON round trip, and that tuning
helps on a mixture measured on fresh samples."""

from __future__ import annotations

import json
import math

import pytest
import torch

import solvers
from schedules import LinearVP, time_grid
from scoresde import VESDE, VPSDE, GaussianMixture, load_grid, save_grid, tune_grid
from scoresde.accuracy import gaussian_w2
from scoresde.harness import steps_for_budget
from scoresde.tuning import TuneResult, sliced_w2_sq, warped_log_snr_grid

SDE = VPSDE(LinearVP())


def _mixture() -> GaussianMixture:
    """A held-out 2-D mixture (no built-in target): five unequal modes of different widths."""
    angle = torch.tensor([0.3, 1.5, 2.6, 3.9, 5.2], dtype=torch.float64)
    means = 1.6 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    weights = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1], dtype=torch.float64)
    variances = torch.tensor([0.04, 0.02, 0.03, 0.01, 0.05], dtype=torch.float64)
    return GaussianMixture(weights, means, variances)


def _per_mode_w2(x: torch.Tensor, target: GaussianMixture) -> float:
    """Bures W2 between each mode's responsibility-weighted sample moments and the true component,
    averaged with the true weights."""
    r = target.responsibilities(x)
    mass = r.sum(0)
    m = (r.T @ x) / mass[:, None]
    c = x[None] - m[:, None]
    cov = torch.einsum("bk,kbi,kbj->kij", r, c, c) / mass[:, None, None]
    return sum(
        float(w) * gaussian_w2(m[k], cov[k], target.means[k], target.covs[k])
        for k, w in enumerate(target.weights)
    )


@pytest.mark.parametrize("sde", [SDE, VESDE()])
def test_warped_grid_is_log_snr_grid_at_power_one(sde):
    ref = time_grid("log_snr", sde, 7, float(sde.T), 1e-3)
    got = warped_log_snr_grid(sde, 7, float(sde.T), 1e-3, 1.0)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    dense_end = warped_log_snr_grid(sde, 7, float(sde.T), 1e-3, 0.5)
    lam = sde.log_snr(dense_end)
    assert dense_end.dtype == torch.float64 and float(dense_end[-1]) == 1e-3
    assert bool((lam[1:] > lam[:-1]).all())
    steps = lam.diff()
    assert float(steps[-1]) < float(steps[0])  # p < 1: smaller log-SNR steps near t_end


def test_warped_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="power"):
        warped_log_snr_grid(SDE, 5, 1.0, 1e-3, 0.0)
    with pytest.raises(ValueError, match="steps"):
        warped_log_snr_grid(SDE, 0, 1.0, 1e-3, 1.0)
    with pytest.raises(ValueError, match="t_end"):
        warped_log_snr_grid(SDE, 5, 1.0, 0.0, 1.0)


def test_sliced_distance_ignores_order_and_sees_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    u = torch.eye(3, dtype=torch.float64)
    assert sliced_w2_sq(x, x[torch.randperm(500, generator=g)], u) == 0.0  # a distribution metric
    assert sliced_w2_sq(x, 1.1 * x, u) == pytest.approx(0.01 * float((x**2).mean()), rel=1e-9)
    assert sliced_w2_sq(x, torch.full_like(x, math.nan), u) == math.inf


@pytest.fixture(scope="module")
def tuned() -> TuneResult:
    target = _mixture()
    return tune_grid(
        SDE,
        target.score_fn(SDE),
        "dpm_solver_pp_2m",
        8,
        (512, 2),
        torch.Generator().manual_seed(0),
        return_result=True,
    )


def test_tuned_grid_contract(tuned):
    g = tuned.grid
    steps = steps_for_budget("dpm_solver_pp_2m", 8)
    assert g.dtype == torch.float64 and g.shape == (steps + 1,)
    assert float(g[0]) == SDE.T and bool((g[1:] < g[:-1]).all())
    assert float(g[-1]) == tuned.t_end >= SDE.default_t_end
    assert tuned.runs <= 40 and tuned.objective <= tuned.default_objective
    # the budget counts the final denoising evaluation, as check does; t_end comes from the grid
    _, stats = solvers.sample(
        SDE, _mixture().score_fn(SDE), (4, 2), solver="dpm_solver_pp_2m", grid=g
    )
    assert stats.nfe == 8 and stats.t_end == float(g[-1])


def test_tune_grid_is_seeded():
    def run(seed: int) -> torch.Tensor:
        score = _mixture().score_fn(SDE)
        small = dict(powers=(0.5, 1.0), t_end_factors=(1.0, 4.0), max_runs=8)
        return tune_grid(
            SDE, score, "ddim", 6, (64, 2), torch.Generator().manual_seed(seed), **small
        )

    assert torch.equal(run(3), run(3))


def test_tuning_helps_on_a_mixture_on_fresh_samples(tuned):
    """Fails if tuning stops helping: the tuned grid must at least halve the default grid's
    per-mode W2 excess over the exact-sample floor, on samples the tuning never saw."""
    target = _mixture()
    n = 8000
    floor = _per_mode_w2(
        target.sample(n, generator=torch.Generator().manual_seed(11), dtype=torch.float64), target
    )
    x_T = SDE.prior_sample((n, 2), generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    steps = steps_for_budget("dpm_solver_pp_2m", 8)
    score = target.score_fn(SDE)
    default = solvers.sample(SDE, score, x_T=x_T, solver="dpm_solver_pp_2m", steps=steps).samples
    tuned_out = solvers.sample(
        SDE, score, x_T=x_T, solver="dpm_solver_pp_2m", grid=tuned.grid
    ).samples
    excess_default = _per_mode_w2(default, target) - floor
    excess_tuned = _per_mode_w2(tuned_out, target) - floor
    assert excess_tuned < 0.5 * excess_default, (excess_tuned, excess_default)


def test_tune_grid_rejects_bad_input():
    score = _mixture().score_fn(SDE)
    with pytest.raises(ValueError, match="cannot pay"):
        tune_grid(SDE, score, "ode_heun", 2, (16, 2))
    with pytest.raises(ValueError, match="adaptive"):
        tune_grid(SDE, score, "ode_adaptive", 10, (16, 2))
    with pytest.raises(ValueError, match="unknown option"):
        tune_grid(SDE, score, "ddim", 10, (16, 2), bogus=1.0)
    with pytest.raises(ValueError, match="unknown solver"):
        tune_grid(SDE, score, "nope", 10, (16, 2))
    with pytest.raises(ValueError, match="max_runs"):
        tune_grid(SDE, score, "ddim", 10, (16, 2), max_runs=3)


def test_json_round_trip_is_exact(tmp_path, tuned):
    path = save_grid(tmp_path / "sub" / "grid.json", tuned, sde=SDE)
    grid, meta = load_grid(path)
    assert torch.equal(grid, tuned.grid) and grid.dtype == torch.float64
    assert meta["solver"] == "dpm_solver_pp_2m" and meta["nfe"] == 8
    assert meta["steps"] == len(grid) - 1 and meta["t_end"] == float(grid[-1])
    assert meta["sde"] == SDE.to_config() and meta["tuning"]["runs"] == tuned.runs
    plain = save_grid(tmp_path / "plain.json", [1.0, 0.5, 0.01], solver="ddim", nfe=3)
    assert load_grid(plain)[0].tolist() == [1.0, 0.5, 0.01]


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"format": "other", "grid": [1.0, 0.1]}, "format"),
        ({"format": "scoresde-grid/1", "grid": [1.0, 1.0]}, "strictly decreasing"),
        ({"format": "scoresde-grid/1", "grid": [1.0, -0.1]}, "non-positive"),
        ({"format": "scoresde-grid/1", "grid": [1.0]}, "at least 2"),
        ({"format": "scoresde-grid/1", "grid": "abc"}, "sequence of times"),
    ],
)
def test_load_grid_rejects_bad_files(tmp_path, doc, match):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=match):
        load_grid(path)


def test_load_grid_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_grid(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_grid(tmp_path / "bad.json")
