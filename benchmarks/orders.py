"""Measured convergence orders of our ODE solvers on the exact Gaussian, on every grid.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/orders.py                       # the new solvers
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/orders.py --solvers ddim dpm_solver_pp_2m

The error is ``|mean - mean*| + ||cov - cov*||_F`` between the solver's exact output law
(``scoresde.accuracy.exact_output_moments``: Gaussian data, exact affine score, no Monte-Carlo)
and the exact law of the continuous probability flow at ``t_end`` (no denoising step). The order
is minus the slope of a least-squares fit of log error against log steps; the last column is the
local slope between the two largest step counts. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import solvers  # noqa: E402
from scoresde import VESDE, VPSDE, Gaussian, SubVPSDE  # noqa: E402
from scoresde.accuracy import exact_output_moments, exact_solution_moments  # noqa: E402

GAUSS = Gaussian(
    torch.tensor([1.0, -0.5, 0.3]),
    torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]]),
)
SDES = {"VP": VPSDE(), "subVP": SubVPSDE(), "VE": VESDE()}
GRIDS = ("uniform", "quadratic", "karras", "log_snr")


def errors(sde_name: str, solver: str, grid: str, steps: Sequence[int], **options) -> list[float]:
    sde = SDES[sde_name]
    ref_mean, ref_cov = exact_solution_moments(sde, GAUSS.mean, GAUSS.cov, "ode", denoise=False)
    out = []
    for n in steps:
        mean, cov = exact_output_moments(
            sde, GAUSS.score_fn(sde), 3, solver, n, grid=grid, denoise=False, **options
        )
        out.append(float(torch.linalg.norm(mean - ref_mean) + torch.linalg.norm(cov - ref_cov)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--solvers", nargs="+", default=["dpm_solver_pp_3m", "unipc", "ipndm"])
    p.add_argument("--sdes", nargs="+", default=["VP", "VE"], choices=sorted(SDES))
    p.add_argument("--steps", nargs="+", type=int, default=[40, 80, 160, 320])
    args = p.parse_args(argv)
    print(f"Steps {args.steps}; declared order from the registry.\n")
    print("| solver | declared | SDE | " + " | ".join(GRIDS) + " |")
    print("|---|---|---|" + "---|" * len(GRIDS))
    for name in args.solvers:
        for sde_name in args.sdes:
            cells = []
            for grid in GRIDS:
                e = errors(sde_name, name, grid, args.steps)
                fit = -np.polyfit(np.log(args.steps), np.log(e), 1)[0]
                local = -np.log(e[-1] / e[-2]) / np.log(args.steps[-1] / args.steps[-2])
                cells.append(f"{fit:.2f} ({local:.2f})")
            order = solvers.get(name).order
            print(f"| {name} | {order:g} | {sde_name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
