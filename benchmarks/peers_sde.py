"""Stochastic samplers against the stochastic peers: per-mode W2 excess over its floor.

Every method samples the harness's mixture targets under the VP SDE with the exact score, from
the same ``x_T`` (20,000 samples), at each NFE budget (the final denoising step counted); the
error is ``scoresde.harness.per_mode_w2`` minus its floor (the same metric on 20,000 exact
samples, mean over 4 seeds). Adapters come from ``benchmarks/peer_adapters.py``; the peers'
schedulers this study adds (diffusers SA-Solver, DPM-Solver++ SDE) are registered here.

Rerun (after ``pip install -r requirements-bench.txt`` and k-diffusion ``--no-deps``):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_sde.py --nfes 10 20

``--tuned`` adds our SDE solvers on grids from ``scoresde.tune_grid`` (tuned per target and
budget on its own probe batch, never on the table's ``x_T`` or noise); ``--targets`` also takes
``heldout_mixture_8d`` (benchmarks/tuning.py's random mixture).
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
from tuning import target_by_name  # noqa: E402

import solvers  # noqa: E402
from scoresde import VPSDE, tune_grid  # noqa: E402
from scoresde.harness import per_mode_w2, stratified_sample  # noqa: E402

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
# (solver, noise option, values): each budget's grid is tuned for every value, and the value whose
# tuned grid has the smallest probe objective is the "chosen" row (the probe sees only the score)
TUNED = [
    ("ancestral", None, (None,)),
    ("dpm_solver_pp_2m_sde", "eta", (1.0, 0.5)),
    ("dpm_solver_pp_3m_sde", "eta", (1.0, 0.5)),
    ("sa_solver", "tau", (1.0, 0.7)),
]
PROBE_SEED = 2026  # the tuning's probe batch and noise; the table's x_T / noise use seeds 7 / 11


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


def tuned_rows(
    name: str,
    key: str | None,
    values,
    problem: pa.Problem,
    target,
    fl: float,
    x_T,
    nfes,
    probe: int,
) -> list[str]:
    """Rows of ``name`` on the grids ``tune_grid`` picks for each budget (its own probe seed):
    at the first value of the noise option, and at the value the probe objective chooses."""
    full, chosen = [], []
    for b in nfes:
        runs = []
        for v in values:
            options = {} if key is None else {key: v}
            try:
                res = tune_grid(
                    problem.sde, problem.score_fn, name, b, (probe, x_T.shape[1]),
                    torch.Generator().manual_seed(PROBE_SEED), return_result=True, **options,
                )  # fmt: skip
                x, stats = solvers.sample(
                    problem.sde, problem.score_fn, x_T=x_T.clone(), solver=name, grid=res.grid,
                    noise_fn=pa.GaussianNoise(11), generator=torch.Generator().manual_seed(0),
                    **options,
                )  # fmt: skip
                err = per_mode_w2(x.to(torch.float64), target) - fl
                p = "default" if res.power is None else f"p={res.power:.2f}"
                cell = f"{err:.4f} ({stats.nfe}; {p}, t_end={res.t_end:.1e}"
                runs.append((res.objective, cell, ")"))
            except Exception as e:  # noqa: BLE001
                runs.append((float("inf"), f"n/a: {type(e).__name__}", ""))
        full.append(runs[0][1] + runs[0][2])
        best = min(range(len(runs)), key=lambda k: runs[k][0])
        obj, cell, close = runs[best]
        chosen.append(cell + (f"; {key}={values[best]}" if key and close else "") + close)
    label = name if key is None else f"{name} {key}={values[0]}"
    rows = [f"| scoresde:{label} | tuned | True | " + " | ".join(full) + " |"]
    if len(values) > 1:
        rows.append(f"| scoresde:{name} {key} chosen | tuned | True | " + " | ".join(chosen) + " |")
    return rows


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
        "--tuned",
        action="store_true",
        help="add our SDE solvers on grids from scoresde.tune_grid (probe batch of --probe "
        f"samples, seed {PROBE_SEED})",
    )
    p.add_argument("--probe", type=int, default=8192)
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
        target = target_by_name(tname)
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
        if args.tuned:
            for name, key, values in TUNED:
                for row in tuned_rows(
                    name, key, values, problem, target, fl, x_T, args.nfes, args.probe
                ):
                    print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
