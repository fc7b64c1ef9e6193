"""Sampling to disk in fixed-size chunks: memory flat in ``n``, resumable, shardable over ranks.

The run ``(n, chunk, seed)`` is cut into chunks ``i = 0 .. ceil(n / chunk) - 1`` of ``chunk``
samples (the last one smaller). Chunk ``i`` is a pure function of its index: it is drawn with the
generator :func:`chunk_generator` ``(seed, i)`` (seeded with ``seed`` itself for ``i = 0``, so a
run of one chunk is ``sample(..., generator=torch.Generator().manual_seed(seed))``, and with
``derive_seed(seed, i)`` after). Hence the rule for ``torchrun``: rank ``r`` of ``W`` draws the
chunks ``i = r, r + W, r + 2W, ...``, and the merged output -- chunks in index order -- is
bit-identical to a one-process run with the same ``n``, ``chunk`` and ``seed`` on the same device
type (a different rank count, or a resume, changes nothing).

Layout of ``DIR``: ``run.json`` (the settings; a resume must repeat them), ``chunks/NNNNNN.npy``
(each written to a temporary name and renamed, so a file present is complete: a killed run loses
at most the chunks in progress, one per rank), and at the end ``samples.npy``, merged through a
a sequential write one chunk at a time, after which the chunk files are removed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import derive_seed

MANIFEST = "run.json"
CHUNKS = "chunks"
SAMPLES = "samples.npy"


class OutputDirError(ValueError):
    """``--out`` cannot hold this run (a file, not writable, or another run's directory)."""


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index``: ``seed`` for chunk 0, ``derive_seed(seed, index)`` after."""
    return int(seed) if index == 0 else derive_seed(seed, index)


def chunk_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator that draws chunk ``index`` (its prior sample, then the solver noise)."""
    return torch.Generator().manual_seed(chunk_seed(seed, index))


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Sizes of the chunks of an ``n``-sample run: ``chunk``, ..., ``chunk``, the remainder."""
    if n < 1 or chunk < 1:
        raise ValueError(f"n={n!r}, chunk={chunk!r}: both must be positive")
    return [min(chunk, n - start) for start in range(0, n, chunk)]


def prepare_out_dir(out: str, settings: dict[str, Any], resume: bool) -> bool:
    """Check that ``out`` can hold the run before any work; returns whether it is already done.

    Raises :class:`OutputDirError` if ``out`` is a file or cannot be created or written, or if
    ``resume`` is asked for a run with other settings. Without ``resume`` a run already in
    ``out`` is replaced (:func:`clear_run`); with it, its finished chunks are kept.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputDirError(f"--out {out!r} is a file; expected a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"--out {out!r} cannot be created: {err.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"--out {out!r} is not writable")
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return False
    if not resume:  # a new run replaces the old one, as a plain rerun always did
        return False
    with open(path, encoding="utf-8") as fh:
        stored = json.load(fh)
    diff = sorted(
        k
        for k in set(stored["settings"]) | set(settings)
        if stored["settings"].get(k) != settings.get(k)
    )
    if diff:
        detail = ", ".join(
            f"{k}: {stored['settings'].get(k)!r} -> {settings.get(k)!r}" for k in diff
        )
        raise OutputDirError(f"--resume: the run in {out!r} used other settings ({detail})")
    return bool(stored.get("complete"))


def clear_run(out: str) -> None:
    """Remove a previous run's manifest, chunks and samples from ``out``."""
    shutil.rmtree(os.path.join(out, CHUNKS), ignore_errors=True)
    for name in (MANIFEST, SAMPLES):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


def write_manifest(out: str, settings: dict[str, Any], complete: bool = False) -> None:
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"settings": settings, "complete": complete}, fh, indent=1)
    os.replace(tmp, os.path.join(out, MANIFEST))


def chunk_path(out: str, index: int) -> str:
    return os.path.join(out, CHUNKS, f"{index:06d}.npy")


def _save_atomic(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def draw_chunks(
    out: str,
    sizes: list[int],
    draw: Callable[[int, int], Tensor],
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Draw and save this rank's missing chunks (``i = rank mod world_size``); returns how many.

    ``draw(index, size)`` returns the chunk's samples.
    """
    os.makedirs(os.path.join(out, CHUNKS), exist_ok=True)
    done = 0
    for i in range(rank, len(sizes), world_size):
        path = chunk_path(out, i)
        if os.path.exists(path):
            continue
        x = draw(i, sizes[i]).detach().to("cpu", torch.float32).numpy()
        if x.shape[0] != sizes[i]:
            raise RuntimeError(f"chunk {i}: drew {x.shape[0]} samples, expected {sizes[i]}")
        _save_atomic(path, x)
        done += 1
    return done


def merge_chunks(out: str, sizes: list[int], settings: dict[str, Any]) -> str:
    """Concatenate the chunk files into ``out/samples.npy`` one chunk at a time, mark the run
    complete, then remove the chunk files (in that order: a kill at any point is resumable)."""
    missing = [i for i in range(len(sizes)) if not os.path.exists(chunk_path(out, i))]
    if missing:
        raise RuntimeError(f"cannot merge: chunks {missing[:5]} of {len(sizes)} are missing")
    first = np.load(chunk_path(out, 0), mmap_mode="r")
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": (sum(sizes), *first.shape[1:]),
    }
    del first
    path = os.path.join(out, SAMPLES)
    tmp = path + ".tmp"
    # plain sequential writes, one chunk in memory at a time (a memory map of the output would
    # count its dirty pages into the process's resident set)
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for i in range(len(sizes)):
            np.ascontiguousarray(np.load(chunk_path(out, i)), dtype=np.float32).tofile(fh)
    os.replace(tmp, path)
    write_manifest(out, settings, complete=True)
    shutil.rmtree(os.path.join(out, CHUNKS))
    return path


__all__ = [
    "OutputDirError",
    "chunk_generator",
    "chunk_seed",
    "chunk_sizes",
    "clear_run",
    "draw_chunks",
    "merge_chunks",
    "prepare_out_dir",
    "write_manifest",
]
