"""A feature-space distance for image models: "FID for digits".

* :func:`frechet_distance`: the Fréchet distance between Gaussian fits of two feature sets,
  ``FD = |m1 - m2|^2 + tr(C1 + C2 - 2 (C2^{1/2} C1 C2^{1/2})^{1/2})``, which is the squared Bures
  W2 (:func:`~.metrics.gaussian_w2`) between the fits;
* :class:`DigitsFeatures`: the penultimate layer of a small MLP classifier trained on
  scikit-learn's 8x8 digits (in ``[-1, 1]``, as :func:`scoresde.data.digits`), trained
  deterministically on demand in about a second and cached in memory per seed.

FID uses Inception features of ImageNet images; here the feature map is a classifier of the data
itself, so the numbers compare solvers on one model and are not comparable to published FIDs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .metrics import _empirical_moments, gaussian_w2

FEATURE_DIM = 32


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """Fréchet distance between Gaussian fits (mean, unbiased covariance) of the rows of ``x``
    and ``y`` (each flattened to ``(n, d)``): the squared Bures W2 between the fits."""
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"need at least 2 rows in each set; got {x.shape[0]} and {y.shape[0]}")
    mx, cx = _empirical_moments(x)
    my, cy = _empirical_moments(y)
    if mx.shape != my.shape:
        raise ValueError(f"feature sizes differ: {tuple(mx.shape)} and {tuple(my.shape)}")
    return gaussian_w2(mx, cx, my, cy) ** 2


class DigitsFeatures(nn.Module):
    """Penultimate features of a ``64 -> 128 -> 32 -> 10`` MLP classifier of the 8x8 digits.

    Call it on images of shape ``(n, 1, 8, 8)`` or ``(n, 64)`` in ``[-1, 1]``; it returns
    ``(n, 32)`` float64 features. :attr:`accuracy` is its accuracy on the 297 held-out digits.
    """

    def __init__(self, seed: int = 0, steps: int = 200) -> None:
        super().__init__()
        from ..data import digits

        gen = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(
            nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, FEATURE_DIM), nn.SiLU()
        )
        self.head = nn.Linear(FEATURE_DIM, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (p.shape[-1] ** -0.5))
        data = digits("all")  # the split of digits("train"), with the held-out labels kept
        perm = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))
        x, y = data.x[perm[:1500]].reshape(1500, -1), data.y[perm[:1500]]
        opt = torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(steps):  # full-batch: deterministic, ~1 s on one core
            opt.zero_grad()
            loss = nn.functional.cross_entropy(self.head(self.body(x)), y)
            loss.backward()
            opt.step()
        self.eval().requires_grad_(False)
        test = perm[1500:]
        logits = self.head(self.body(data.x[test].reshape(len(test), -1)))
        self.accuracy = float((logits.argmax(1) == data.y[test]).float().mean())

    def forward(self, images: Tensor) -> Tensor:
        x = images.detach().reshape(images.shape[0], -1)
        if x.shape[1] != 64:
            raise ValueError(f"images of shape {tuple(images.shape)}; expected (n, 1, 8, 8) digits")
        return self.body(x.to("cpu", torch.float32)).to(torch.float64)


_CACHE: dict[int, DigitsFeatures] = {}


def digits_features(seed: int = 0) -> DigitsFeatures:
    """The digits feature map for ``seed``, trained once per process."""
    if seed not in _CACHE:
        _CACHE[seed] = DigitsFeatures(seed)
    return _CACHE[seed]


__all__ = ["FEATURE_DIM", "DigitsFeatures", "digits_features", "frechet_distance"]
