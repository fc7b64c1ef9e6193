"""Handwritten digits on a CPU: train a small U-Net, sample a grid, report bits/dim.

    python examples/digits_unet.py              # a few minutes on a laptop CPU
    python examples/digits_unet.py --steps 6000 --channels 48 --out runs/digits_big
    python examples/digits_unet.py --quick      # seconds: the smoke test

scikit-learn's 1,797 8x8 digits (17 grey levels, scaled to [-1, 1]) are split into 1,500 training
and 297 held-out images. A U-Net (two resolutions, self-attention at 4x4, v-prediction) is
trained by denoising score matching on the VP SDE; re-running with the same ``--out`` reuses a
finished checkpoint. It then

1. samples 64 digits with DPM-Solver++ (2M) in 30 steps and writes ``samples.png``;
2. computes the held-out negative log-likelihood through the probability-flow ODE
   (:func:`scoresde.log_likelihood`, Hutchinson divergence, dopri5) on uniformly dequantised
   images, in bits per dimension with the dequantisation offset of 17-level data in [-1, 1]
   (``log2(17 / 2)``); beside it, the bits/dim of independent per-pixel histograms fitted on the
   training set, the baseline a model of the joint distribution has to beat.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

import scoresde
from scoresde.data import TensorData, digits
from scoresde.likelihood import log_likelihood, uniform_dequantize
from scoresde.nets import ScoreModel, UNet
from scoresde.training import Trainer, load_pretrained

LEVELS = 17  # the digits take the values 0..16
RANGE = (-1.0, 1.0)


def split(seed: int) -> tuple[TensorData, torch.Tensor]:
    """1,500 training images (with labels) and the 297 held-out images."""
    full = digits("all")
    perm = torch.randperm(len(full.x), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:1500], perm[1500:]
    train = TensorData(full.x[tr], full.y[tr], name="digits", num_classes=10, value_range=RANGE)
    return train, full.x[te]


def histogram_bpd(train: torch.Tensor, test: torch.Tensor) -> float:
    """Bits/dim of independent per-pixel categorical distributions over the 17 levels (add-one
    smoothing), fitted on ``train``: ``-mean log2 p_j(level of pixel j)``."""

    def levels(x: torch.Tensor) -> torch.Tensor:
        return torch.round((x - RANGE[0]) / (RANGE[1] - RANGE[0]) * (LEVELS - 1)).long()

    k_train = levels(train).reshape(len(train), -1)  # (N, D)
    counts = torch.stack([(k_train == k).sum(0) for k in range(LEVELS)], 1).double() + 1.0
    probs = counts / counts.sum(1, keepdim=True)
    k_test = levels(test).reshape(len(test), -1)
    p = probs.gather(1, k_test.T)  # (D, N)
    return float(-torch.log2(p).mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--channels", type=int, default=32, help="U-Net base width")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nll-images", type=int, default=128, help="held-out images for bits/dim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default runs/digits)")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.channels, args.nll_images = min(args.steps, 4), 8, min(args.nll_images, 4)
    out = args.out or ("runs/digits_quick" if args.quick else "runs/digits")
    torch.set_num_threads(min(torch.get_num_threads(), 4))  # small convolutions: threads contend

    # -- train ----------------------------------------------------------------------------------
    train, test = split(args.seed)
    sde = scoresde.VPSDE()
    torch.manual_seed(args.seed)  # network initialisation
    net = UNet(
        in_channels=1,
        image_size=8,
        channels=args.channels,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
    )
    # v-prediction gets the high-noise end right for free (eps = sigma x + alpha v on VP).
    model = ScoreModel(net, sde, prediction="v", sigma_data=train.info.sigma_data)
    trainer = Trainer(
        model,
        train,
        out_dir=out,
        steps=args.steps,
        batch_size=args.batch,
        lr=2e-3,
        warmup=min(200, args.steps // 10),
        # a short run wants a short EMA horizon (~200 steps) even with the trainer's warm-up
        ema_decay=0.995,
        seed=args.seed,
        device="cpu",
        ckpt_every=0,
        log_every=max(1, min(100, args.steps)),
        progress=not args.quick,
    )
    start = time.perf_counter()
    try:
        fit = trainer.fit(resume=True)  # continues, or reuses, a run already in `out`
        steps_done, loss = trainer.step, fit.get("loss", float("nan"))  # nan: nothing to train
    finally:
        trainer.close()
    params = sum(p.numel() for p in net.parameters())
    print(
        f"trained a {params / 1e6:.2f}M-parameter U-Net for {steps_done} steps in "
        f"{time.perf_counter() - start:.0f} s (loss {loss:.4f})"
    )
    sde, _, score_fn, _ = load_pretrained(fit["checkpoint"], device="cpu")  # EMA weights

    # -- sample a grid --------------------------------------------------------------------------
    n_grid, steps = (4, 3) if args.quick else (64, 30)
    g = torch.Generator().manual_seed(args.seed)
    images, stats = scoresde.sample(
        sde, score_fn, shape=(n_grid, 1, 8, 8), solver="dpm_solver_pp_2m", steps=steps, generator=g
    )
    print(
        f"sampled {n_grid} digits with dpm_solver_pp_2m: {stats.nfe} NFE, {stats.wall_time:.1f} s"
    )
    results: dict[str, float] = {"train_loss": float(loss), "nfe": float(stats.nfe)}
    try:
        from scoresde.plotting import save_image_grid

        path = save_image_grid(
            images.clamp(*RANGE),
            os.path.join(out, "samples.png"),
            nrow=8,
            title=f"digits: {n_grid} samples, DPM-Solver++ 2M, {stats.nfe} NFE",
            value_range=RANGE,
        )
        print(f"wrote {path}")
    except ImportError as err:  # matplotlib is the optional 'plot' extra
        print(f"no plot: {err}")

    # -- held-out bits/dim ----------------------------------------------------------------------
    x = uniform_dequantize(test[: args.nll_images].double(), RANGE, LEVELS, generator=g)
    start = time.perf_counter()
    res = log_likelihood(
        sde,
        score_fn,
        x.float(),
        rtol=1e-3 if args.quick else 1e-4,
        atol=1e-3 if args.quick else 1e-4,
        divergence="hutchinson",
        generator=g,
    )
    bpd = res.bits_per_dim(data_range=RANGE, num_bins=LEVELS)
    mean, sem = float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd)))
    base = histogram_bpd(train.x, test)
    results.update(bpd=mean, bpd_sem=sem, histogram_bpd=base)
    print(
        f"held-out bits/dim over {len(bpd)} images: {mean:.3f} +- {sem:.3f} "
        f"({res.nfe} NFE, {time.perf_counter() - start:.0f} s); "
        f"per-pixel histogram baseline {base:.3f}"
    )
    return results


if __name__ == "__main__":
    main()
