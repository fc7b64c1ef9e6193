"""Trainer throughput against a bare PyTorch DSM loop on the same model and batch.

    python benchmarks/trainer.py                      # CPU sizes
    python benchmarks/trainer.py --device cuda --bf16 # GPU sizes (U-Net on 3x32x32)

For each model (an MLP on 2-D data and a U-Net on images) the script alternates timed blocks of
``--steps`` optimisation steps of

* the bare loop: ``t ~ U(eps, 1)``, VP-linear ``alpha, sigma`` computed inline in the working
  dtype, ``x_t = alpha x0 + sigma eps``, ``loss = sum ||net(x_t, -lambda/4) - eps||^2 / B``,
  ``zero_grad / backward / AdamW.step`` (the same AdamW flags as the trainer), batches gathered
  from the same on-device tensor with ``torch.randint``;
* :class:`scoresde.training.Trainer` on the same net, data tensor, batch size and optimiser
  (float64 coefficients via ``sde.marginal``, per-step reseeded generator, LR scheduler,
  deterministic sampler, loss accumulation and a JSONL-style metrics sync every 100 steps; no
  progress bar, no checkpoint inside the timed blocks),

in two settings: ``minimal`` (trainer with EMA, clipping and warmup off, against the bare loop)
and ``ema+clip`` (trainer with EMA 0.999 and gradient clipping 1.0, against the bare loop doing
the same with ``AveragedModel.update_parameters`` and ``clip_grad_norm_``). The ratio of the
median steps/s is printed per model and setting: trainer / bare (goal >= 0.95), with the
range of the per-block ratios, and the same ratio in process CPU time (``time.process_time``),
which is robust to other processes competing for the cores of a shared CPU machine (on a GPU the
wall-clock ratio is the one that counts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoresde import VPSDE  # noqa: E402
from scoresde.data import TensorData  # noqa: E402
from scoresde.nets import MLP, ScoreModel, UNet  # noqa: E402
from scoresde.training import Trainer  # noqa: E402

BETA_MIN, BETA_MAX, T_EPS = 0.1, 20.0, 1e-5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """The minimal DSM training loop a user would write by hand."""

    def __init__(
        self, net: nn.Module, data: Tensor, batch: int, lr: float, ema: bool, clip: bool, bf16: bool
    ):
        self.net, self.data, self.batch, self.bf16 = net, data, batch, bf16
        dev = data.device
        flags = {"fused": True} if dev.type == "cuda" else {"foreach": True}
        self.opt = torch.optim.AdamW(net.parameters(), lr=lr, **flags)
        self.ema = (
            AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
            if ema
            else None
        )
        self.clip = clip

    def run(self, steps: int) -> None:
        net, data, B = self.net, self.data, self.batch
        dev = data.device
        for _ in range(steps):
            x0 = data[torch.randint(0, len(data), (B,), device=dev)]
            t = T_EPS + (1 - T_EPS) * torch.rand(B, device=dev)
            log_alpha = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
            alpha = torch.exp(log_alpha)
            sigma = torch.sqrt(-torch.expm1(2 * log_alpha))
            shape = (B,) + (1,) * (x0.dim() - 1)
            eps = torch.randn_like(x0)
            xt = alpha.view(shape) * x0 + sigma.view(shape) * eps
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                pred = net(xt, 0.25 * (torch.log(sigma) - log_alpha))
            loss = (pred.float() - eps).pow(2).reshape(B, -1).sum(1).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip:
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(net)


def make_net(kind: str, device: torch.device, big: bool) -> tuple[nn.Module, Tensor, int]:
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        net = MLP(2, hidden=256, depth=3)
        data, batch = torch.randn(50_000, 2, generator=g), 4096 if big else 1024
    elif big:
        net = UNet(
            3,
            32,
            channels=128,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.1,
        )
        data, batch = torch.rand(10_000, 3, 32, 32, generator=g) * 2 - 1, 128
    else:
        net = UNet(
            3,
            16,
            channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attn_resolutions=(8,),
            dropout=0.1,
        )
        data, batch = torch.rand(2_000, 3, 16, 16, generator=g) * 2 - 1, 16
    return net.to(device), data.to(device), batch


def bench(kind: str, setting: str, args: argparse.Namespace, device: torch.device) -> dict:
    big = device.type == "cuda"
    features = setting == "ema+clip"
    torch.manual_seed(0)
    net_a, data, batch = make_net(kind, device, big)
    torch.manual_seed(0)
    net_b, _, _ = make_net(kind, device, big)
    bare = BareLoop(net_a, data, batch, 2e-4, ema=features, clip=features, bf16=args.bf16)
    model = ScoreModel(net_b, VPSDE(), sigma_data=1.0)
    trainer = Trainer(
        model,
        TensorData(data),
        steps=args.warmup,
        batch_size=batch,
        lr=2e-4,
        warmup=100 if features else 0,
        grad_clip=1.0 if features else None,
        ema_decay=0.999 if features else None,
        device=str(device),
        bf16=args.bf16,
        progress=False,
        log_every=100,
    )
    bare.run(args.warmup)
    trainer.fit()
    wall = {"bare": [], "trainer": []}
    cpu = {"bare": [], "trainer": []}

    def timed(key: str, fn) -> None:
        _sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall[key].append(args.steps / (time.perf_counter() - w0))
        cpu[key].append(args.steps / (time.process_time() - c0))

    def trainer_block() -> None:
        trainer.config.steps += args.steps
        trainer.fit()

    for _ in range(args.repeats):
        timed("bare", lambda: bare.run(args.steps))
        timed("trainer", trainer_block)
    med = {k: statistics.median(v) for k, v in wall.items()}
    per_rep = [t / b for t, b in zip(wall["trainer"], wall["bare"], strict=True)]
    return {
        "model": kind,
        "setting": setting,
        "batch": batch,
        "shape": tuple(data.shape[1:]),
        "bare_steps_s": med["bare"],
        "trainer_steps_s": med["trainer"],
        "samples_s": med["trainer"] * batch,
        "ratio": med["trainer"] / med["bare"],
        "ratio_min": min(per_rep),
        "ratio_max": max(per_rep),
        "ratio_cpu": statistics.median(cpu["trainer"]) / statistics.median(cpu["bare"]),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops")
    p.add_argument("--steps", type=int, default=None, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="alternating timed blocks per loop")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--models", default="mlp,unet")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.steps is None:
        args.steps = 200 if device.type == "cuda" else 100
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, bf16 {args.bf16}"
    )
    print(
        f"{'model':6} {'setting':9} {'batch':>5} {'shape':>12} {'bare st/s':>10} "
        f"{'trainer st/s':>12} {'samples/s':>10} {'ratio':>6} {'(min-max)':>12} {'cpu-time ratio':>14}"
    )
    for kind in args.models.split(","):
        for setting in ("minimal", "ema+clip"):
            r = bench(kind, setting, args, device)
            rows.append(r)
            print(
                f"{r['model']:6} {r['setting']:9} {r['batch']:5d} {str(r['shape']):>12} {r['bare_steps_s']:10.1f} "
                f"{r['trainer_steps_s']:12.1f} {r['samples_s']:10.0f} {r['ratio']:6.3f} "
                f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) {r['ratio_cpu']:14.3f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
