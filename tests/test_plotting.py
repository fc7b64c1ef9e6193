"""PNG figures: files are written and readable, and the numbers behind them are right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scoresde import Gaussian, GaussianMixture
from scoresde.plotting import (
    _hdr_levels,
    save_error_plot,
    save_image_grid,
    save_scatter,
    tile_images,
)

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402


def _png(path) -> np.ndarray:
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return img


def ring() -> GaussianMixture:
    angle = torch.arange(4, dtype=torch.float64) * math.pi / 2
    means = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return GaussianMixture(torch.ones(4), means, torch.full((4,), 0.05, dtype=torch.float64))


def test_hdr_levels_match_the_gaussian_closed_form():
    # Standard 2-D normal: {p >= c} is a disk of mass 1 - exp(-r^2/2) with c = exp(-r^2/2)/(2 pi),
    # so the level holding mass m is c_m = (1 - m) / (2 pi).
    xs = np.linspace(-6, 6, 401)
    gx, gy = np.meshgrid(xs, xs)
    logp = -0.5 * (gx**2 + gy**2) - math.log(2 * math.pi)
    cell = (xs[1] - xs[0]) ** 2
    levels = _hdr_levels(logp, cell, masses=(0.5, 0.9, 0.99))
    expected = sorted((1 - m) / (2 * math.pi) for m in (0.5, 0.9, 0.99))
    assert np.allclose(levels, expected, rtol=0.02)


def test_save_scatter_panels_reference_and_density(tmp_path):
    target = ring()
    g = torch.Generator().manual_seed(0)
    x = target.sample(500, generator=g)
    far = torch.cat([x, torch.full((5, 2), 40.0)])  # a few diverged points
    path = save_scatter(
        {"a": x, "b": far},
        tmp_path / "sub" / "scatter.png",
        reference=target.sample(300, generator=g),
        density_fn=target,
        title="ring",
    )
    assert path.endswith("scatter.png")
    _png(path)
    # a plain callable density and numpy input work too, single panel
    path2 = save_scatter(
        x.numpy(), tmp_path / "s2.png", density_fn=lambda p: Gaussian([0.0, 0.0], 1.0).log_prob(p)
    )
    _png(path2)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(10), torch.zeros(10, 1), torch.zeros(0, 2)],
    ids=["1d", "one-column", "empty"],
)
def test_save_scatter_rejects_bad_shapes(tmp_path, bad):
    with pytest.raises(ValueError, match="expected \\(N, d\\)"):
        save_scatter(bad, tmp_path / "x.png")


def test_save_scatter_rejects_non_png_and_non_2d_density(tmp_path):
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"\.png"):
        save_scatter(x, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="not 2-D"):
        save_scatter(x, tmp_path / "x.png", density_fn=Gaussian(torch.zeros(3), 1.0))


def test_tile_images_places_pixels_row_major():
    imgs = torch.stack([torch.full((1, 2, 3), float(k)) for k in range(5)])  # values 0..4
    canvas = tile_images(imgs, nrow=2, value_range=(0.0, 4.0), pad=1)
    # 3 rows of (2 + 1) + 1 pixels, 2 columns of (3 + 1) + 1
    assert canvas.shape == (10, 9, 1)
    for k in range(5):
        r, c = divmod(k, 2)
        y, x = 1 + r * 3, 1 + c * 4
        assert np.all(canvas[y : y + 2, x : x + 3, 0] == k / 4)
    assert canvas[0, 0, 0] == 1.0  # white padding
    assert np.all(canvas[7:9, 5:8, 0] == 1.0)  # the empty sixth cell stays white


def test_tile_images_default_range_and_clipping():
    imgs = torch.tensor([[-1.0, 0.0], [1.0, 3.0]]).reshape(1, 1, 2, 2)
    canvas = tile_images(imgs, pad=0)
    assert np.allclose(canvas[..., 0], [[0.0, 0.5], [1.0, 1.0]])  # [-1, 1] -> [0, 1], clipped
    pos = torch.tensor([[0.0, 0.25]]).reshape(1, 1, 1, 2)
    assert np.allclose(tile_images(pos, pad=0)[..., 0], [[0.0, 0.25]])  # [0, 1] kept


def test_save_image_grid_writes_gray_and_rgb(tmp_path):
    g = torch.Generator().manual_seed(0)
    _png(save_image_grid(torch.rand(16, 1, 8, 8, generator=g) * 2 - 1, tmp_path / "g.png"))
    _png(
        save_image_grid(torch.rand(6, 3, 8, 8, generator=g), tmp_path / "c.png", nrow=3, title="t")
    )
    with pytest.raises(ValueError, match="expected \\(B, C, H, W\\)"):
        save_image_grid(torch.zeros(2, 2, 8, 8), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="nrow"):
        save_image_grid(torch.zeros(2, 1, 8, 8), tmp_path / "bad.png", nrow=0)


def test_save_error_plot(tmp_path):
    rows = [
        {"solver": s, "target": t, "nfe": n, "error": c * n ** (-p), "metric": "W2"}
        for s, p, c in [("euler", 1, 3.0), ("heun", 2, 10.0)]
        for t in ["a", "b"]
        for n in [10, 20, 40, 80]
    ]
    rows.append({"solver": "euler", "target": "a", "nfe": 160, "error": float("nan")})  # skipped
    path = save_error_plot(
        rows,
        tmp_path / "err.png",
        floors={"a": {"truncation": 1e-3, "noise": 3e-3}, "b": 2e-3},
        orders={"euler": 1, "heun": 2},
        ticks=[10, 20, 40, 80],
        title="test",
    )
    _png(path)
    with pytest.raises(ValueError, match="lacks"):
        save_error_plot([{"solver": "x", "nfe": 1}], tmp_path / "e.png")
    with pytest.raises(ValueError, match="empty"):
        save_error_plot([], tmp_path / "e.png")
