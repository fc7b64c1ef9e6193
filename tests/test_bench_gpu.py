"""benchmarks/gpu.py runs end to end in its --quick CPU mode (the GPU figures need a GPU)."""

from __future__ import annotations

import importlib.util
import pathlib

import solvers

GPU = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_quick_mode_covers_every_solver(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--device", "cpu"])
    assert {r["dtype"] for r in out["training"]} == {"fp32", "bf16"}
    assert all(r["samples_s"] > 0 and r["ratio"] > 0 for r in out["training"])
    rows = {r["solver"]: r for r in out["sampling"]}
    assert set(rows) == set(solvers.available())
    for name, r in rows.items():
        if solvers.get(name).adaptive:
            assert "skipped" in r
        else:
            assert 1 < r["nfe"] <= 20 and r["img_s"] > 0, (name, r)
    assert "trainer / bare" in capsys.readouterr().out
