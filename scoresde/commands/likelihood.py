"""``scoresde likelihood``: the exact NLL of a trained checkpoint by the probability-flow ODE.

    scoresde likelihood --ckpt runs/digits/checkpoint.pt --n 500
    scoresde likelihood --ckpt runs/moons/checkpoint.pt --data moons --divergence hutchinson

Prints the cost up front (divergence mode, backward passes per evaluation, NFE of fixed-step
methods), then the mean negative log-likelihood in nats per sample and in bits per dimension,
with its standard error, and the number of ODE function evaluations. The data scored are held
out from training where the set has a held-out part (digits: the 297 images outside the 1,500
trained on; synthetic sets: fresh draws); `--split train` scores training data instead. The
output names them. Quantised data (images, or any data with a value range whose values lie on
an evenly spaced grid, like the 17 levels of the digits) are uniformly dequantised first and the
bits/dim include the offset ``log2(levels / (hi - lo))`` (8 for 8-bit data in [0, 1], 7 in
[-1, 1]); continuous data are evaluated as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch

from ._args import HelpFormatter, nonneg_int, output_file, plain, positive_float, positive_int

EXACT_MAX_DIM = 16
"""The default divergence is exact up to this many dimensions per sample, Hutchinson above
(exact costs one backward pass per dimension and evaluation)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "likelihood",
        help="exact NLL (nats, bits/dim) of a checkpoint via the probability-flow ODE",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint file written by `scoresde train`")
    p.add_argument("--data", default=None, help="dataset name (default: the checkpoint's)")
    p.add_argument("--n", type=positive_int, default=500, help="number of data samples")
    p.add_argument("--rtol", type=positive_float, default=1e-5, help="adaptive solver rtol")
    p.add_argument("--atol", type=positive_float, default=1e-5, help="adaptive solver atol")
    p.add_argument("--method", default="dopri5", help="torchdiffeq method")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="uniform steps of a fixed-step --method (euler, midpoint, rk4, ...; default "
        "1000); adaptive methods choose their own from --rtol/--atol",
    )
    p.add_argument(
        "--divergence",
        choices=("exact", "hutchinson"),
        default=None,
        help=f"default: exact up to {EXACT_MAX_DIM} dimensions, else hutchinson",
    )
    p.add_argument(
        "--split",
        choices=("heldout", "train"),
        default="heldout",
        help="score held-out data (falls back to training data, with a note, when the set "
        "has none) or the training data",
    )
    p.add_argument(
        "--probe",
        choices=("rademacher", "gaussian"),
        default="rademacher",
        help="Hutchinson probe distribution",
    )
    p.add_argument("--t-eps", type=positive_float, default=1e-5, help="start time of the ODE")
    p.add_argument(
        "--num-bins",
        type=positive_int,
        default=None,
        help="quantisation levels (default: inferred from the data)",
    )
    p.add_argument("--no-dequantize", action="store_true", help="evaluate the data as they are")
    p.add_argument("--batch", type=positive_int, default=500, help="samples per ODE solve")
    p.add_argument(
        "--seed", type=nonneg_int, default=0, help="seeds the data, dequantisation and probes"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--float64", action="store_true", help="integrate in float64")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def infer_num_bins(
    x: torch.Tensor, value_range: tuple[float, float], max_bins: int = 65536
) -> int | None:
    """The number of levels of an evenly spaced grid on ``value_range`` holding every value of
    ``x``, or ``None`` if the values are not on such a grid."""
    lo, hi = value_range
    v = torch.unique(x.detach().double().flatten())
    if v.numel() < 2 or float(v.min()) < lo - 1e-6 or float(v.max()) > hi + 1e-6:
        return None
    step = float((v[1:] - v[:-1]).min())
    levels = round((hi - lo) / step) + 1
    if levels < 2 or levels > max_bins:
        return None
    k = (v - lo) / (hi - lo) * (levels - 1)
    if float((k - k.round()).abs().max()) > 1e-3:
        return None
    return int(levels)


def run(args: argparse.Namespace) -> int:
    from ..data import DATASETS, get_dataset
    from ..likelihood import (
        DEFAULT_FIXED_STEPS,
        bits_per_dim,
        dequantization_offset,
        is_fixed_step,
        log_likelihood,
        ode_methods,
        uniform_dequantize,
    )
    from ..training import CheckpointError, load_pretrained

    def fail(msg: str) -> int:
        print(f"scoresde likelihood: error: {msg}", file=sys.stderr)
        return 2

    if args.json and (problem := output_file(args.json)):
        return fail(problem)
    if args.method not in ode_methods():
        return fail(f"unknown --method {args.method!r}; expected one of {', '.join(ode_methods())}")
    fixed = is_fixed_step(args.method)
    if args.steps is not None and not fixed:
        return fail(
            f"--steps {args.steps} is for fixed-step methods; --method {args.method} chooses its "
            "own steps (set --rtol/--atol)"
        )
    try:
        sde, model, score_fn, meta = load_pretrained(args.ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        return fail(str(err))
    name = args.data or meta["data"].get("name")
    if name not in DATASETS:
        return fail(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    try:
        data = get_dataset(name)
    except ImportError as err:
        return fail(str(err))
    shape = tuple(int(s) for s in meta["data"]["shape"])
    if tuple(data.info.shape) != shape:
        return fail(
            f"dataset {name!r} has samples of shape {data.info.shape}; the model expects {shape}"
        )
    if model.num_classes is not None:  # class-conditional: the unconditional (null-label) model
        score_fn = model.score_fn(model.null_label)

    device = next(model.parameters()).device
    dtype = torch.float64 if args.float64 else torch.float32
    if args.float64:
        model.double()
    held = data.heldout(args.n, seed=args.seed) if args.split == "heldout" else None
    if held is not None:
        x, scored = held
    else:
        x, scored = data.reference(args.n, seed=args.seed), "training data"
        if args.split == "heldout":
            print(f"note: {name!r} has no held-out part; scoring training data")
    x = x.to(dtype)
    value_range = data.info.value_range
    num_bins = None
    if value_range is not None and not args.no_dequantize:
        num_bins = args.num_bins or infer_num_bins(x, value_range)
        if num_bins is None:
            print(f"note: the {name!r} values are not on an evenly spaced grid; not dequantised")
        elif num_bins < 2:
            return fail(f"--num-bins {num_bins} must be at least 2")
    D = x[0].numel()
    divergence = args.divergence or ("exact" if D <= EXACT_MAX_DIM else "hutchinson")
    steps = (args.steps or DEFAULT_FIXED_STEPS) if fixed else None

    per_eval = f"{D} backward passes" if divergence == "exact" else "1 backward pass"
    why = (
        ""
        if args.divergence
        else f", the default for D {'<=' if D <= EXACT_MAX_DIM else '>'} {EXACT_MAX_DIM}"
    )
    solves = math.ceil(len(x) / args.batch)
    if fixed:
        stages = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}.get(args.method)
        nfe = f"{steps * stages} evaluations per solve" if stages else f"{steps} steps per solve"
    else:
        nfe = f"NFE per solve chosen by {args.method} from rtol/atol (not known in advance)"
    print(
        f"cost: {solves} ODE solve(s) of up to {args.batch} samples; divergence={divergence}"
        f"{why}: each evaluation is 1 score call + {per_eval}; {nfe}",
        flush=True,
    )

    gen = torch.Generator().manual_seed(args.seed)
    logps, nfes = [], []
    start = time.perf_counter()
    try:
        for i in range(0, len(x), args.batch):
            xb = x[i : i + args.batch]
            if num_bins is not None:
                xb = uniform_dequantize(xb, value_range, num_bins, generator=gen)
            res = log_likelihood(
                sde,
                score_fn,
                xb.to(device),
                rtol=args.rtol,
                atol=args.atol,
                method=args.method,
                divergence=divergence,
                probe=args.probe,
                t_eps=args.t_eps,
                generator=gen,
                steps=steps,
                progress=not args.no_progress,
            )
            logps.append(res.logp.double().cpu())
            nfes.append(res.nfe)
    except (ValueError, FloatingPointError) as err:  # NonFiniteScoreError is a FloatingPointError
        return fail(str(err))
    wall = time.perf_counter() - start
    logp = torch.cat(logps)
    n = logp.numel()
    nll = -logp
    se = float(nll.std()) / math.sqrt(n) if n > 1 else float("nan")
    data_range = value_range if num_bins is not None else None
    bpd = bits_per_dim(logp, D, data_range=data_range, num_bins=num_bins or 256)
    offset = dequantization_offset(value_range, num_bins) if data_range is not None else 0.0
    bpd_se = se / (D * math.log(2))

    print(
        f"checkpoint: {args.ckpt} (step {meta['step']}, {'EMA' if meta['ema'] else 'raw'} weights)"
    )
    deq = (
        f"uniformly dequantised to {num_bins} levels on [{value_range[0]:g}, {value_range[1]:g}]"
        if data_range is not None
        else "continuous (no dequantisation)"
    )
    print(f"data: {name}, {n} samples of shape {shape} (D = {D}): {scored}, {deq}")
    ode = f"{steps} steps" if fixed else f"rtol={args.rtol:g}, atol={args.atol:g}"
    print(
        f"ODE: {args.method}, {ode}, divergence={divergence}"
        + (f" ({args.probe} probe)" if divergence == "hutchinson" else "")
        + f", t_eps={args.t_eps:g}, {'float64' if args.float64 else 'float32'}"
    )
    print(f"NLL: {float(nll.mean()):.4f} +- {se:.4f} nats per sample")
    print(
        f"bits/dim: {float(bpd.mean()):.4f} +- {bpd_se:.4f}"
        + (
            f" (includes the dequantisation offset log2({num_bins}/{value_range[1] - value_range[0]:g}) = {offset:.4f})"
            if offset
            else ""
        )
    )
    print(
        f"NFE per solve: mean {sum(nfes) / len(nfes):.1f} over {len(nfes)} solve(s); {wall:.1f} s"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "ckpt": args.ckpt,
                    "data": name,
                    "scored": scored,
                    "n": n,
                    "dim": D,
                    "nll_nats": float(nll.mean()),
                    "nll_se": se,
                    "bits_per_dim": float(bpd.mean()),
                    "bits_per_dim_se": bpd_se,
                    "dequantization_offset_bits": offset,
                    "num_bins": num_bins,
                    "divergence": divergence,
                    "rtol": args.rtol,
                    "atol": args.atol,
                    "method": args.method,
                    "steps": steps,
                    "nfe": nfes,
                    "seconds": wall,
                },
                f,
                indent=2,
            )
    return 0
