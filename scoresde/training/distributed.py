"""``torch.distributed`` set-up for DDP under ``torchrun`` (single node or many, unchanged).

``torchrun`` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` initialises the default process group from them
(``init_method="env://"``) with NCCL on GPUs and gloo on CPUs, and binds each process to the GPU
``cuda:LOCAL_RANK``. Without those variables (a plain ``python`` run) it is a no-op and the run is
single-process. Multi-node runs need nothing else: ``torchrun --nnodes N --node-rank i
--rdzv-endpoint HOST:PORT ...`` sets the same variables on every node.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``, and whether this
    module created the process group (and so should destroy it)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``None`` / ``"auto"``: ``cuda:LOCAL_RANK`` if CUDA is available, else ``cpu``; otherwise
    the named device (a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK``)."""
    if device is None or device == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a valid torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available here")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} requested but MPS is not available here")
    return dev


def init_distributed(
    device: str | torch.device | None = None, backend: str | None = None
) -> DistInfo:
    """Join the ``torchrun`` process group if there is one (see the module docstring).

    Args:
        device: as :func:`resolve_device`; under DDP each process gets ``cuda:LOCAL_RANK``.
        backend: ``"nccl"`` / ``"gloo"`` (default: NCCL for CUDA devices, gloo otherwise).
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), local, resolve_device(device, local)
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, resolve_device(device, 0))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun"
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://"}
    if dev.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = dev  # binds NCCL to this GPU up front (torch >= 2.3)
    dist.init_process_group(**kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, owns_group=True)


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _object_device(info: DistInfo) -> torch.device | None:
    return info.device if dist.get_backend() == "nccl" else None


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without DDP)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without DDP)."""
    if not info.distributed:
        return obj
    box = [obj if info.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_object_device(info))
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op without DDP)."""
    if info.distributed:
        dist.barrier()


__all__ = [
    "DistInfo",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "resolve_device",
    "shutdown",
]
