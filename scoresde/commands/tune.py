"""``scoresde tune``: tune a solver's time grid for an NFE budget on a trained checkpoint.

    scoresde tune --ckpt runs/moons/checkpoint.pt --solver dpm_solver_pp_2m --nfe 10 \\
        --out runs/moons/grid_2m_10.json
    scoresde sample --ckpt runs/moons/checkpoint.pt --grid runs/moons/grid_2m_10.json --out s/

Runs :func:`scoresde.tune_grid` on a probe batch of the model's own samples (no data needed) and
writes the grid with its metadata (solver, NFE, SDE, search results) as JSON. The NFE budget counts
every score evaluation, the final denoising step included, as ``scoresde check`` does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ._args import nonneg_int, positive_float, positive_int


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tune",
        help="tune a solver's time grid for an NFE budget (grid JSON for sample --grid)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint file written by `scoresde train`")
    p.add_argument("--solver", required=True, help="a registered fixed-step solver name")
    p.add_argument("--nfe", type=positive_int, required=True, help="score evaluations per sample")
    p.add_argument("--out", required=True, help="grid JSON file to write")
    p.add_argument("--probe", type=positive_int, default=1024, help="probe batch size")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument(
        "--max-runs", type=positive_int, default=40, help="cheap sampling runs of the probe batch"
    )
    p.add_argument(
        "--reference-rtol",
        type=positive_float,
        default=1e-6,
        help="tolerance of the ode_adaptive reference run",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training import CheckpointError, load_pretrained
    from ..tuning import save_grid, tune_grid

    def fail(msg: str) -> int:
        print(f"scoresde tune: error: {msg}", file=sys.stderr)
        return 2

    try:
        sde, model, score_fn, meta = load_pretrained(args.ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        return fail(str(err))
    if model.num_classes is not None:  # tune the unconditional model, as sample does by default
        score_fn = model.score_fn(model.null_label)
    shape = (args.probe, *(int(s) for s in meta["data"]["shape"]))
    try:
        result = tune_grid(
            sde,
            score_fn,
            args.solver,
            args.nfe,
            shape,
            torch.Generator().manual_seed(args.seed),
            max_runs=args.max_runs,
            reference_rtol=args.reference_rtol,
            device=next(model.parameters()).device,
            return_result=True,
        )
    except (ValueError, FloatingPointError) as err:
        return fail(str(err))
    path = save_grid(args.out, result, sde=sde, info={"ckpt": args.ckpt, "probe": args.probe})
    warp = "solver default grid" if result.power is None else f"log-SNR power {result.power:.3g}"
    gain = result.default_objective / max(result.objective, 1e-300)
    print(
        f"tuned {args.solver} at {args.nfe} NFE ({result.steps} steps): {warp}, "
        f"t_end {result.t_end:.3g}; probe sliced W2^2 {result.objective:.3g} vs "
        f"{result.default_objective:.3g} on the default grid ({gain:.3g}x); "
        f"{result.runs} runs in {result.seconds:.1f} s; wrote {path}"
    )
    return 0
