"""Rebuild a trained model from its checkpoint alone."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from ..nets import ScoreModel, build_net
from ..sde import sde_from_config
from .checkpoint import CheckpointError, load_checkpoint
from .distributed import resolve_device


def build_model(
    net_config: dict[str, Any],
    sde_config: dict[str, Any],
    model_config: dict[str, Any] | None = None,
) -> ScoreModel:
    """``ScoreModel(build_net(net_config), sde_from_config(sde_config), **model_config)``."""
    return ScoreModel(build_net(net_config), sde_from_config(sde_config), **(model_config or {}))


def load_pretrained(
    path: str | os.PathLike, device: str | torch.device | None = None, ema: bool = True
) -> tuple[Any, ScoreModel, Any, dict[str, Any]]:
    """Load a checkpoint written by the trainer and rebuild everything from it.

    Args:
        path: the checkpoint file, or a directory written by ``scoresde export``.
        device: where to put the model (default: CUDA if available, else CPU).
        ema: use the EMA weights when the checkpoint has them (the usual choice for sampling).

    Returns:
        ``(sde, model, score_fn, meta)``: the SDE (``scoresde.sde_from_config``), the
        :class:`~scoresde.nets.ScoreModel` in eval mode without gradients, its
        ``(x, t) -> score`` function, and ``meta`` with ``step``, ``ema`` (whether EMA weights
        were loaded), ``data`` (``name``, ``shape``, ``is_2d``, ``is_image``, ``num_classes``,
        ``sigma_data``, ``value_range``), ``net``, ``sde``, ``model``, ``loss``, ``train`` and
        ``path``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):  # a `scoresde export` directory
        from ..export import load_exported

        return load_exported(path, device, ema)
    ckpt = load_checkpoint(path, map_location="cpu")
    cfg = ckpt.get("config") or {}
    for key in ("sde", "model", "data"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"{path!r} lacks the {key!r} configuration needed to rebuild it")
    if not isinstance(cfg.get("net"), dict):
        raise CheckpointError(
            f"{path!r} was trained with a custom network that has no `config` dict; build that "
            "network yourself and load load_checkpoint(path)['model'] into a ScoreModel"
        )
    model = build_model(cfg["net"], cfg["sde"], cfg["model"])
    use_ema = bool(ema and ckpt.get("ema") is not None)
    if ema and not use_ema:
        warnings.warn(f"{path!r} has no EMA weights; using the raw weights", stacklevel=2)
    try:
        model.load_state_dict(ckpt["ema"] if use_ema else ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path!r}: the weights do not fit the stored config: {err}"
        ) from None
    model.to(resolve_device(device)).eval().requires_grad_(False)
    meta = {
        "path": path,
        "step": int(ckpt.get("step", 0)),
        "ema": use_ema,
        "data": dict(cfg["data"]),
        "net": dict(cfg["net"]),
        "sde": dict(cfg["sde"]),
        "model": dict(cfg["model"]),
        "loss": cfg.get("loss"),
        "train": cfg.get("train"),
    }
    return model.sde, model, model.score_fn(), meta


__all__ = ["build_model", "load_pretrained"]
