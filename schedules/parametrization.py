"""Exact conversions between the four targets of a denoiser at one time ``t``.

With ``x = alpha x0 + sigma eps``:

    x0    = (x - sigma eps) / alpha
    score = -eps / sigma                      (so x0 = (x + sigma^2 score) / alpha, Tweedie)
    v     = alpha eps - sigma x0              (Salimans & Ho 2022)

and back from v, with ``r^2 = alpha^2 + sigma^2`` (= 1 for VP):
``x0 = (alpha x - sigma v) / r^2``, ``eps = (sigma x + alpha v) / r^2``.
``alpha`` and ``sigma`` are numbers or per-sample tensors of shape ``(B,)``.
"""

from __future__ import annotations

from torch import Tensor

PREDICTIONS = ("eps", "x0", "score", "v")


def broadcast_to(coef: Tensor | float, x: Tensor) -> Tensor | float:
    """Reshape a per-sample coefficient ``(B,)`` to ``(B, 1, ..., 1)`` so it multiplies ``x``."""
    if isinstance(coef, Tensor) and coef.dim() == 1 and x.dim() > 1:
        return coef.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    if isinstance(coef, Tensor) and coef.dim() == 0:
        return coef.to(x.dtype)
    return coef


def _check_kind(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; expected one of {', '.join(PREDICTIONS)}")


def to_eps(pred: Tensor, kind: str, x: Tensor, alpha, sigma) -> Tensor:
    """Convert a prediction of type ``kind`` to the noise ``eps``."""
    _check_kind(kind)
    a, s = broadcast_to(alpha, x), broadcast_to(sigma, x)
    if kind == "eps":
        return pred
    if kind == "x0":
        return (x - a * pred) / s
    if kind == "score":
        return -s * pred
    return (s * x + a * pred) / (a * a + s * s)


def from_eps(eps: Tensor, kind: str, x: Tensor, alpha, sigma) -> Tensor:
    """Convert the noise ``eps`` to a prediction of type ``kind``."""
    _check_kind(kind)
    a, s = broadcast_to(alpha, x), broadcast_to(sigma, x)
    if kind == "eps":
        return eps
    if kind == "x0":
        return (x - s * eps) / a
    if kind == "score":
        return -eps / s
    x0 = (x - s * eps) / a
    return a * eps - s * x0


def convert(pred: Tensor, source: str, target: str, x: Tensor, alpha, sigma) -> Tensor:
    """Convert a ``source`` prediction (eps, x0, score or v) at ``x`` to a ``target`` one."""
    _check_kind(target)
    if source == target:
        _check_kind(source)
        return pred
    return from_eps(to_eps(pred, source, x, alpha, sigma), target, x, alpha, sigma)


def tweedie_denoise(x: Tensor, score: Tensor, alpha, sigma) -> Tensor:
    """Tweedie's formula ``E[x0 | x_t] = (x + sigma^2 score) / alpha``."""
    a, s = broadcast_to(alpha, x), broadcast_to(sigma, x)
    return (x + s * s * score) / a
