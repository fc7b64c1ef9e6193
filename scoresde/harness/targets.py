"""Built-in analytic targets of the accuracy harness: Gaussians and Gaussian mixtures whose
diffused score is known in closed form, and the stratified reference sample of a mixture."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..targets import Gaussian, GaussianMixture


def _rotation(d: int, seed: int) -> Tensor:
    """A fixed random rotation (QR of a seeded Gaussian matrix, signs fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _aniso_gaussian(d: int) -> Gaussian:
    """``N(m, U diag(v) U^T)``, variances log-spaced in [0.01, 1] (condition 100), rotated."""
    g = torch.Generator().manual_seed(1000 + d)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    var = torch.logspace(-2, 0, d, dtype=torch.float64)
    u = _rotation(d, 2000 + d)
    return Gaussian(mean, u @ torch.diag(var) @ u.T)


def _iso_gaussian(d: int) -> Gaussian:
    """``N(m, 0.25 I)`` with a fixed non-zero mean of norm about 1."""
    g = torch.Generator().manual_seed(3000 + d)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    return Gaussian(mean / mean.norm(), 0.25)


def _ring(k: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """``k`` equal-weight isotropic Gaussians evenly spaced on a circle."""
    angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return GaussianMixture(torch.ones(k), means, torch.full((k,), std**2, dtype=torch.float64))


def _unbalanced_mixture(d: int = 16) -> GaussianMixture:
    """Four modes with weights 0.55 / 0.25 / 0.15 / 0.05, diagonal covariances of different scales."""
    g = torch.Generator().manual_seed(4000 + d)
    weights = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=torch.float64)
    directions = torch.randn(4, d, generator=g, dtype=torch.float64)
    means = 2.5 * directions / directions.norm(dim=1, keepdim=True)
    scales = torch.tensor([0.3, 0.15, 0.08, 0.04], dtype=torch.float64)
    spread = torch.logspace(-0.5, 0.5, d, dtype=torch.float64)
    covs = scales[:, None] * spread[torch.randperm(d, generator=g)][None, :]
    return GaussianMixture(weights, means, covs)


@dataclass(frozen=True)
class TargetInfo:
    """A built-in target: its factory and a one-line description."""

    factory: Callable[[], GaussianMixture]
    description: str


TARGETS: dict[str, TargetInfo] = {
    "gaussian_iso_2d": TargetInfo(lambda: _iso_gaussian(2), "N(m, 0.25 I) in d=2, |m| = 1"),
    "gaussian_iso_16d": TargetInfo(lambda: _iso_gaussian(16), "N(m, 0.25 I) in d=16, |m| = 1"),
    "gaussian_aniso_2d": TargetInfo(
        lambda: _aniso_gaussian(2), "rotated N(m, C) in d=2, variances 0.01 and 1"
    ),
    "gaussian_aniso_8d": TargetInfo(
        lambda: _aniso_gaussian(8), "rotated N(m, C) in d=8, variances log-spaced 0.01..1"
    ),
    "gaussian_aniso_32d": TargetInfo(
        lambda: _aniso_gaussian(32), "rotated N(m, C) in d=32, variances log-spaced 0.01..1"
    ),
    "ring_2d": TargetInfo(_ring, "8 equal Gaussians (std 0.2) on a circle of radius 2"),
    "mixture_16d": TargetInfo(
        _unbalanced_mixture, "4 modes in d=16, weights .55/.25/.15/.05, diagonal covariances"
    ),
}

DEFAULT_TARGETS = ("gaussian_aniso_8d", "ring_2d", "mixture_16d")


def get_target(name: str) -> GaussianMixture:
    """The built-in target called ``name`` (see :data:`TARGETS`)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; available targets: {', '.join(TARGETS)}")
    return TARGETS[name].factory()


def _resolve_targets(
    targets: str
    | GaussianMixture
    | Iterable[str | GaussianMixture]
    | Mapping[str, GaussianMixture],
) -> dict[str, GaussianMixture]:
    if isinstance(targets, Mapping):
        items = list(targets.items())
    else:
        if isinstance(targets, str | GaussianMixture):
            targets = [targets]
        items = []
        for i, t in enumerate(targets):
            if isinstance(t, str):
                items.append((t, get_target(t)))
            elif isinstance(t, GaussianMixture):
                items.append((f"{'gaussian' if t.num_components == 1 else 'mixture'}_{i}", t))
            else:
                items.append((f"target_{i}", t))  # rejected below, with the valid choices
    if not items:
        raise ValueError(f"no targets given; available targets: {', '.join(TARGETS)}")
    out: dict[str, GaussianMixture] = {}
    for name, t in items:
        if not isinstance(t, GaussianMixture):
            raise ValueError(
                f"target {name!r} is {type(t).__name__}; expected a built-in name "
                f"({', '.join(TARGETS)}) or a scoresde.Gaussian / GaussianMixture"
            )
        if name in out:
            raise ValueError(f"target {name!r} is given twice")
        out[name] = t
    return out


def stratified_sample(target: GaussianMixture, n: int, generator: torch.Generator) -> Tensor:
    """``n`` float64 samples with exactly ``round(n w_k)`` from each mode (largest remainders).

    Removes the reference sample's own mode-weight noise; within a mode the draws are i.i.d.
    """
    w = target.weights
    counts = torch.floor(w * n).long()
    rest = n - int(counts.sum())
    if rest:
        counts[torch.argsort(w * n - counts, descending=True)[:rest]] += 1
    chol = torch.linalg.cholesky(target.covs)
    parts = []
    for k, c in enumerate(counts.tolist()):
        if c:
            z = torch.randn(c, target.dim, generator=generator, dtype=torch.float64)
            parts.append(target.means[k] + z @ chol[k].T)
    x = torch.cat(parts)
    return x[torch.randperm(n, generator=generator)]
