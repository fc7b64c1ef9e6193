"""``scoresde export``: a training checkpoint's weights as ``model.safetensors`` + ``config.json``.

    scoresde export --ckpt runs/digits/checkpoint.pt --out runs/digits/export

The EMA weights are exported when the checkpoint has them (``--no-ema``: the raw ones).
``scoresde sample --ckpt DIR``, ``scoresde check --ckpt DIR`` and ``load_pretrained(DIR)`` read
the directory as they read a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint's weights (model.safetensors + config.json)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="checkpoint file written by `scoresde train`")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..export import export_model
    from ..training import CheckpointError

    try:
        weights, config = export_model(args.ckpt, args.out, ema=not args.no_ema)
    except (FileNotFoundError, CheckpointError, ValueError, OSError) as err:
        print(f"scoresde export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {weights} and {config}")
    return 0
