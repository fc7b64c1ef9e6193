"""Every example runs end to end (``--quick``: tiny step counts) and produces what it promises."""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def load(name: str):
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    path = os.path.join(EXAMPLES, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_toy_2d_quick(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "toy"
    results = load("toy_2d").main(["--quick", "--out", str(out)])
    assert set(results) == {"euler_maruyama", "ddim", "dpm_solver_pp_2m", "floor"}
    for solver in ("euler_maruyama", "ddim", "dpm_solver_pp_2m"):
        row = results[solver]
        assert all(math.isfinite(v) for v in row.values()), row
        # the exact-score run puts the modes' weights right even at a handful of steps
        assert row["modes_exact"] < 0.15
    assert (out / "samples.png").stat().st_size > 0
    assert (out / "checkpoint.pt").exists()
    # a second run reuses the finished checkpoint instead of training again
    again = load("toy_2d").main(["--quick", "--out", str(out)])
    assert again["ddim"]["sw2_net"] == results["ddim"]["sw2_net"]


def test_digits_unet_quick(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "digits"
    results = load("digits_unet").main(["--quick", "--out", str(out)])
    assert math.isfinite(results["bpd"]) and results["bpd"] > 0
    # a 4-step model is no better than per-pixel histograms (the full run scores 2.22 bits/dim
    # against the histograms' 2.44, see README); check the baseline is sane
    assert 0 < results["histogram_bpd"] < 4.09  # log2(17): a uniform guess over the 17 levels
    assert (out / "samples.png").stat().st_size > 0


def test_digits_histogram_baseline_is_exact_for_a_known_distribution():
    import torch

    digits = load("digits_unet")
    # every training pixel takes level 0 or 16 equally often: with add-one smoothing over the 17
    # levels p(0) = (n/2 + 1) / (n + 17)
    n = 100
    train = torch.cat([torch.full((n // 2, 1, 2, 2), -1.0), torch.full((n // 2, 1, 2, 2), 1.0)])
    test = torch.full((3, 1, 2, 2), -1.0)
    expected = -math.log2((n / 2 + 1) / (n + 17))
    assert digits.histogram_bpd(train, test) == pytest.approx(expected, rel=1e-12)


def test_accuracy_study_quick(tmp_path):
    out = tmp_path / "study"
    orders = load("accuracy_study").main(["--quick", "--out", str(out), "--no-plot"])
    assert set(orders) == {"grids", "custom_solver", "my_mixture"}
    custom = {(o["solver"], o["target"]): o for o in orders["custom_solver"]}
    # the user-registered exponential Heun solver converges at (close to) its declared order 2
    # already between 10 and 20 NFE on the 16-D Gaussian (1.7 there, 1.9 from 20 to 80)
    fitted = custom[("example_exp_heun", "gaussian_iso_16d")]["fitted"]
    assert custom[("example_exp_heun", "gaussian_iso_16d")]["declared"] == 2
    # measured 1.7 here; the old upper bound 3.0 let a third-order (mis-declared) solver pass
    assert 1.5 < fitted < 2.3
    for name in ("grids", "custom_solver", "my_mixture"):
        assert (out / f"{name}.csv").stat().st_size > 0
        assert (out / f"{name}.json").stat().st_size > 0
