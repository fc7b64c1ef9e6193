"""The trainer: DSM on any device, bf16 autocast, EMA, warmup, clipping, atomic checkpoints, exact
resume and DDP under ``torchrun``.

One optimisation step at step ``k`` on rank ``r``:

1. the batch of ``(seed, k, r)`` (:mod:`scoresde.data`);
2. the loss's randomness (times, noise, label dropout) from a generator on the training device
   reseeded with ``derive_seed(seed, k, r)``;
3. forward (under ``torch.autocast(bfloat16)`` if ``bf16``), backward (DDP averages gradients
   across ranks), gradient-norm clipping, AdamW, the linear warmup schedule
   ``lr_k = lr min(1, (k + 1) / warmup)``;
4. the EMA ``theta_ema <- decay theta_ema + (1 - decay) theta`` through
   ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (buffers included).

Nothing on the hot path synchronises with the device: the loss is accumulated on the device and
read every ``log_every`` steps (JSONL log, tqdm postfix, NaN check). A checkpoint every
``ckpt_every`` steps holds the model, the EMA, the optimizer, the scheduler, the step and every
RNG state of every rank; resuming from it replays the remaining steps bit for bit (on CPU; on
GPU up to the determinism of the kernels).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data import Data, as_data, derive_seed
from ..losses import DSMLoss
from ..nets.model import ScoreModel
from . import distributed as D
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

Callback = Callable[["Trainer", int, Tensor], None]
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
# settings a resumed run may change; every other one must match the checkpoint
_RESUMABLE_CHANGES = {"steps", "device", "ckpt_every", "log_every", "progress", "bf16"}


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_float(name: str, value: Any, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = (
        ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    )
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name}={value!r} must be a number in {lb}{lo}, {hi}{rb}")


@dataclass
class TrainConfig:
    """Training settings (all plain values: stored in checkpoints as a dict).

    Attributes:
        steps: total optimisation steps.
        batch_size: global batch size, split evenly across DDP ranks.
        lr: peak learning rate of AdamW.
        weight_decay, betas, adam_eps: AdamW settings.
        warmup: linear learning-rate warmup steps (0: none).
        grad_clip: max global gradient 2-norm (``None``: no clipping).
        ema_decay: EMA decay (``None``: no EMA).
        ema_warmup: ramp the decay as ``min(ema_decay, (1 + k) / (10 + k))`` after ``k`` updates,
            so short runs do not keep a large share of the untrained weights (with a fixed 0.999
            the initial weights still weigh ``0.999^k``: 22% after 1,500 steps).
        seed: seeds the data order and the loss's randomness.
        device: ``None``/``"auto"`` (CUDA if available), or ``"cpu"``, ``"cuda:1"``, ...
        bf16: run the forward pass under ``torch.autocast(dtype=torch.bfloat16)``.
        ckpt_every: steps between checkpoints (0: only at the end).
        log_every: steps between metric lines (loss mean over the interval).
        progress: show a tqdm bar (rank 0).
    """

    steps: int = 10_000
    batch_size: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    ema_warmup: bool = True
    seed: int = 0
    device: str | None = None
    bf16: bool = False
    ckpt_every: int = 1000
    log_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf, hi_open=True)
        betas = tuple(self.betas)
        if len(betas) != 2:
            raise ValueError(f"betas={self.betas!r} must be a pair")
        for b in betas:
            _check_float("betas", b, 0.0, 1.0, hi_open=True)
        self.betas = (float(betas[0]), float(betas[1]))
        _check_float("adam_eps", self.adam_eps, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_int("warmup", self.warmup, 0)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, 0.0, math.inf, lo_open=True, hi_open=True)
        if self.ema_decay is not None:
            _check_float("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        _check_int("seed", self.seed, 0)
        _check_int("ckpt_every", self.ckpt_every, 0)
        _check_int("log_every", self.log_every, 1)
        if self.device is not None and not isinstance(self.device, str):
            self.device = str(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "betas" else v) for k, v in d.items() if k in names})


class _Warmup:
    """``lr multiplier = min(1, (k + 1) / warmup)`` (a class, so LambdaLR can save its state)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, k: int) -> float:
        return 1.0 if self.warmup <= 0 else min(1.0, (k + 1) / self.warmup)


def _buffer_sync(every_forward: bool) -> dict[str, bool]:
    """DDP's keyword for re-broadcasting buffers at each forward: ``forward_sync_buffers``
    since torch 2.13 (``broadcast_buffers`` is deprecated there), ``broadcast_buffers`` before."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: every_forward}


def _score_model(model: nn.Module) -> ScoreModel:
    if not isinstance(model, ScoreModel):
        raise ValueError(
            f"model must be a scoresde.nets.ScoreModel (net + SDE + parametrisation); got "
            f"{type(model).__name__}"
        )
    return model


def _ema_groups(ema: AveragedModel, model: nn.Module) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Pairs of (EMA tensors, model tensors) per dtype: parameters then buffers, as
    ``AveragedModel(use_buffers=True)`` pairs them."""
    groups: dict[Any, tuple[list[Tensor], list[Tensor]]] = {}
    mine = [*ema.module.parameters(), *ema.module.buffers()]
    theirs = [*model.parameters(), *model.buffers()]
    if len(mine) != len(theirs):
        raise RuntimeError("the EMA copy and the model have different tensors")
    for a, b in zip(mine, theirs, strict=True):
        ea, eb = groups.setdefault((a.device, a.dtype), ([], []))
        ea.append(a.detach())
        eb.append(b.detach())
    return list(groups.values())


class Trainer:
    """Train a :class:`~scoresde.nets.ScoreModel` on a dataset.

    Args:
        model: the score model (its net, SDE and parametrisation).
        data: a dataset name, :class:`~scoresde.data.Data`, tensor, ``TensorDataset``,
            ``Dataset`` or ``DataLoader`` (see :func:`scoresde.data.as_data`).
        loss: a loss callable (default :class:`~scoresde.losses.DSMLoss` with sigma^2 weighting).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go (``None``: nothing is written).
        callbacks: ``callback(trainer, step, loss)`` after every step (``loss`` is a device
            tensor: reading it synchronises).

    Under ``torchrun`` the trainer joins the process group, wraps the model in
    ``DistributedDataParallel`` and lets rank 0 alone write checkpoints, logs and the bar.
    """

    def __init__(
        self,
        model: ScoreModel,
        data: Any,
        loss: Callable[..., Tensor] | None = None,
        config: TrainConfig | None = None,
        out_dir: str | os.PathLike | None = None,
        callbacks: Sequence[Callback] = (),
        **overrides: Any,
    ) -> None:
        self.model = _score_model(model)
        self.config = replace(config or TrainConfig(), **overrides)
        self.data: Data = as_data(data)
        self.loss = loss if loss is not None else DSMLoss(model.sde)
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.callbacks = list(callbacks)
        self.dist = D.init_distributed(self.config.device)
        self.device = self.dist.device
        world = self.dist.world_size
        if self.config.batch_size % world:
            raise ValueError(
                f"batch_size={self.config.batch_size} is not divisible by the {world} DDP ranks"
            )
        self.model.to(self.device)
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The built-in nets' only buffers (Fourier frequencies) never change: they are
            # broadcast from rank 0 once here, and re-broadcasting them at every forward
            # (DDP's broadcast_buffers) is kept only for running statistics (BatchNorm).
            running = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
            self.ddp_model: nn.Module = DistributedDataParallel(
                self.model, device_ids=ids, gradient_as_bucket_view=True, **_buffer_sync(running)
            )
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, src=0)
        else:
            self.ddp_model = self.model
        cfg = self.config
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            **({"fused": True} if self.device.type == "cuda" else {"foreach": True}),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _Warmup(cfg.warmup))
        self.ema: AveragedModel | None = None
        if cfg.ema_decay is not None:
            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
            )
            self._ema_groups = _ema_groups(self.ema, self.model)
            self._ema_count = 0  # host mirror of ema.n_averaged (reading that one syncs)
        self.use_labels = self.model.num_classes is not None
        if self.use_labels and self.data.info.num_classes is None:
            raise ValueError(
                f"the net is class-conditional (num_classes={self.model.num_classes}) but the "
                f"data {self.data.info.name!r} have no labels"
            )
        self.stream = self.data.stream(
            cfg.batch_size // world, cfg.seed, self.dist.rank, world, self.device
        )
        self._gen = torch.Generator(device=self.device)
        self.step = 0
        self.last_metrics: dict[str, Any] = {}
        self._saved: tuple[str, int] | None = None  # (path, step) of the last checkpoint written

    # -- paths and metadata -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> str | None:
        """``out_dir/checkpoint.pt`` (the latest checkpoint), or ``None`` without ``out_dir``."""
        return None if self.out_dir is None else os.path.join(self.out_dir, CHECKPOINT_NAME)

    @property
    def metrics_path(self) -> str | None:
        """``out_dir/metrics.jsonl``: one JSON line every ``log_every`` steps."""
        return None if self.out_dir is None else os.path.join(self.out_dir, METRICS_NAME)

    def run_config(self) -> dict[str, Any]:
        """What rebuilds this run: net, SDE, parametrisation, data, loss and training settings."""
        net_cfg = getattr(self.model.net, "config", None)
        loss_cfg = self.loss.to_config() if hasattr(self.loss, "to_config") else None
        return {
            "net": dict(net_cfg) if net_cfg is not None else None,
            "sde": self.model.sde.to_config(),
            "model": self.model.config,
            "data": self.data.info.to_dict(),
            "loss": loss_cfg,
            "train": self.config.to_dict(),
        }

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint content (RNG states of every rank; a collective under DDP)."""
        states = D.all_gather_object(rng_state(self.device), self.dist)
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.module.state_dict(),
            "ema_n_averaged": None if self.ema is None else self._ema_count,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": states,
            "world_size": self.dist.world_size,
            "config": self.run_config(),
        }

    def save(self, path: str | os.PathLike | None = None) -> str | None:
        """Write a checkpoint atomically (rank 0; every rank must call it under DDP)."""
        path = os.fspath(path) if path is not None else self.checkpoint_path
        state = self.state_dict()  # collective: all ranks
        if path is None or not self.dist.is_main:
            return path
        save_checkpoint(state, path)
        self._saved = (path, self.step)
        return path

    def _check_compatible(self, ckpt: dict[str, Any], path: str) -> None:
        saved = ckpt.get("config") or {}
        current = self.run_config()
        diffs = []
        for key in ("net", "sde", "model", "loss"):
            if saved.get(key) != current[key]:
                diffs.append(f"{key}: checkpoint {saved.get(key)!r} vs now {current[key]!r}")
        for key in ("name", "shape"):
            a, b = (saved.get("data") or {}).get(key), current["data"][key]
            if a != b:
                diffs.append(f"data {key}: checkpoint {a!r} vs now {b!r}")
        old_train = saved.get("train") or {}
        for key, now in current["train"].items():
            if key in _RESUMABLE_CHANGES:
                continue
            was = old_train.get(key)
            if (list(was) if isinstance(was, tuple) else was) != (
                list(now) if isinstance(now, tuple) else now
            ):
                diffs.append(f"{key}: checkpoint {was!r} vs now {now!r}")
        if diffs:
            raise CheckpointError(
                f"cannot resume from {path!r}: the run's settings differ from the checkpoint's "
                "(use the same settings, or a new output directory):\n  " + "\n  ".join(diffs)
            )

    def load_state_dict(self, ckpt: dict[str, Any], path: str = "<state>") -> None:
        """Restore a checkpoint made by :meth:`state_dict`."""
        self._check_compatible(ckpt, path)
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError(f"{path!r} holds no EMA but this run uses one")
            self.ema.module.load_state_dict(ckpt["ema"])
            self._ema_count = int(ckpt["ema_n_averaged"])
            self.ema.n_averaged.fill_(self._ema_count)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        states = ckpt["rng"]
        if int(ckpt.get("world_size", 1)) == self.dist.world_size:
            set_rng_state(states[self.dist.rank], self.device)
        else:
            warnings.warn(
                f"resuming a {ckpt.get('world_size')}-process run on {self.dist.world_size}: the "
                "data order and randomness differ from an uninterrupted run",
                stacklevel=2,
            )
            set_rng_state(states[0], self.device)

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load a checkpoint (default ``out_dir/checkpoint.pt``) into this trainer; returns its
        step. Rank 0 reads the file and broadcasts it, so other nodes need no shared disk."""
        path = os.fspath(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("resume() needs a path when the trainer has no out_dir")
        result: Any = None
        if self.dist.is_main:
            try:
                result = load_checkpoint(path, map_location="cpu")
            except (FileNotFoundError, CheckpointError) as err:
                result = f"{type(err).__name__}: {err}"
        result = D.broadcast_object(result, self.dist)
        if isinstance(result, str):
            raise (FileNotFoundError if result.startswith("FileNotFound") else CheckpointError)(
                result.split(": ", 1)[1]
            )
        self.load_state_dict(result, path)
        self._saved = (path, self.step)
        if self.dist.is_main and self.metrics_path and os.path.exists(self.metrics_path):
            self._truncate_metrics(self.step)
        return self.step

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after ``step`` by a run that was then killed."""
        with open(self.metrics_path, encoding="utf-8") as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
        if len(keep) != len(lines):
            tmp = self.metrics_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(keep)
            os.replace(tmp, self.metrics_path)

    # -- training -----------------------------------------------------------------------------
    def _log(self, acc: Tensor, n: int, t0: float, s0: int, gnorm: Tensor | None, bar) -> None:
        if self.dist.distributed:
            torch.distributed.all_reduce(acc)
            acc = acc / self.dist.world_size
        loss = float(acc) / max(n, 1)
        if not math.isfinite(loss):
            if self._saved is None:
                last = "no checkpoint was written by this run"
            else:
                last = f"the last checkpoint is {self._saved[0]!r} at step {self._saved[1]}"
            raise FloatingPointError(
                f"the loss became {loss} between steps {s0} and {self.step}; {last}. Lower the "
                "learning rate or enable gradient clipping."
            )
        now = time.perf_counter()
        rate = (self.step - s0) / max(now - t0, 1e-12)
        metrics = {
            "step": self.step,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": None if gnorm is None else float(gnorm),
            "steps_per_sec": rate,
            "samples_per_sec": rate * self.config.batch_size,
            "time": time.time(),
        }
        self.last_metrics = metrics
        if self.dist.is_main:
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if self.metrics_path is not None:
                with open(self.metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(metrics) + "\n")

    def fit(self, resume: bool | str | os.PathLike = False) -> dict[str, Any]:
        """Train until ``config.steps``.

        Args:
            resume: ``False``: start fresh (refuses to overwrite an existing checkpoint in
                ``out_dir``); ``True``: continue from ``out_dir/checkpoint.pt`` if it exists,
                else start fresh; a path: continue from that checkpoint (it must exist).

        Returns:
            The last logged metrics (``step``, ``loss``, ``lr``, ...) plus ``checkpoint``.
        """
        cfg = self.config
        ckpt_path = self.checkpoint_path
        if resume is True:
            if ckpt_path is not None and os.path.exists(ckpt_path):
                self.resume(ckpt_path)
        elif resume:
            self.resume(resume)
        elif self.step == 0 and ckpt_path is not None and os.path.exists(ckpt_path):
            raise FileExistsError(
                f"{ckpt_path!r} already exists; resume it (resume=True, --resume) or choose "
                "another output directory"
            )
        if self.step > cfg.steps:
            raise ValueError(
                f"the checkpoint is at step {self.step}, past steps={cfg.steps}; to continue "
                f"training give steps > {self.step} (--steps)"
            )
        if self.dist.is_main and self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)
            remove_stale_temps(ckpt_path)
            if self.step == 0 and self.metrics_path and os.path.exists(self.metrics_path):
                os.remove(self.metrics_path)  # a fresh run starts a fresh log
            with open(os.path.join(self.out_dir, "config.json"), "w", encoding="utf-8") as f:
                json.dump(self.run_config(), f, indent=2)

        self.ddp_model.train()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and self.dist.is_main),
            dynamic_ncols=True,
            desc="train",
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        acc = torch.zeros((), device=self.device)
        n_acc, t0, s0 = 0, time.perf_counter(), self.step
        gnorm: Tensor | None = None
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        try:
            while self.step < cfg.steps:
                step = self.step
                x, y = self.stream.batch(step)
                if not self.use_labels:
                    y = None
                self._gen.manual_seed(derive_seed(cfg.seed, step, self.dist.rank, 0x1055))
                with amp:
                    loss = self.loss(self.ddp_model, x, y, generator=self._gen)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    gnorm = nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self._update_ema()
                acc += loss.detach().float()
                n_acc += 1
                self.step = step + 1
                bar.update(1)
                for callback in self.callbacks:
                    callback(self, self.step, loss)
                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    self._log(acc, n_acc, t0, s0, gnorm, bar)
                    acc.zero_()
                    n_acc, t0, s0 = 0, time.perf_counter(), self.step
                if self.out_dir is not None and (
                    last or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
                ):
                    self.save()
        finally:
            bar.close()
        D.barrier(self.dist)
        return {"step": self.step, **self.last_metrics, "checkpoint": ckpt_path}

    def _update_ema(self) -> None:
        """``ema.update_parameters(model)`` without its per-step device synchronisations.

        ``AveragedModel.update_parameters`` evaluates ``bool(n_averaged == 0)`` and copies
        ``n_averaged`` to the device at every call, which stalls a GPU pipeline once per step.
        This does the same with the counter mirrored on the host: the first update copies the
        model (``n_averaged == 0``), every later one applies the same ``get_ema_multi_avg_fn``
        (``torch._foreach_lerp_``) to the same parameter and buffer lists, grouped by dtype once.
        """
        assert self.ema is not None
        fn = self.ema.multi_avg_fn
        if self.config.ema_warmup and self.config.ema_decay is not None:
            k = self._ema_count
            fn = get_ema_multi_avg_fn(min(self.config.ema_decay, (1 + k) / (10 + k)))
        for ema_list, model_list in self._ema_groups:
            if self._ema_count == 0 or not ema_list[0].is_floating_point():
                torch._foreach_copy_(ema_list, model_list)
            else:
                fn(ema_list, model_list, self.ema.n_averaged)
        self.ema.n_averaged += 1
        self._ema_count += 1

    def ema_model(self) -> ScoreModel:
        """The EMA copy of the score model (the model itself without EMA)."""
        return self.model if self.ema is None else self.ema.module

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        D.shutdown(self.dist)


__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "TrainConfig", "Trainer"]
