"""Stochastic samplers against the stochastic peers: per-mode W2 excess over its floor.

Every method samples the harness's mixture targets under the VP SDE with the exact score, from
the same ``x_T`` (20,000 samples), at each NFE budget (the final denoising step counted); the
error is ``scoresde.harness.per_mode_w2`` minus its floor (the same metric on 20,000 exact
samples, mean over 4 seeds). Adapters come from ``benchmarks/peer_adapters.py``; the peers'
schedulers this study adds (diffusers SA-Solver, DPM-Solver++ SDE) are registered here.

Rerun (after ``pip install -r requirements-bench.txt`` and k-diffusion ``--no-deps``):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_sde.py --nfes 10 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_adapters as pa  # noqa: E402

import solvers  # noqa: E402
from scoresde import VPSDE  # noqa: E402
from scoresde.harness import get_target, per_mode_w2, stratified_sample  # noqa: E402

pa.DIFFUSERS_SCHEDULERS.setdefault(
    "SASolver", ("SASolverScheduler", "scheduling_sasolver", {}, True)
)
pa.DIFFUSERS_SCHEDULERS.setdefault(
    "DPMSolverMultistepSDE",
    (
        "DPMSolverMultistepScheduler",
        "scheduling_dpmsolver_multistep",
        {"algorithm_type": "sde-dpmsolver++"},
        True,
    ),
)

OURS = [
    ("euler_maruyama", {}),
    ("ancestral", {}),
    ("ddim", {"eta": 1.0}),
    ("dpm_solver_pp_2m_sde", {}),
    ("dpm_solver_pp_3m_sde", {}),
    ("sa_solver", {}),
    ("restart", {}),
]
ODE_REFERENCE = [("dpm_solver_pp_2m", {})]


def ours_with(name: str, options: dict[str, Any], grid: str | None = None) -> pa.Method:
    """``pa.ours`` with solver options (its adapter takes none)."""
    spec = solvers.get(name)
    grid = grid or spec.default_grid

    def run(problem: pa.Problem, x_T, size: int, noise) -> torch.Tensor:
        gen = getattr(noise, "generator", None) if noise is not None else None
        x, _ = solvers.sample(
            problem.sde, problem.score_fn, x_T=x_T, solver=name, steps=size, grid=grid,
            t_end=problem.t_end, noise_fn=noise, generator=gen or torch.Generator().manual_seed(0),
            **options,
        )  # fmt: skip
        return x

    label = name + "".join(f" {k}={v}" for k, v in options.items())
    kind = spec.kind == "sde" or bool(options.get("eta"))
    return pa.Method("scoresde", label, grid, kind, run, "steps")


def peer_methods() -> list[pa.Method]:
    out: list[pa.Method] = []
    for name in ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde"):
        for grid in ("karras", "exponential"):
            try:
                out.append(pa.kdiff(name, grid))
            except Exception as e:  # noqa: BLE001
                print(f"k-diffusion {name}: unavailable ({e})", file=sys.stderr)
    for name in ("SASolver", "DPMSolverMultistepSDE"):
        try:
            out.append(pa.diffusers(name))
        except Exception as e:  # noqa: BLE001
            print(f"diffusers {name}: unavailable ({e})", file=sys.stderr)
    return out


def floor(target, n: int, seeds: int = 4) -> float:
    return (
        sum(
            per_mode_w2(
                stratified_sample(target, n, torch.Generator().manual_seed(100 + k)), target
            )
            for k in range(seeds)
        )
        / seeds
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=["ring_2d", "mixture_16d"])
    p.add_argument("--nfes", nargs="+", type=int, default=[10, 20])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--ours-only", action="store_true")
    p.add_argument(
        "--grids",
        nargs="+",
        default=["default"],
        help="time grids for our samplers (default: each one's own)",
    )
    args = p.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    sde = VPSDE()
    methods = [
        ours_with(n, o, None if g == "default" else g)
        for n, o in OURS + ODE_REFERENCE
        for g in dict.fromkeys(args.grids)
        if g == "default" or g != solvers.get(n).default_grid
    ]
    if not args.ours_only:
        methods += peer_methods()
    print("per-mode W2 excess over the floor (VP, exact score, n =", args.n, ")")
    for tname in args.targets:
        target = get_target(tname)
        problem = pa.Problem(sde, target.score_fn(sde))
        fl = floor(target, args.n)
        dim = target.means.shape[1]
        x_T = torch.randn(args.n, dim, generator=torch.Generator().manual_seed(7))
        print(f"\n## {tname} (floor {fl:.4f})")
        print("| method | grid | stochastic | " + " | ".join(f"NFE {b}" for b in args.nfes) + " |")
        print("|---|---|---|" + "---|" * len(args.nfes))
        for m in methods:
            cells = []
            for b in args.nfes:
                try:
                    size, nfe = pa.size_for_budget(m, b)
                    t0 = time.perf_counter()
                    x = m.run(problem, x_T.clone(), size, pa.GaussianNoise(11))
                    err = per_mode_w2(x.to(torch.float64), target) - fl
                    cells.append(f"{err:.4f} ({nfe})")
                    del t0
                except Exception as e:  # noqa: BLE001
                    cells.append(f"n/a: {type(e).__name__}")
            print(
                f"| {m.label} | {m.grid} | {m.stochastic} | " + " | ".join(cells) + " |", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
