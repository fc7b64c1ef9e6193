"""``scoresde tune`` and ``scoresde sample --grid grid.json`` end to end on a tiny checkpoint."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from scoresde.cli import main
from scoresde.tuning import load_grid

TINY_MLP = ["--hidden", "32", "--depth", "1", "--batch", "64", "--no-progress"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("moons")
    assert main(["train", "--data", "moons", "--steps", "20", "--out", str(run), *TINY_MLP]) == 0
    return str(run / "checkpoint.pt")


def test_tune_then_sample_with_the_grid(ckpt, tmp_path, capsys):
    grid_file = tmp_path / "grid.json"
    tune = ["tune", "--ckpt", ckpt, "--solver", "dpm_solver_pp_2m", "--nfe", "6"]
    assert (
        main(
            [
                *tune,
                "--probe",
                "64",
                "--max-runs",
                "26",
                "--reference-rtol",
                "1e-4",
                "--out",
                str(grid_file),
            ]
        )
        == 0
    )
    assert "tuned dpm_solver_pp_2m at 6 NFE (5 steps)" in capsys.readouterr().out
    grid, meta = load_grid(grid_file)
    assert meta["solver"] == "dpm_solver_pp_2m" and meta["nfe"] == 6 and len(grid) == 6
    assert meta["sde"]["name"] == "VPSDE" and meta["tuning"]["runs"] <= 26
    assert meta["tuning"]["ckpt"] == ckpt and meta["tuning"]["probe"] == 64

    out = tmp_path / "s"
    sample = ["sample", "--ckpt", ckpt, "--n", "50", "--grid", str(grid_file), "--out", str(out)]
    assert main(sample) == 0  # the solver comes from the grid file
    assert "(50 samples, 6 NFE each)" in capsys.readouterr().out
    x = np.load(out / "samples.npy")
    assert x.shape == (50, 2) and np.isfinite(x).all()


def test_grid_file_errors(ckpt, tmp_path, capsys):
    other = tmp_path / "ve.json"
    doc = {
        "format": "scoresde-grid/1",
        "solver": "ddim",
        "sde": {"name": "VESDE", "schedule": {"name": "VEGeometric"}},
        "grid": [1.0, 0.5, 0.01],
    }
    other.write_text(json.dumps(doc))
    base = ["sample", "--ckpt", ckpt, "--n", "4", "--out", str(tmp_path / "s")]
    assert main([*base, "--grid", str(other)]) == 2
    assert "tuned for the SDE" in capsys.readouterr().err
    assert main([*base, "--grid", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    doc["sde"] = None
    other.write_text(json.dumps(doc))
    assert main([*base, "--grid", str(other), "--t-end", "0.01"]) == 2
    assert "--t-end cannot be combined" in capsys.readouterr().err
    tune = ["tune", "--ckpt", ckpt, "--nfe", "6", "--out", str(tmp_path / "g.json")]
    assert main([*tune, "--solver", "nope"]) == 2
    assert "unknown solver 'nope'; available solvers:" in capsys.readouterr().err
    assert main([*tune, "--solver", "ode_heun", "--nfe", "2"]) == 2
    assert "cannot pay for one step" in capsys.readouterr().err
    assert main([*tune, "--solver", "ddim", "--max-runs", "3"]) == 2
    assert "max_runs=3" in capsys.readouterr().err


def test_check_tuned_shows_tuned_and_default_grids(tmp_path, capsys):
    out = tmp_path / "check"
    args = ["check", "--tuned", "--solvers", "dpm_solver_pp_2m", "--target", "ring_2d"]
    args += ["--nfe", "10", "--samples", "512", "--tune-probe", "256", "--no-plot", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "  dpm_solver_pp_2m   " in text and "  dpm_solver_pp_2m tuned " in text
    doc = json.loads((out / "results.json").read_text())
    rows = {r["solver"]: r for r in doc["records"]}
    assert set(rows) == {"dpm_solver_pp_2m", "dpm_solver_pp_2m tuned"}
    grid = doc["settings"]["tuned_grids"]["ring_2d"]["dpm_solver_pp_2m"]["10"]
    assert len(grid) == 10 and grid[0] == 1.0 and rows["dpm_solver_pp_2m tuned"]["nfe"] == 10
    assert rows["dpm_solver_pp_2m tuned"]["per_mode_w2"] < rows["dpm_solver_pp_2m"]["per_mode_w2"]


def test_grid_file_contents_are_part_of_the_resume_settings(tmp_path):
    from scoresde.commands import sample as sample_cmd
    from scoresde.tuning import save_grid

    path = save_grid(
        tmp_path / "g.json", [1.0, 0.3, 0.02], solver="unipc", nfe=3, options={"order": 1}
    )
    args = sample_cmd.add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(
        ["--ckpt", "c.pt", "--out", "o", "--grid", str(path)]
    )
    sample_cmd._load_grid_file(args)
    assert args.solver == "unipc"
    assert sample_cmd.settings_of(args)["grid_times"] == [1.0, 0.3, 0.02]
    opts = sample_cmd.sampling_options(args)
    assert opts["grid"] == [1.0, 0.3, 0.02] and opts["order"] == 1 and opts["solver"] == "unipc"
