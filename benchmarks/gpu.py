"""GPU figures: U-Net DSM training img/s (fp32, bf16), sampling img/s per solver at 20 NFE, and
the trainer-vs-bare-loop ratio.

    python benchmarks/gpu.py                 # on a GPU: U-Net on 3x32x32, batch 128
    python benchmarks/gpu.py --quick         # smoke run on the CPU (tiny sizes; numbers meaningless)

Training: :func:`benchmarks/trainer.py <trainer.bench>` on the U-Net (``minimal`` and
``ema+clip`` settings, fp32 and bf16 autocast), alternating timed blocks of the bare DSM loop and
:class:`scoresde.training.Trainer`; img/s is the trainer's median steps/s times the batch, the
ratio is trainer / bare (goal >= 0.95 on a GPU). Sampling: every registered fixed-step solver on a
randomly initialised U-Net (timing only) with ``steps = (20 - 1) // evals_per_step``, fewer if the
warm-up run shows start-up evaluations, so that the NFE, final denoising step included, is at
most 20; img/s = batch / median wall time
(device-synchronised) of ``--repeats`` runs after one warm-up run. Adaptive solvers are listed
as skipped (their NFE is not set by the caller).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import solvers  # noqa: E402
from scoresde import VPSDE  # noqa: E402
from scoresde.nets import ScoreModel, UNet  # noqa: E402


def _trainer_module():
    spec = importlib.util.spec_from_file_location("bench_trainer", HERE / "trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Trainer img/s and trainer / bare ratio, fp32 and bf16 (trainer.py's U-Net sizes)."""
    bench = _trainer_module().bench
    rows = []
    settings = ("minimal",) if args.quick else ("minimal", "ema+clip")
    for bf16 in (False, True):
        opts = argparse.Namespace(
            bf16=bf16, steps=args.train_steps, repeats=args.repeats, warmup=args.warmup
        )
        for setting in settings:
            r = bench("unet", setting, opts, device)
            r["dtype"] = "bf16" if bf16 else "fp32"
            rows.append(r)
    return rows


def sampling_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """img/s of every fixed-step solver at <= 20 NFE on a random U-Net."""
    torch.manual_seed(0)
    if args.quick:
        net = UNet(3, 8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
        shape, batch = (3, 8, 8), 2
    else:
        net = UNet(3, 32, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                   attn_resolutions=(16,))  # fmt: skip
        shape, batch = (3, 32, 32), args.batch
    with torch.no_grad():  # zero-initialised output layers give a zero score (and the
        for p in net.parameters():  # Langevin corrector a zero-norm division): perturb them
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.02)
    model = ScoreModel(net, VPSDE()).to(device).eval().requires_grad_(False)
    score_fn = model.score_fn()
    rows = []
    for name in solvers.available():
        spec = solvers.get(name)
        if spec.adaptive or not spec.evals_per_step:
            rows.append({"solver": name, "skipped": "adaptive: NFE chosen by the solver"})
            continue
        steps = max(1, (args.nfe - 1) // spec.evals_per_step)
        walls, nfe = [], 0
        for rep in range(args.repeats + 1):
            gen = torch.Generator(device).manual_seed(rep)
            x_T = torch.randn((batch, *shape), generator=gen, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16_sampling):
                _, stats = solvers.sample(
                    model.sde, score_fn, x_T=x_T, solver=name, steps=steps, generator=gen
                )
            if rep:  # the first run warms up kernels and caches
                walls.append(stats.wall_time)
            elif stats.nfe > args.nfe:  # a solver with start-up evaluations: fewer steps
                steps -= -(-(stats.nfe - args.nfe) // spec.evals_per_step)
            nfe = stats.nfe
        rows.append({"solver": name, "nfe": nfe, "img_s": batch / statistics.median(walls)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--batch", type=int, default=128, help="sampling batch (GPU sizes)")
    p.add_argument("--train-steps", type=int, default=None, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--bf16-sampling", action="store_true", help="bf16 autocast while sampling")
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = args.quick
    if quick:  # tiny tensors: intra-op threads only contend
        torch.set_num_threads(1)
    args.train_steps = args.train_steps or (1 if quick else 200)
    args.repeats = args.repeats or (1 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, quick {quick}")
    print(
        f"command: python benchmarks/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    out: dict = {"device": name}
    if not args.skip_training:
        out["training"] = training_rows(args, device)
        print("\n| setting | dtype | batch | shape | trainer img/s | trainer / bare |")
        print("| --- | --- | ---: | --- | ---: | ---: |")
        for r in out["training"]:
            print(
                f"| {r['setting']} | {r['dtype']} | {r['batch']} | {'x'.join(map(str, r['shape']))} "
                f"| {r['samples_s']:.0f} | {r['ratio']:.3f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |"
            )
    out["sampling"] = sampling_rows(args, device)
    print(f"\n| solver | NFE | img/s (<= {args.nfe} NFE) |")
    print("| --- | ---: | ---: |")
    for r in out["sampling"]:
        if "skipped" in r:
            print(f"| {r['solver']} | - | skipped ({r['skipped']}) |")
        else:
            print(f"| {r['solver']} | {r['nfe']} | {r['img_s']:.1f} |")
    return out


if __name__ == "__main__":
    main()
