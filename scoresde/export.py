"""Weights-only export: ``DIR/model.safetensors`` plus ``DIR/config.json``.

A training checkpoint carries optimizer, EMA and RNG state; an export keeps one set of weights
(EMA by default) as safetensors (no pickle at all) and the configuration that rebuilds the model
as JSON. ``load_pretrained(DIR)`` reads either form, so ``scoresde sample`` and ``scoresde check``
take an export wherever they take a checkpoint.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch

from .training.checkpoint import CheckpointError, load_checkpoint
from .training.distributed import resolve_device
from .training.pretrained import build_model

FORMAT = "scoresde-export"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def export_model(
    ckpt: str | os.PathLike, out_dir: str | os.PathLike, ema: bool = True
) -> tuple[str, str]:
    """Write the weights (EMA if present and ``ema``) and config of checkpoint ``ckpt`` to ``out_dir``.

    Returns the paths of ``model.safetensors`` and ``config.json``. Each file is written to a
    temporary name and renamed, so a killed export leaves no partial file under either name.
    """
    from safetensors.torch import save_file

    ckpt, out_dir = os.fspath(ckpt), os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir!r} is a file; expected a directory")
    state = load_checkpoint(ckpt, map_location="cpu")
    cfg = state.get("config") or {}
    for key in ("net", "sde", "model", "data"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"{ckpt!r} lacks the {key!r} configuration needed to export it")
    use_ema = bool(ema and state.get("ema") is not None)
    if ema and not use_ema:
        warnings.warn(f"{ckpt!r} has no EMA weights; exporting the raw weights", stacklevel=2)
    weights = state["ema"] if use_ema else state["model"]
    # clone: safetensors refuses tensors that share storage
    tensors = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(state.get("step", 0)),
        "ema": use_ema,
        **{k: cfg.get(k) for k in ("net", "sde", "model", "data", "loss", "train")},
    }
    os.makedirs(out_dir, exist_ok=True)
    weights_path, config_path = os.path.join(out_dir, WEIGHTS), os.path.join(out_dir, CONFIG)
    save_file(tensors, weights_path + ".tmp", metadata={"format": FORMAT})
    os.replace(weights_path + ".tmp", weights_path)
    with open(config_path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=1)
    os.replace(config_path + ".tmp", config_path)
    return weights_path, config_path


def load_exported(
    directory: str | os.PathLike, device: str | torch.device | None = None, ema: bool = True
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Rebuild ``(sde, model, score_fn, meta)`` from an export, as :func:`load_pretrained`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = os.fspath(directory)
    config_path, weights_path = os.path.join(directory, CONFIG), os.path.join(directory, WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{directory!r} is not a scoresde export: {os.path.basename(path)} is missing"
            )
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path!r} is not readable JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path!r} is not a scoresde export config")
    if not ema and config.get("ema"):
        raise ValueError(
            f"{directory!r} holds only the EMA weights; export with --no-ema for the raw ones"
        )
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{weights_path!r} is not a readable safetensors file: {err}"
        ) from None
    model = build_model(config["net"], config["sde"], config["model"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{directory!r}: the weights do not fit the config: {err}") from None
    model.to(resolve_device(device)).eval().requires_grad_(False)
    meta = {
        "path": directory,
        "step": int(config.get("step", 0)),
        "ema": bool(config.get("ema")),
        **{k: config.get(k) for k in ("data", "net", "sde", "model", "loss", "train")},
    }
    return model.sde, model, model.score_fn(), meta


__all__ = ["export_model", "load_exported"]
