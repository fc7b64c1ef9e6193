"""The imperfect-score study: the perturbations' formulas, the crossover, the CLI flag."""

from __future__ import annotations

import pytest
import torch

from scoresde import VPSDE, Gaussian
from scoresde.harness import (
    crossover_table,
    crossovers,
    parse_score_error,
    perturb_score,
    run_study,
)

SDE = VPSDE()
GAUSS = Gaussian(torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 0.2], [0.2, 0.5]]))


def test_parse_score_error():
    assert parse_score_error("scale:0.1") == ("scale", 0.1)
    assert parse_score_error("lownoise:-0.2") == ("lownoise", -0.2)
    for bad in ("scale", "wobble:0.1", "bias:x", "bias:nan"):
        with pytest.raises(ValueError, match="scale, bias, lownoise|number|finite"):
            parse_score_error(bad)


def test_perturbations_follow_their_formulas_in_eps_units():
    score = GAUSS.score_fn(SDE)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.9, 0.5, 0.1, 0.01, 0.001], dtype=torch.float64)
    alpha, sigma = SDE.marginal(t)
    s = score(x, t)
    d = 0.2
    assert torch.allclose(perturb_score(score, SDE, "scale", d)(x, t), (1 + d) * s)
    # Delta eps = -sigma Delta score
    d_eps = -sigma[:, None] * (perturb_score(score, SDE, "bias", d)(x, t) - s)
    assert torch.allclose(d_eps, d * torch.sin(x))
    d_eps = -sigma[:, None] * (perturb_score(score, SDE, "lownoise", d)(x, t) - s)
    assert torch.allclose(d_eps, d * torch.sin(x) / torch.sqrt(sigma / alpha)[:, None])
    assert float(d_eps[-1].abs().max()) > float(d_eps[0].abs().max())  # grows at low noise


def test_crossover_is_reported_per_target():
    result = run_study(
        ["ddim", "dpm_solver_pp_2m_sde"],
        {"g": GAUSS},
        [6, 12],
        score_error=("scale", 0.2),
    )
    assert set(crossovers(result)) == {"g"}
    table = crossover_table(result)
    assert "crossover NFE" in table and "| g | 6 |" in table
    assert result.settings["score_error"] == "scale:0.2"
    # an imperfect score moves the result away from the exact one
    exact = run_study(["ddim"], {"g": GAUSS}, [12])
    assert result.rows("g", "ddim")[-1].error != exact.rows("g", "ddim")[-1].error
    with pytest.raises(ValueError, match="score error kind"):
        run_study(["ddim"], {"g": GAUSS}, [6], score_error=("wobble", 0.1))


def test_check_cli_score_error(tmp_path, capsys):
    from scoresde.cli import main

    rc = main(
        ["check", "--score-error", "bias:0.1", "--targets", "gaussian_iso_2d", "--nfe", "6",
         "--solvers", "ddim", "sa_solver", "--samples", "64", "--quiet", "--no-plot",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    assert "crossover NFE" in capsys.readouterr().out
    assert main(["check", "--score-error", "bias", "--no-plot", "--out", str(tmp_path)]) == 2


def test_crossover_is_where_stochastic_stays_ahead():
    from types import SimpleNamespace as R

    errors = {10: (1.0, 0.5), 20: (1.0, 2.0), 40: (1.0, 0.5), 80: (1.0, 0.4)}  # (ode, sde)
    records = [
        R(target="t", nfe_budget=b, kind=k, error=e[i], solver=k)
        for b, e in errors.items()
        for i, k in enumerate(("ode", "sde"))
    ]
    assert crossovers(R(targets=["t"], records=records)) == {"t": 40}
    records = [r for r in records if not (r.nfe_budget == 80 and r.kind == "sde")]
    assert crossovers(R(targets=["t"], records=records)) == {"t": None}
