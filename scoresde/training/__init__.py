"""Training: :class:`Trainer` (EMA, bf16, warmup, clipping, atomic checkpoints, exact resume,
DDP under ``torchrun``), checkpoint I/O and :func:`load_pretrained`."""

from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import DistInfo, init_distributed, resolve_device
from .pretrained import build_model, load_pretrained
from .trainer import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, Trainer

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "CheckpointError",
    "DistInfo",
    "TrainConfig",
    "Trainer",
    "build_model",
    "init_distributed",
    "load_checkpoint",
    "load_pretrained",
    "remove_stale_temps",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
