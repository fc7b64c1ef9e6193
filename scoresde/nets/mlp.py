"""A residual MLP score network for vector data (2-D toy sets, analytic targets)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .embeddings import check_labels, check_noise_input, noise_embedding


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


class _ResidualBlock(nn.Module):
    """``h + W2 SiLU(W1 SiLU(h) + E emb)``: the noise embedding enters every block."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(self.act(h)) + self.emb(emb)
        return h + self.fc2(self.drop(self.act(z)))


class MLP(nn.Module):
    """Residual MLP ``(x, c, y) -> prediction`` with a Gaussian-Fourier noise embedding.

    ``emb = MLP(gamma(c)) [+ E_y]`` with ``gamma(c) = [sin(2 pi W c), cos(2 pi W c)]``,
    ``W ~ N(0, fourier_scale^2)``; then ``h = W_in x``, ``depth`` residual blocks
    ``h <- h + W2 SiLU(W1 SiLU(h) + E_k emb)``, output ``W_out SiLU(LayerNorm(h))`` (zero-initialised,
    so training starts from the zero prediction).

    Args:
        dim: data dimension ``d`` (the input may be ``(B, d)`` or ``(B, ...)`` with ``d`` elements).
        hidden: width.
        depth: number of residual blocks.
        embed_dim: width of the Fourier features.
        fourier_scale: std of the Fourier frequencies ``W`` (relative to the feature ``c``).
        num_classes: enables a class embedding with ``num_classes + 1`` entries; label
            ``num_classes`` is the null label for classifier-free guidance.
        dropout: dropout rate inside the blocks.
        embedding: ``"fourier"`` (default) or ``"positional"``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 128,
        fourier_scale: float = 4.0,
        num_classes: int | None = None,
        dropout: float = 0.0,
        embedding: str = "fourier",
    ) -> None:
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.hidden = _positive_int("hidden", hidden)
        self.depth = _positive_int("depth", depth)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout!r} must lie in [0, 1)")
        if num_classes is not None:
            _positive_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.config: dict[str, Any] = {
            "name": "mlp",
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "embed_dim": embed_dim,
            "fourier_scale": float(fourier_scale),
            "num_classes": num_classes,
            "dropout": float(dropout),
            "embedding": embedding,
        }
        self.embed = noise_embedding(
            embedding, _positive_int("embed_dim", embed_dim, 2), fourier_scale
        )
        self.emb_mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.label_emb = None if num_classes is None else nn.Embedding(num_classes + 1, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        for blk in self.blocks:  # each block starts near the identity
            nn.init.normal_(blk.fc2.weight, std=0.1 / math.sqrt(hidden))
            nn.init.zeros_(blk.fc2.bias)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        """``x``: ``(B, d)`` (or ``(B, ...)`` with ``d`` elements); ``t``: the ``(B,)`` noise
        feature; ``y``: optional ``(B,)`` labels in ``[0, num_classes]``. Returns ``x``'s shape."""
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected (B, {self.dim}) or (B, ...) with "
                f"{self.dim} elements per sample"
            )
        batch = x.shape[0]
        c = check_noise_input(t, batch, x)
        labels = check_labels(y, batch, self.num_classes, x)
        emb = self.emb_mlp(self.embed(c).to(x.dtype))
        if labels is not None:
            emb = emb + self.label_emb(labels).to(emb.dtype)
        h = self.inp(x.reshape(batch, self.dim))
        for blk in self.blocks:
            h = blk(h, emb)
        out = self.out(torch.nn.functional.silu(self.norm(h)))
        return out.reshape(x.shape)
