"""A U-Net score network for images (DDPM / DDPM++ family: Ho et al. 2020; Song et al. 2021).

Structure, for ``channel_mult = (m_0, ..., m_{L-1})`` and image side ``S``:

* ``conv_in`` (3x3) to ``channels``;
* encoder level ``i`` (resolution ``S / 2^i``): ``num_res_blocks`` ResNet blocks to
  ``channels * m_i`` channels, each followed by self-attention when ``S / 2^i`` is in
  ``attn_resolutions``; a stride-2 3x3 convolution between levels;
* middle: ResNet block, self-attention, ResNet block;
* decoder: mirror image with ``num_res_blocks + 1`` blocks per level, each taking the matching
  encoder activation as a skip connection (channel concatenation); nearest-neighbour upsampling
  followed by a 3x3 convolution between levels;
* ``GroupNorm -> SiLU -> conv_out`` (3x3, zero-initialised).

A ResNet block is ``h = conv(SiLU(GN(x)))``; ``h = GN(h) (1 + scale) + shift`` with
``(scale, shift) = Linear(SiLU(emb))`` (the noise embedding enters every block, FiLM style);
``h = conv(dropout(SiLU(h)))`` (zero-initialised); output ``(skip(x) + h) / sqrt(2)``.
Self-attention is multi-head dot-product attention over the ``H W`` positions with a GroupNorm in
front and a zero-initialised output projection, added residually.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import check_labels, check_noise_input, noise_embedding
from .mlp import _positive_int


def _groups(channels: int, max_groups: int = 32) -> int:
    """The number of GroupNorm groups: the largest divisor of ``channels`` not above
    ``max_groups`` (32 for the usual multiples of 32)."""
    return math.gcd(channels, max_groups)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm ResNet block with FiLM noise conditioning (see the module docstring)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return (self.skip(x) + h) * (1 / math.sqrt(2))


class AttnBlock(nn.Module):
    """``x + proj(MHA(GN(x)))`` over the ``H W`` positions (``F.scaled_dot_product_attention``)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(out)


class _Stage(nn.Module):
    """A ResNet block optionally followed by self-attention."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, attn: bool, heads: int):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, dropout)
        self.attn = AttnBlock(cout, heads) if attn else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """U-Net ``(x, c, y) -> prediction`` for ``(B, C, H, W)`` images (see the module docstring).

    Args:
        in_channels: image channels ``C``.
        image_size: the side ``S`` the attention resolutions refer to (inputs must be ``S x S``).
        channels: base width.
        channel_mult: width multiplier per resolution level (``L`` levels; ``S`` must be
            divisible by ``2^(L-1)``).
        num_res_blocks: ResNet blocks per encoder level.
        attn_resolutions: resolutions (image sides, e.g. ``(16,)`` for 32x32 inputs) that get
            self-attention after each ResNet block; each must be one of ``S / 2^i``.
        num_heads: attention heads.
        dropout: dropout in the ResNet blocks.
        num_classes: enables a class embedding with ``num_classes + 1`` entries; label
            ``num_classes`` is the null label for classifier-free guidance.
        embedding: ``"fourier"`` (Gaussian Fourier features, default) or ``"positional"``.
        fourier_scale: std of the Fourier frequencies.
        out_channels: output channels (default ``in_channels``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        num_heads: int = 1,
        dropout: float = 0.1,
        num_classes: int | None = None,
        embedding: str = "fourier",
        fourier_scale: float = 16.0,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        _positive_int("in_channels", in_channels)
        _positive_int("image_size", image_size)
        _positive_int("channels", channels)
        _positive_int("num_res_blocks", num_res_blocks)
        _positive_int("num_heads", num_heads)
        mult = tuple(channel_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise ValueError(
                f"channel_mult={channel_mult!r} must be a non-empty sequence of positive ints"
            )
        levels = len(mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size={image_size} is not divisible by 2^{levels - 1} = {2 ** (levels - 1)} "
                f"(needed by {levels} resolution levels)"
            )
        resolutions = [image_size // 2**i for i in range(levels)]
        attn = tuple(int(r) for r in attn_resolutions)
        bad = [r for r in attn if r not in resolutions]
        if bad:
            raise ValueError(
                f"attn_resolutions={attn!r}: {bad} not among the U-Net resolutions {resolutions}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout!r} must lie in [0, 1)")
        if num_classes is not None:
            _positive_int("num_classes", num_classes)
        out_channels = (
            in_channels if out_channels is None else _positive_int("out_channels", out_channels)
        )
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.config: dict[str, Any] = {
            "name": "unet",
            "in_channels": in_channels,
            "image_size": image_size,
            "channels": channels,
            "channel_mult": list(mult),
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": list(attn),
            "num_heads": num_heads,
            "dropout": float(dropout),
            "num_classes": num_classes,
            "embedding": embedding,
            "fourier_scale": float(fourier_scale),
            "out_channels": out_channels,
        }
        emb_dim = 4 * channels
        self.embed = noise_embedding(embedding, channels, fourier_scale)
        self.emb_mlp = nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_emb = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels]
        ch = channels
        for i, m in enumerate(mult):
            for _ in range(num_res_blocks):
                self.down.append(
                    _Stage(ch, channels * m, emb_dim, dropout, resolutions[i] in attn, num_heads)
                )
                ch = channels * m
                skips.append(ch)
            if i != levels - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        self.mid = nn.ModuleList(
            [
                _Stage(ch, ch, emb_dim, dropout, True, num_heads),
                _Stage(ch, ch, emb_dim, dropout, False, num_heads),
            ]
        )
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    _Stage(
                        ch + skips.pop(),
                        channels * m,
                        emb_dim,
                        dropout,
                        resolutions[i] in attn,
                        num_heads,
                    )
                )
                ch = channels * m
            if i != 0:
                self.up.append(Upsample(ch))
        assert not skips
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))
        self._min_side = 2 ** (levels - 1)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        """``x``: ``(B, C, H, W)``; ``t``: the ``(B,)`` noise feature; ``y``: optional ``(B,)``
        labels in ``[0, num_classes]``. Returns ``(B, out_channels, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected (B, {self.in_channels}, H, W)"
            )
        if x.shape[2] % self._min_side or x.shape[3] % self._min_side:
            raise ValueError(
                f"image size {tuple(x.shape[2:])} must be divisible by {self._min_side}"
            )
        batch = x.shape[0]
        c = check_noise_input(t, batch, x)
        labels = check_labels(y, batch, self.num_classes, x)
        emb = self.emb_mlp(self.embed(c).to(x.dtype))
        if labels is not None:
            emb = emb + self.label_emb(labels).to(emb.dtype)

        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
