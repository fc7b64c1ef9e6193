"""Score networks and the wrapper that makes them score functions.

* :class:`MLP` for vector data and :class:`UNet` for images: ``net(x, c, y=None)`` with ``c`` the
  ``(B,)`` noise feature and ``y`` optional class labels (label ``num_classes`` is the null label
  of classifier-free guidance).
* :class:`ScoreModel` wraps a net predicting eps, x0, score or v into ``(x, t) -> score``.
* :func:`build_net` rebuilds a net from its ``config`` dict (what checkpoints store).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .embeddings import EMBEDDINGS, GaussianFourierProjection, PositionalEmbedding
from .mlp import MLP
from .model import TIME_INPUTS, ScoreModel
from .unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}


def build_net(config: dict[str, Any]) -> nn.Module:
    """Build a network from a config dict ``{"name": "mlp" | "unet", **kwargs}``
    (the ``config`` attribute of every built-in net)."""
    if not isinstance(config, dict):
        raise ValueError(f"net config must be a dict, got {type(config).__name__}")
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; available: {', '.join(NETS)}")
    try:
        return NETS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options for net {name!r}: {err}") from None


__all__ = [
    "EMBEDDINGS",
    "MLP",
    "NETS",
    "TIME_INPUTS",
    "GaussianFourierProjection",
    "PositionalEmbedding",
    "ScoreModel",
    "UNet",
    "build_net",
]
