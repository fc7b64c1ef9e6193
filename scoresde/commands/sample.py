"""``scoresde sample``: draw samples from a trained checkpoint or an exported model.

    scoresde sample --ckpt runs/moons/checkpoint.pt --n 2000 --solver euler_maruyama \\
        --steps 500 --seed 0 --out runs/moons/samples
    scoresde sample --ckpt runs/moons/export --n 1000000 --out big --resume     # after a kill
    torchrun --nproc-per-node 4 -m scoresde.cli -- sample --ckpt C --n 1000000 --out big

Writes ``DIR/samples.npy`` (float32, ``(n, *shape)``) and ``DIR/samples.png``: a scatter over the
training data for 2-D data (at most 10,000 points), an image grid for images. ``--ckpt`` is a
checkpoint file or a directory written by ``scoresde export``; it records the model, the SDE and
the data, so no other flag is needed.

Samples stream to disk in chunks of ``--batch`` (memory flat in ``--n``); a killed run loses at
most the chunk in progress and ``--resume`` completes it. Chunk ``i`` is drawn with the generator
seeded ``--seed`` (``i = 0``) or ``derive_seed(seed, i)``; under ``torchrun`` rank ``r`` of ``W``
draws chunks ``r, r + W, ...``, so the merged output equals a one-process run with the same
``--n``, ``--batch`` and ``--seed`` (see :mod:`scoresde.streaming`). The ``--`` after
``scoresde.cli`` stops torchrun from reading ``--n`` as an abbreviation of its own options.
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
    p.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint file (`scoresde train`) or model directory (`scoresde export`)",
    )
    p.add_argument("--n", type=positive_int, default=1000, help="number of samples")
    p.add_argument("--solver", default="euler_maruyama", help="a registered solver name")
    p.add_argument("--steps", type=positive_int, default=500, help="solver steps")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--grid", default=None, help="time grid (uniform, quadratic, karras, log_snr)")
    p.add_argument("--t-end", type=positive_float, default=None, help="truncation time")
    p.add_argument(
        "--batch", type=positive_int, default=10_000, help="samples per chunk (per solver call)"
    )
    p.add_argument(
        "--resume", action="store_true", help="complete the partial run in --out (same settings)"
    )
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


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What determines the samples: a resumed run must repeat it exactly."""
    return {
        "ckpt": os.path.abspath(args.ckpt),
        "n": args.n,
        "batch": args.batch,
        "seed": args.seed,
        "solver": args.solver,
        "steps": args.steps,
        "grid": args.grid,
        "t_end": args.t_end,
        "ema": not args.no_ema,
        "label": args.label,
        "guidance": args.guidance,
    }


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`solvers.sample` set by the flags (extend here)."""
    return {"solver": args.solver, "steps": args.steps, "grid": args.grid, "t_end": args.t_end}


def _score_fn(args: argparse.Namespace, model: Any, score_fn: Any) -> Any:
    """The score to sample: unconditional, one class, or classifier-free guided."""
    num_classes = model.num_classes
    if args.label is not None:
        if num_classes is None:
            raise ValueError("--label given but the model is not class-conditional")
        if args.label >= num_classes:
            raise ValueError(f"--label {args.label} is outside 0..{num_classes - 1}")
        if args.guidance:
            from ..guidance import classifier_free_guidance

            return classifier_free_guidance(
                model.score, args.label, args.guidance, model.null_label
            )
        return model.score_fn(args.label)
    if args.guidance:
        raise ValueError("--guidance needs --label")
    if num_classes is not None:  # a class-conditional model sampled unconditionally
        return model.score_fn(model.null_label)
    return score_fn


def _plot(path: str, args: argparse.Namespace, meta: dict[str, Any], nfe: int | None) -> str | None:
    """``samples.png`` from the first samples of the memory-mapped output."""
    from ..plotting import save_image_grid, save_scatter

    info = meta["data"]
    samples = np.load(path, mmap_mode="r")
    png = os.path.join(args.out, "samples.png")
    title = f"{info.get('name')}: {args.solver}" + (f", {nfe} NFE" if nfe else "")
    if info.get("is_2d"):
        shown = torch.from_numpy(np.array(samples[:10_000]))
        reference, target = _reference(meta, len(shown), args.seed + 1)
        save_scatter(shown, png, reference=reference, density_fn=target, title=title)
    elif info.get("is_image"):
        lo, hi = info.get("value_range") or (-1.0, 1.0)
        shown = torch.from_numpy(np.array(samples[:100]))
        save_image_grid(shown, png, title=title, value_range=(lo, hi))
    else:
        return None
    return png


def run(args: argparse.Namespace) -> int:
    from solvers import available, get, sample

    from .. import streaming
    from ..training import CheckpointError, load_pretrained
    from ..training.distributed import barrier, init_distributed, shutdown

    def fail(msg: str) -> int:
        print(f"scoresde sample: error: {msg}", file=sys.stderr)
        return 2

    settings = settings_of(args)
    try:
        dist = init_distributed(args.device)
    except (RuntimeError, ValueError) as err:
        return fail(str(err))
    try:
        try:
            done = streaming.prepare_out_dir(args.out, settings, args.resume)
            get(args.solver)
        except ValueError as err:
            return fail(str(err))
        barrier(dist)
        if done:
            if dist.is_main:
                print(f"{args.out} already holds the finished run ({args.n} samples)")
            return 0
        try:
            sde, model, score_fn, meta = load_pretrained(
                args.ckpt, dist.device, ema=not args.no_ema
            )
            score_fn = _score_fn(args, model, score_fn)
        except (FileNotFoundError, CheckpointError, ValueError) as err:
            return fail(str(err))
        if dist.is_main:
            if not args.resume:
                streaming.clear_run(args.out)
            streaming.write_manifest(args.out, settings)
        barrier(dist)
        device = next(model.parameters()).device
        shape = tuple(int(s) for s in meta["data"]["shape"])
        options = sampling_options(args)
        nfe: list[int] = []

        def draw(index: int, size: int) -> torch.Tensor:
            gen = streaming.chunk_generator(args.seed, index)
            x_T = sde.prior_sample((size, *shape), generator=gen).to(device)
            out, stats = sample(sde, score_fn, x_T=x_T, generator=gen, **options)
            nfe.append(stats.nfe)
            return out

        sizes = streaming.chunk_sizes(args.n, args.batch)
        try:
            streaming.draw_chunks(args.out, sizes, draw, dist.rank, dist.world_size)
        except ValueError as err:
            return fail(f"{err} (solvers: {', '.join(available())})")
        barrier(dist)
        if not dist.is_main:
            return 0
        path = streaming.merge_chunks(args.out, sizes, settings)
        png = _plot(path, args, meta, nfe[-1] if nfe else None)
        each = f", {nfe[-1]} NFE each" if nfe else ""
        print(f"wrote {path}" + (f" and {png}" if png else "") + f" ({args.n} samples{each})")
        return 0
    finally:
        shutdown(dist)
