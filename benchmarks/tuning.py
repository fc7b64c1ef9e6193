"""Tuned time grids against each solver's default grid, with the exact score of analytic targets.

For every target, solver and NFE budget (the final denoising step included):

1. ``scoresde.tune_grid`` on a probe batch (``--probe`` samples, probe seed 0). It sees only the
   score function; its wall and process-CPU seconds are recorded.
2. On FRESH samples (``--n`` prior draws from another seed, never seen by the tuning), the error
   of the default grid and of the tuned grid:

   * mixtures: per-mode W2 (responsibility-weighted moments of each mode against the true
     component, Bures W2, averaged with the true weights), reported as the EXCESS over its floor,
     the same metric on ``--n`` exact target samples (mean of 4 draws);
   * Gaussians: the exact Bures W2 of the output law (moments propagated exactly, no sampling
     noise), excess over the exact probability-flow solution's W2 at the default ``t_end``.

3. Overfitting check (``--overfit-nfe``, default 10): a second grid tuned on probe seed 1, and
   both grids' excess on the same fresh samples. Equal excesses mean the grid does not depend on
   the probe batch it was tuned on.

``heldout_mixture_8d`` is a random mixture drawn here (six modes, random weights, means and
anisotropic covariances); nothing in ``tune_grid`` was developed on it.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tuning.py`` (about 20 min on one core;
``--quick`` for a smoke run; ``--json F`` keeps every row; ``--tables-from F1 F2`` prints the
tables of rows saved by several runs, e.g. one per set of ``--solvers``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

import solvers
from scoresde import VPSDE, GaussianMixture, LinearVP, TuneResult, sample, tune_grid
from scoresde.harness import (
    exact_output_moments,
    exact_solution_moments,
    gaussian_w2,
    get_target,
    per_mode_w2,
    steps_for_budget,
)

COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tuning.py"
SOLVERS = ("ddim", "dpm_solver_pp_2m", "ode_heun", "edm_heun", "ode_rk4")
NEW_SOLVERS = ("unipc", "dpm_solver_pp_3m", "ipndm")  # included when registered
TARGETS = ("gaussian_aniso_8d", "ring_2d", "mixture_16d", "heldout_mixture_8d")
NFES = (5, 10, 20, 50)


def heldout_mixture(d: int = 8, k: int = 6, seed: int = 20261127) -> GaussianMixture:
    """Six modes with Dirichlet-like weights, means at radius ~2, random rotated covariances."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    means = 2.0 * means / means.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))
    scales = 10 ** (-2.0 + 1.5 * torch.rand(k, d, generator=g, dtype=torch.float64))
    covs = q @ torch.diag_embed(scales) @ q.transpose(1, 2)
    return GaussianMixture(weights, means, 0.5 * (covs + covs.transpose(1, 2)))


def target_by_name(name: str) -> GaussianMixture:
    return heldout_mixture() if name == "heldout_mixture_8d" else get_target(name)


class Evaluator:
    """Error of a (solver, grid) on fresh samples, as excess over the metric's floor."""

    def __init__(self, sde, target: GaussianMixture, n: int, seed: int) -> None:
        self.sde, self.target = sde, target
        self.score = target.score_fn(sde)
        self.gaussian = target.num_components == 1
        if self.gaussian:
            m, c = exact_solution_moments(sde, target.mean, target.cov, "ode", sde.default_t_end)
            self.floor = gaussian_w2(m, c, target.mean, target.cov)
        else:
            g = torch.Generator().manual_seed(seed + 1)
            draws = [target.sample(n, generator=g, dtype=torch.float64) for _ in range(4)]
            self.floor = sum(per_mode_w2(x, target) for x in draws) / 4
        shape = (n, target.dim)
        self.x_T = sde.prior_sample(shape, generator=torch.Generator().manual_seed(seed))

    def excess(self, solver: str, steps: int, grid) -> float:
        if self.gaussian:
            m, c = exact_output_moments(self.sde, self.score, self.target.dim, solver, steps, grid)
            return gaussian_w2(m, c, self.target.mean, self.target.cov) - self.floor
        out = sample(self.sde, self.score, x_T=self.x_T, solver=solver, steps=steps, grid=grid)
        return per_mode_w2(out.samples, self.target) - self.floor


def tune(sde, score, solver: str, nfe: int, probe: tuple[int, int], seed: int) -> TuneResult:
    """``tune_grid`` on a probe batch drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return tune_grid(sde, score, solver, nfe, probe, gen, return_result=True)


def run(args: argparse.Namespace) -> list[dict]:
    sde = VPSDE(LinearVP())
    rows = []
    for tname in args.targets:
        target = target_by_name(tname)
        ev = Evaluator(sde, target, args.n, seed=12345)
        for solver in args.solvers:
            for nfe in args.nfes:
                steps = steps_for_budget(solver, nfe)
                if steps < 1:
                    continue
                probe = (args.probe, target.dim)
                wall, cpu = time.perf_counter(), time.process_time()
                res = tune(sde, ev.score, solver, nfe, probe, seed=0)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                row = dict(
                    target=tname,
                    solver=solver,
                    nfe=nfe,
                    floor=ev.floor,
                    default=ev.excess(solver, steps, None),
                    tuned=ev.excess(solver, steps, res.grid),
                    power=res.power,
                    t_end=res.t_end,
                    runs=res.runs,
                    wall_s=wall,
                    cpu_s=cpu,
                )
                if nfe in args.overfit_nfe:
                    other = tune(sde, ev.score, solver, nfe, probe, seed=1)
                    row["tuned_seed1"] = ev.excess(solver, steps, other.grid)
                rows.append(row)
                print(
                    f"{tname:20s} {solver:17s} NFE {nfe:3d}: excess {row['default']:.3g} -> "
                    f"{row['tuned']:.3g} (p={res.power}, t_end={res.t_end:.3g}, "
                    f"{wall:.1f} s wall, {cpu:.1f} s CPU)",
                    flush=True,
                )
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def tables(rows: list[dict]) -> str:
    lines = []
    for tname in dict.fromkeys(r["target"] for r in rows):
        sub = [r for r in rows if r["target"] == tname]
        metric = (
            "exact W2 excess of the output law"
            if tname.startswith("gaussian")
            else "per-mode W2 excess on fresh samples"
        )
        lines += [
            f"\n### {tname}: {metric} (floor {sub[0]['floor']:.3g})\n",
            "| solver | NFE | default grid | tuned grid | gain | tuned, probe seed 1 | power "
            "| t_end | tune s (wall / CPU) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sub:
            gain = r["default"] / r["tuned"] if r["tuned"] > 0 else math.inf
            power = "default" if r["power"] is None else f"{r['power']:.2f}"
            lines.append(
                f"| {r['solver']} | {r['nfe']} | {_fmt(r['default'])} | {_fmt(r['tuned'])} | "
                f"{gain:.1f}x | {_fmt(r.get('tuned_seed1'))} | {power} | {r['t_end']:.2g} | "
                f"{r['wall_s']:.1f} / {r['cpu_s']:.1f} |"
            )
    lines += [
        "\n### Best (solver, grid) per NFE: mean excess over the mixture targets\n",
        "| NFE | best default grid | best tuned grid |",
        "|---:|---|---|",
    ]
    mixtures = [r for r in rows if not r["target"].startswith("gaussian")]
    for nfe in sorted({r["nfe"] for r in mixtures}):
        best = {}
        for kind in ("default", "tuned"):
            means = {}
            for s in dict.fromkeys(r["solver"] for r in mixtures):
                vals = [r[kind] for r in mixtures if r["solver"] == s and r["nfe"] == nfe]
                if vals and len(vals) == len({r["target"] for r in mixtures}):
                    means[s] = sum(vals) / len(vals)
            s = min(means, key=means.get)
            best[kind] = f"{s} ({means[s]:.2e})"
        lines.append(f"| {nfe} | {best['default']} | {best['tuned']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS))
    p.add_argument("--solvers", nargs="+", default=None)
    p.add_argument("--nfes", nargs="+", type=int, default=list(NFES))
    p.add_argument("--overfit-nfe", nargs="*", type=int, default=[10])
    p.add_argument("--probe", type=int, default=2048)
    p.add_argument("--n", type=int, default=20000, help="fresh samples per evaluation")
    p.add_argument("--quick", action="store_true", help="smoke run: small and few")
    p.add_argument("--json", default=None, help="write every row to this JSON file")
    p.add_argument(
        "--tables-from",
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the tables of rows saved by earlier --json runs (no new runs)",
    )
    args = p.parse_args()
    if args.tables_from:
        rows = []
        for path in args.tables_from:
            with open(path) as fh:
                rows += json.load(fh)
        order = {t: i for i, t in enumerate(TARGETS)}
        rows.sort(key=lambda r: order.get(r["target"], len(order)))  # stable: solvers stay in order
        print(tables(rows))
        return
    if args.solvers is None:
        args.solvers = list(SOLVERS) + [s for s in NEW_SOLVERS if s in solvers.available()]
    if args.quick:
        args.targets, args.solvers, args.nfes = ["ring_2d"], ["dpm_solver_pp_2m"], [10]
        args.probe, args.n = 512, 4000
    torch.set_default_dtype(torch.float64)
    start = time.perf_counter()
    rows = run(args)
    print(
        f"\n{platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"probe {args.probe}, fresh n {args.n}; {time.perf_counter() - start:.0f} s in all"
    )
    print(f"Command: {' '.join([COMMAND, *sys.argv[1:]])}")
    print(tables(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
