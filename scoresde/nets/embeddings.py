"""Embeddings of the scalar noise-level feature ``c`` that score networks are conditioned on.

The networks never see the raw time: :class:`~scoresde.nets.model.ScoreModel` feeds them a
well-scaled feature ``c(t)`` (by default ``c = -lambda(t) / 4`` with the log-SNR
``lambda = log(alpha / sigma)``, which lies in about ``[-2.5, 2.5]`` for every SDE of the library)
and these modules lift it to a vector.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

EMBEDDINGS = ("fourier", "positional")


class GaussianFourierProjection(nn.Module):
    """Random Fourier features (Tancik et al. 2020; Song et al. 2021, NCSN++):

    ``gamma(c) = [sin(2 pi W c), cos(2 pi W c)]``, ``W ~ N(0, scale^2)`` drawn once and frozen.

    ``W`` is a persistent buffer (saved in checkpoints, never trained).
    """

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim={dim!r} must be an even integer >= 2")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale={scale!r} must be a finite positive number")
        self.dim = dim
        self.register_buffer("W", torch.randn(dim // 2) * float(scale))

    def forward(self, c: Tensor) -> Tensor:
        """``(B,) -> (B, dim)``."""
        proj = c[:, None].to(self.W.dtype) * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding (Vaswani et al. 2017; DDPM) of ``input_scale * c``:

    ``[sin(s c w_k), cos(s c w_k)]``, ``w_k = max_period^(-k / (dim/2))``, ``k = 0..dim/2-1``.

    ``input_scale`` (default 1000) stretches the small-range feature ``c`` to DDPM's time range.
    """

    def __init__(self, dim: int, input_scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim={dim!r} must be an even integer >= 2")
        self.dim = dim
        self.input_scale = float(input_scale)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        """``(B,) -> (B, dim)``."""
        arg = (self.input_scale * c[:, None]).to(self.freqs.dtype) * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def noise_embedding(kind: str, dim: int, fourier_scale: float) -> nn.Module:
    """Build the embedding named ``kind`` (``"fourier"`` or ``"positional"``)."""
    if kind == "fourier":
        return GaussianFourierProjection(dim, fourier_scale)
    if kind == "positional":
        return PositionalEmbedding(dim)
    raise ValueError(f"embedding={kind!r}; expected one of {', '.join(EMBEDDINGS)}")


def check_noise_input(c: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """The noise feature as a ``(B,)`` tensor on ``like``'s device (a scalar is broadcast)."""
    c = torch.as_tensor(c, device=like.device)
    if not c.is_floating_point():
        c = c.to(torch.float32)
    if c.dim() == 0:
        return c.expand(batch)
    if c.shape != (batch,):
        raise ValueError(f"t has shape {tuple(c.shape)}; expected a scalar or ({batch},)")
    return c


def check_labels(
    y: Tensor | int | None, batch: int, num_classes: int | None, like: Tensor
) -> Tensor | None:
    """Validate class labels: ``None``, or integers in ``[0, num_classes]`` (``num_classes`` is the
    null label of classifier-free guidance). Returns a ``(B,)`` long tensor or ``None``."""
    if y is None:
        return None
    if num_classes is None:
        raise ValueError(
            "labels y were given but the network has no class embedding (num_classes=None)"
        )
    y = torch.as_tensor(y, device=like.device)
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
    y = y.long()
    if y.dim() == 0:
        y = y.expand(batch)
    if y.shape != (batch,):
        raise ValueError(f"labels y have shape {tuple(y.shape)}; expected a scalar or ({batch},)")
    if y.device.type == "cpu" and bool(((y < 0) | (y > num_classes)).any()):
        bad = y[(y < 0) | (y > num_classes)][0].item()
        raise ValueError(
            f"label {bad} is outside 0..{num_classes} ({num_classes} classes; {num_classes} is "
            "the null label)"
        )
    return y
