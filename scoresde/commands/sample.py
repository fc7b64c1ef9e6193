"""``scoresde sample``: draw samples from a trained checkpoint.

    scoresde sample --ckpt runs/moons/checkpoint.pt --n 2000 --solver euler_maruyama \\
        --steps 500 --seed 0 --out runs/moons/samples

Writes ``DIR/samples.npy`` (float32, ``(n, *shape)``) and ``DIR/samples.png``: a scatter over the
training data for 2-D data, an image grid for images. The checkpoint records the model, the SDE
and the data, so no other flag is needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import torch

from ._args import nonneg_int, positive_float, positive_int


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample",
        help="sample from a trained checkpoint (samples.npy + PNG)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint file written by `scoresde train`")
    p.add_argument("--n", type=positive_int, default=1000, help="number of samples")
    p.add_argument(
        "--solver",
        default=None,
        help="a registered solver name (default: the --grid file's solver, else euler_maruyama)",
    )
    p.add_argument("--steps", type=positive_int, default=500, help="solver steps")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--grid",
        default=None,
        help="time grid: uniform, quadratic, karras, log_snr, or a JSON file from `scoresde tune`",
    )
    p.add_argument("--t-end", type=positive_float, default=None, help="truncation time")
    p.add_argument("--batch", type=positive_int, default=10_000, help="samples per solver call")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--label", type=nonneg_int, default=None, help="class (conditional models)")
    p.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        help="classifier-free guidance scale w (with --label)",
    )
    p.set_defaults(func=run)
    return p


def _reference(meta: dict[str, Any], n: int, seed: int):
    """Training data to draw behind the samples, and the exact density when there is one."""
    from ..data import DATASETS, get_dataset

    name = meta["data"].get("name")
    if name not in DATASETS:
        return None, None
    try:
        data = get_dataset(name)
    except ImportError:
        return None, None
    return data.reference(n, seed), data.target


def _grid_arg(args: argparse.Namespace, sde: Any) -> tuple[Any, dict[str, Any]]:
    """``--grid``: a grid name, or a tuned grid file (which also gives the solver and options).

    Sets ``args.solver`` when it was not given; a file tuned for another SDE is an error.
    """
    if args.grid is None or not args.grid.endswith(".json"):
        args.solver = args.solver or "euler_maruyama"
        return args.grid, {}
    from ..tuning import load_grid

    grid, meta = load_grid(args.grid)
    if meta.get("sde") not in (None, sde.to_config()):
        raise ValueError(
            f"grid file {args.grid!r} was tuned for the SDE {meta['sde']}; the checkpoint's is "
            f"{sde.to_config()}"
        )
    if args.t_end is not None:
        raise ValueError("--t-end cannot be combined with a grid file (the grid ends at its t_end)")
    args.solver = args.solver or meta.get("solver") or "euler_maruyama"
    same = args.solver == meta.get("solver")
    return grid, dict(meta.get("options") or {}) if same else {}


def run(args: argparse.Namespace) -> int:
    from solvers import available, get, sample

    from ..training import CheckpointError, load_pretrained

    def fail(msg: str) -> int:
        print(f"scoresde sample: error: {msg}", file=sys.stderr)
        return 2

    try:
        if args.solver is not None:
            get(args.solver)
        sde, model, score_fn, meta = load_pretrained(args.ckpt, args.device, ema=not args.no_ema)
        grid, options = _grid_arg(args, sde)
        get(args.solver)
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        return fail(str(err))
    info = meta["data"]
    num_classes = model.num_classes
    if args.label is not None:
        if num_classes is None:
            return fail("--label given but the model is not class-conditional")
        if args.label >= num_classes:
            return fail(f"--label {args.label} is outside 0..{num_classes - 1}")
        if args.guidance:
            from ..guidance import classifier_free_guidance

            score_fn = classifier_free_guidance(
                model.score, args.label, args.guidance, model.null_label
            )
        else:
            score_fn = model.score_fn(args.label)
    elif args.guidance:
        return fail("--guidance needs --label")
    elif num_classes is not None:  # a class-conditional model sampled unconditionally
        score_fn = model.score_fn(model.null_label)

    device = next(model.parameters()).device
    shape = tuple(int(s) for s in info["shape"])
    gen = torch.Generator().manual_seed(args.seed)
    chunks, nfe = [], 0
    try:
        for start in range(0, args.n, args.batch):
            b = min(args.batch, args.n - start)
            x_T = sde.prior_sample((b, *shape), generator=gen).to(device)
            out, stats = sample(
                sde,
                score_fn,
                x_T=x_T,
                solver=args.solver,
                steps=args.steps,
                grid=grid,
                t_end=args.t_end,
                generator=gen,
                **options,
            )
            chunks.append(out.float().cpu())
            nfe = stats.nfe
    except ValueError as err:
        return fail(f"{err} (solvers: {', '.join(available())})")
    samples = torch.cat(chunks)
    os.makedirs(args.out, exist_ok=True)
    npy = os.path.join(args.out, "samples.npy")
    np.save(npy, samples.numpy())
    png = os.path.join(args.out, "samples.png")
    title = f"{info.get('name')}: {args.solver}, {nfe} NFE"
    from ..plotting import save_image_grid, save_scatter

    if info.get("is_2d"):
        reference, target = _reference(meta, len(samples), args.seed + 1)
        save_scatter(samples, png, reference=reference, density_fn=target, title=title)
    elif info.get("is_image"):
        lo, hi = info.get("value_range") or (-1.0, 1.0)
        save_image_grid(samples[:100], png, title=title, value_range=(lo, hi))
    else:
        png = None
    print(f"wrote {npy}" + (f" and {png}" if png else "") + f" ({args.n} samples, {nfe} NFE each)")
    return 0
