"""Checkpoints: atomic writes, ``weights_only`` loading, RNG state capture.

A checkpoint is a dict of tensors and plain Python containers only (``dict``, ``list``,
``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``), so it loads with
``torch.load(..., weights_only=True)``, which refuses any pickle that would construct other
objects or call code. Configurations are stored as plain dicts.

Writes are atomic: the file is written to a temporary name in the same directory, flushed and
``fsync``-ed, then renamed over the destination with ``os.replace`` (atomic on POSIX and
Windows), and the directory entry is ``fsync``-ed. A process killed at any point leaves either
the previous checkpoint or the new one, never a partial file under the final name.

Every checkpoint stores ``checksum``: the SHA-256 of its whole content (each tensor's key path,
dtype, shape and bytes, and every plain value), verified on load, so a file changed on disk (a
flipped byte inside a tensor, which unpickling alone does not notice) is refused.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pickle
import random
import re
import tempfile
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT = "scoresde-checkpoint"
VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A file that is not a readable, trusted scoresde checkpoint."""


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first entry that ``weights_only`` loading would refuse."""
    if isinstance(obj, (Tensor, torch.Size) + _PLAIN):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}; checkpoints hold only tensors and plain containers "
        "(store configurations as dicts)"
    )


def content_checksum(obj: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content: every tensor's key path, dtype, shape and bytes,
    and every plain value, in a fixed order (the ``checksum`` entry itself excluded)."""
    h = hashlib.sha256()

    def visit(o: Any, where: str) -> None:
        if isinstance(o, Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"{where}:tensor:{t.dtype}:{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, (dict, OrderedDict)):
            h.update(f"{where}:dict:{len(o)}:".encode())
            for k in sorted(o, key=repr):
                visit(o[k], f"{where}/{k!r}")
        elif isinstance(o, (list, tuple, torch.Size)):
            h.update(f"{where}:{type(o).__name__}:{len(o)}:".encode())
            for i, v in enumerate(o):
                visit(v, f"{where}/{i}")
        else:
            h.update(f"{where}:{type(o).__name__}:{o!r}:".encode())

    visit({k: v for k, v in obj.items() if k != "checksum"}, "")
    return h.hexdigest()


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_pattern(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.*.tmp")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> str:
    """Write ``{"format", "version", **state}`` to ``path`` atomically (temp file, fsync, rename).

    Raises ``TypeError`` before writing anything if ``state`` holds an object that
    ``weights_only`` loading would refuse.
    """
    path = os.fspath(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    _check_plain(payload)
    payload["checksum"] = content_checksum(payload)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return path


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Delete temporary files left next to ``path`` by writers that were killed mid-write."""
    removed = []
    for tmp in glob.glob(_temp_pattern(os.fspath(path))):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _refused_global(err: BaseException) -> str | None:
    """The callable a refused pickle names (``posix.system``, ``getattr``, ...), if any."""
    match = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    return match.group(1) if match else None


def _unpickler_detail(err: BaseException) -> str:
    """The informative part of torch's weights-only unpickling error, without its advice."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        return rest.split("\n")[0].strip() or "unreadable pickle"
    return "unreadable pickle" if "weights_only" in text else _first_line(err)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and validate a scoresde checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is truncated or corrupt, is not a scoresde checkpoint, comes
            from a newer version, was changed after it was written (its ``checksum`` does not
            match; files written before checksums existed carry none and are not checked), or
            holds objects other than tensors and plain containers (refused for safety: loading
            them could run code).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        name = _refused_global(err)
        if name is not None:
            raise CheckpointError(
                f"refused to load {path!r} for safety: it holds objects other than tensors (a "
                f"pickled reference to {name!r}, which loading would call). A scoresde "
                "checkpoint holds only tensors and plain containers; do not load this file."
            ) from None
        raise CheckpointError(
            f"{path!r} is truncated or corrupt and cannot be read (unpickling failed: "
            f"{_unpickler_detail(err)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path!r} is truncated or corrupt and cannot be read "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path!r} is not a scoresde checkpoint (expected a dict with format={FORMAT!r}; "
            f"found {keys})"
        )
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path!r} has checkpoint version {version!r}; this scoresde reads up to {VERSION}"
        )
    stored = obj.get("checksum")
    if stored is not None and stored != content_checksum(obj):
        raise CheckpointError(
            f"{path!r} was changed after it was written: its content does not match the SHA-256 "
            "checksum stored in it (a corrupted disk or copy, or an edit); refusing to use it"
        )
    return obj


# -- RNG state -----------------------------------------------------------------------------------
def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global RNG state as tensors and plain containers: torch CPU, CUDA (of ``device``),
    numpy's legacy global generator and Python's ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002 (the global RNG user code may draw from)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))


__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "content_checksum",
    "load_checkpoint",
    "remove_stale_temps",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
