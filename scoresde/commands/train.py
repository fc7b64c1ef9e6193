"""``scoresde train``: train a score model on a built-in dataset or your own data.

    scoresde train --data moons --steps 5000 --seed 0 --out runs/moons
    scoresde train --data my_images/ --image-size 32 --cond --out runs/mine   # a sub-folder per class
    scoresde train --data points.npy --out runs/points                       # or .npz with x (, y)
    scoresde train --data digits --cond --steps 20000 --out runs/digits --bf16
    .venv/bin/torchrun --nproc-per-node 8 -m scoresde.cli train --data digits --out runs/ddp

The net defaults to an MLP for vector data and a U-Net for images. Checkpoints
(``DIR/checkpoint.pt``), the JSONL metrics log and ``config.json`` go under ``--out``. ``--resume``
continues a run from ``DIR/checkpoint.pt`` (or from the given file) with the same settings;
without it, an existing checkpoint is never overwritten.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from ._args import (
    HelpFormatter,
    int_list,
    nonneg_float,
    nonneg_int,
    output_dir,
    plain,
    positive_float,
    positive_int,
)


def sde_choices() -> dict[str, str]:
    """``--sde`` values: each ``sde.SDES`` key in lower case without "SDE" (``vp``, ``subvp``,
    ``ve``), so a new SDE in the table is a new choice."""
    from ..sde import SDES

    return {name.removesuffix("SDE").lower(): name for name in SDES}


NET_CHOICES = ("auto", "mlp", "unet")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..data import DATASETS

    p = subparsers.add_parser(
        "train",
        help="train a score model (DSM) on a built-in dataset or your own data",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        help=f"a built-in dataset ({', '.join(DATASETS)}) or a path: a folder of images "
        "(one sub-folder per class for labels) or a .npy/.npz array",
    )
    p.add_argument(
        "--image-size", type=positive_int, default=None, help="resize folder images to N x N"
    )
    p.add_argument("--steps", type=positive_int, default=10_000, help="optimisation steps")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of init, data and noise")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics)")
    g = p.add_argument_group("SDE")
    g.add_argument("--sde", choices=sde_choices(), default="vp", help="diffusion")
    g.add_argument(
        "--schedule", choices=("linear", "cosine"), default="linear", help="VP/sub-VP schedule"
    )
    g.add_argument("--sigma-min", type=positive_float, default=0.01, help="VE sigma_min")
    g.add_argument("--sigma-max", type=positive_float, default=50.0, help="VE sigma_max")
    g = p.add_argument_group("network")
    g.add_argument(
        "--net", choices=NET_CHOICES, default="auto", help="mlp for vectors, unet for images"
    )
    g.add_argument(
        "--prediction",
        choices=("eps", "x0", "score", "v"),
        default="v",
        help="what the net predicts (default v: bounded at every noise level; an eps-MLP "
        "saturates in the prior's tails and sends a few ODE samples far out)",
    )
    g.add_argument(
        "--time-input", choices=("log_snr", "t"), default="log_snr", help="the net's time feature"
    )
    g.add_argument("--hidden", type=positive_int, default=256, help="MLP width")
    g.add_argument("--depth", type=positive_int, default=3, help="MLP residual blocks")
    g.add_argument("--channels", type=positive_int, default=None, help="U-Net base width")
    g.add_argument("--channel-mult", type=int_list, default=None, help="U-Net, e.g. 1,2,2,2")
    g.add_argument("--num-res-blocks", type=positive_int, default=None, help="U-Net blocks/level")
    g.add_argument(
        "--attn", type=int_list, default=None, help="U-Net attention resolutions, e.g. 16"
    )
    g.add_argument("--dropout", type=nonneg_float, default=None, help="dropout rate")
    g.add_argument("--cond", action="store_true", help="class-conditional (labelled data)")
    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=("dsm", "ddpm"), default="dsm", help="training objective")
    g.add_argument(
        "--weighting",
        choices=("sigma2", "likelihood", "eps"),
        default="sigma2",
        help="DSM weighting lambda(t)",
    )
    g.add_argument("--importance", action="store_true", help="importance-sample t (DSM)")
    g.add_argument("--t-eps", type=positive_float, default=1e-5, help="smallest training time")
    g.add_argument("--ddpm-steps", type=positive_int, default=1000, help="N of the DDPM loss")
    g.add_argument(
        "--label-dropout",
        type=nonneg_float,
        default=None,
        help="null-label rate (default 0.1 with --cond)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch", type=positive_int, default=None, help="global batch (256 / 128)")
    g.add_argument("--lr", type=positive_float, default=None, help="learning rate (1e-3 / 2e-4)")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="AdamW weight decay")
    g.add_argument("--warmup", type=nonneg_int, default=None, help="LR warmup steps (100 / 1000)")
    g.add_argument("--grad-clip", type=nonneg_float, default=1.0, help="0 disables")
    g.add_argument(
        "--ema", type=nonneg_float, default=None, help="EMA decay (0.999 / 0.9999); 0 disables"
    )
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="FILE",
        help="continue from DIR/checkpoint.pt if present (or from FILE)",
    )
    g.add_argument("--ckpt-every", type=nonneg_int, default=1000, help="0: only at the end")
    g.add_argument(
        "--log-every", type=positive_int, default=100, help="steps between metrics.jsonl lines"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _default_unet(shape: tuple[int, ...]) -> dict[str, Any]:
    """A U-Net sized for the image: levels down to side 4 (at most 4), attention at 16 (or at
    the coarsest level for small images)."""
    side = shape[1]
    levels = 1
    while levels < 4 and side % 2**levels == 0 and side // 2**levels >= 4:
        levels += 1
    res = [side // 2**i for i in range(levels)]
    return {
        "channels": 128 if side >= 32 else 64,
        "channel_mult": [1] + [2] * (levels - 1),
        "num_res_blocks": 2,
        "attn_resolutions": [16] if 16 in res else [res[-1]],
    }


def build_from_args(args: argparse.Namespace, info: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, loss, train settings)`` for the parsed arguments and the data's ``info``."""
    from .. import CosineVP, LinearVP, VEGeometric
    from ..losses import DDPMLoss, DSMLoss
    from ..nets import MLP, ScoreModel, UNet
    from ..sde import SDES

    shape = tuple(info.shape)
    sde_class = SDES[sde_choices()[args.sde]]
    if sde_class.vp_schedule:
        schedule = CosineVP() if args.schedule == "cosine" else LinearVP()
    else:
        schedule = VEGeometric(args.sigma_min, args.sigma_max)
    sde = sde_class(schedule)

    kind = args.net
    if kind == "auto":
        kind = "unet" if info.is_image else "mlp"
    if kind == "unet" and not (len(shape) == 3 and shape[1] == shape[2]):
        raise ValueError(f"--net unet needs square images (C, H, H); the data have shape {shape}")
    num_classes = None
    if args.cond:
        if info.num_classes is None:
            raise ValueError(f"--cond needs labelled data; {info.name!r} has no labels")
        num_classes = info.num_classes
    if kind == "mlp":
        dim = math.prod(shape)
        net = MLP(
            dim,
            hidden=args.hidden,
            depth=args.depth,
            num_classes=num_classes,
            dropout=0.0 if args.dropout is None else args.dropout,
        )
    else:
        cfg = _default_unet(shape)
        for key, arg in (
            ("channels", "channels"),
            ("channel_mult", "channel_mult"),
            ("num_res_blocks", "num_res_blocks"),
            ("attn_resolutions", "attn"),
        ):
            if getattr(args, arg) is not None:
                cfg[key] = getattr(args, arg)
        net = UNet(
            in_channels=shape[0],
            image_size=shape[1],
            num_classes=num_classes,
            dropout=0.1 if args.dropout is None else args.dropout,
            **cfg,
        )
    model = ScoreModel(
        net, sde, prediction=args.prediction, time_input=args.time_input, sigma_data=info.sigma_data
    )
    label_dropout = (
        args.label_dropout if args.label_dropout is not None else (0.1 if args.cond else 0.0)
    )
    if args.loss == "ddpm":
        loss = DDPMLoss(sde, args.ddpm_steps, label_dropout=label_dropout)
    else:
        loss = DSMLoss(
            sde,
            weighting=args.weighting,
            t_sampling="importance" if args.importance else "uniform",
            t_eps=args.t_eps,
            label_dropout=label_dropout,
        )
    image = kind == "unet"
    ema = args.ema if args.ema is not None else (0.9999 if image else 0.999)
    train = {
        "steps": args.steps,
        "batch_size": args.batch or (128 if image else 256),
        "lr": args.lr or (2e-4 if image else 1e-3),
        "weight_decay": args.weight_decay,
        "warmup": args.warmup if args.warmup is not None else (1000 if image else 100),
        "grad_clip": args.grad_clip or None,
        "ema_decay": ema or None,
        "seed": args.seed,
        "device": args.device,
        "bf16": args.bf16,
        "ckpt_every": args.ckpt_every,
        "log_every": args.log_every,
        "progress": not args.no_progress,
    }
    return model, loss, train


def load_data(spec: str, image_size: int | None = None) -> Any:
    """A built-in dataset by name, or your own data from a path (:mod:`scoresde.datafiles`)."""
    import os

    from ..data import DATASETS, get_dataset
    from ..datafiles import load_path

    if spec in DATASETS and not os.path.exists(spec):
        if image_size is not None:
            raise ValueError("--image-size applies to image folders only")
        return get_dataset(spec)
    if not os.path.exists(spec):
        raise ValueError(
            f"unknown dataset {spec!r}; available: {', '.join(DATASETS)}; or a path to a folder "
            "of images or a .npy/.npz file (no such path exists)"
        )
    return load_path(spec, image_size)


def run(args: argparse.Namespace) -> int:
    from ..training import CheckpointError, Trainer

    if problem := output_dir(args.out):
        print(f"scoresde train: error: {problem}", file=sys.stderr)
        return 2
    try:
        data = load_data(args.data, args.image_size)
        torch.manual_seed(args.seed)  # network initialisation
        model, loss, train = build_from_args(args, data.info)
        trainer = Trainer(model, data, loss=loss, out_dir=args.out, **train)
    except (ValueError, ImportError) as err:
        print(f"scoresde train: error: {err}", file=sys.stderr)
        return 2
    try:
        result = trainer.fit(resume=args.resume)
    except (FileExistsError, FileNotFoundError, CheckpointError, ValueError) as err:
        print(f"scoresde train: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # the loss diverged
        print(f"scoresde train: error: {err}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    if trainer.dist.is_main:
        if "loss" not in result:
            print(
                f"the checkpoint is already at step {result['step']} of {args.steps}; nothing to "
                f"train (give --steps above {result['step']} to continue): {result['checkpoint']}"
            )
        else:
            print(
                f"trained {result['step']} steps, loss {result['loss']:.4g}; "
                f"checkpoint {result['checkpoint']}"
            )
    return 0
