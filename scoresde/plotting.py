"""PNG figures: samples over the target's density, image grids, and error against NFE.

matplotlib is the optional ``plot`` extra (``pip install scoresde[plot]``); it is imported only when
a figure is drawn, and figures are rendered with the non-interactive Agg canvas (no pyplot, no
global backend switch), so these functions are safe in scripts, servers and tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[Sequence[float]]
DensityFn = Callable[[Tensor], Tensor]

# Colour-blind-safe palette (Okabe & Ito 2008), cycled for solvers.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#F0E442",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas; a clear error when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib, the optional 'plot' extra: "
            "pip install 'scoresde[plot]' (or pip install matplotlib)"
        ) from err
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _check_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"path={path!r}: expected a .png file name")
    return path


def _save(fig: Any, path: str | os.PathLike) -> str:
    path = _check_path(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path)
    return path


def _as_points(x: ArrayLike, name: str) -> np.ndarray:
    """``(N, d)`` float64 numpy array with ``d >= 2`` (only the first two coordinates are drawn)."""
    arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, Tensor) else np.asarray(x)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] < 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected (N, d) points with d >= 2")
    return arr[:, :2]


def _limits(clouds: list[np.ndarray], density_box: np.ndarray | None) -> tuple[float, ...]:
    """Square-ish axis limits covering the bulk (0.5-99.5 percentiles) of every cloud."""
    pts = []
    for c in clouds:
        c = c[np.isfinite(c).all(1)]
        if len(c):
            pts.append(np.percentile(c, [0.5, 99.5], axis=0))
    if density_box is not None:
        pts.append(density_box)
    if not pts:
        raise ValueError("no finite points to plot")
    box = np.concatenate(pts, 0)
    lo, hi = box.min(0), box.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2 * 1.12 + 1e-9
    return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half


def _log_density_fn(density_fn: Any) -> DensityFn:
    """Accept a ``log p(x)`` callable or any object with ``log_prob`` (a Gaussian mixture)."""
    if hasattr(density_fn, "log_prob"):
        if getattr(density_fn, "dim", 2) != 2:
            raise ValueError(f"density_fn={density_fn!r} is not 2-D; contours need d = 2")
        return density_fn.log_prob
    if callable(density_fn):
        return density_fn
    raise ValueError(
        f"density_fn={density_fn!r}: expected a callable x -> log p(x) or an object with log_prob"
    )


def _density_grid(density_fn: DensityFn, box: tuple[float, ...], n: int = 160) -> tuple:
    xs = np.linspace(box[0], box[1], n)
    ys = np.linspace(box[2], box[3], n)
    gx, gy = np.meshgrid(xs, ys)
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float64)
    with torch.no_grad():
        logp = torch.as_tensor(density_fn(pts), dtype=torch.float64).reshape(n, n).numpy()
    return gx, gy, logp


def _hdr_levels(logp: np.ndarray, cell: float, masses=(0.5, 0.9, 0.99)) -> list[float]:
    """Density levels enclosing the given probability masses (highest-density regions).

    The region ``{p >= c}`` with ``int_{p >= c} p = m``: sort the grid densities in decreasing
    order and accumulate ``p * cell_area`` until the mass ``m`` is reached.
    """
    p = np.exp(logp - logp.max()).ravel()
    order = np.sort(p)[::-1]
    cum = np.cumsum(order)
    cum /= cum[-1]
    levels = sorted({float(order[min(np.searchsorted(cum, m), len(order) - 1)]) for m in masses})
    scale = math.exp(logp.max())
    return [lv * scale for lv in levels]


def save_scatter(
    samples: ArrayLike | Mapping[str, ArrayLike],
    path: str | os.PathLike,
    *,
    reference: ArrayLike | None = None,
    density_fn: Any = None,
    title: str | None = None,
    max_points: int = 4000,
) -> str:
    """Scatter 2-D samples over the target's density contours and write a PNG.

    Args:
        samples: ``(N, d)`` points (the first two coordinates are drawn), or a mapping
            ``{label: points}`` drawn as side-by-side panels that share axes (one per solver).
        path: output ``.png`` file (parent folders are created).
        reference: optional ``(M, d)`` reference sample (the data), drawn in light grey.
        density_fn: optional ``x -> log p(x)`` on ``(K, 2)`` float64 points, or an object with
            ``log_prob`` (a 2-D :class:`~scoresde.targets.GaussianMixture`). The density is shaded
            and the 50 / 90 / 99 % highest-density regions are outlined: the level ``c_m`` with
            ``int_{p >= c_m} p(x) dx = m``.
        title: figure title.
        max_points: points drawn per cloud (a random subset with a fixed seed beyond that).

    Returns:
        The path written.
    """
    _check_path(path)
    panels = dict(samples) if isinstance(samples, Mapping) else {"samples": samples}
    if not panels:
        raise ValueError("samples is an empty mapping; expected at least one (N, 2) array")
    clouds = {k: _as_points(v, f"samples[{k!r}]") for k, v in panels.items()}
    ref = None if reference is None else _as_points(reference, "reference")
    rng = np.random.default_rng(0)

    def thin(a: np.ndarray) -> np.ndarray:
        return a if len(a) <= max_points else a[rng.choice(len(a), max_points, replace=False)]

    log_density = None if density_fn is None else _log_density_fn(density_fn)
    # Frame the target (its components' 4-sigma boxes, or the reference sample) when known, so
    # one diverged sampler does not shrink every panel; points outside are counted in the title.
    target_box = _mixture_box(density_fn)
    if target_box is None and ref is not None:
        target_box = np.percentile(ref, [0.5, 99.5], axis=0)
    box = _limits([] if target_box is not None else list(clouds.values()), target_box)
    grid = None if log_density is None else _density_grid(log_density, box)

    n = len(clouds)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = _figure(3.4 * ncols + 0.3, 3.6 * nrows + (0.5 if title else 0.2) + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, (label, pts) in zip(axes, clouds.items(), strict=False):
        if grid is not None:
            gx, gy, logp = grid
            dens = np.exp(logp)
            ax.contourf(gx, gy, dens, levels=12, cmap="Blues", alpha=0.55, zorder=0)
            cell = (gx[0, 1] - gx[0, 0]) * (gy[1, 0] - gy[0, 0])
            levels = _hdr_levels(logp, cell)
            if len(levels) > 1:
                ax.contour(gx, gy, dens, levels=levels, colors="#08306b", linewidths=0.8, zorder=1)
        if ref is not None:
            r = thin(ref)
            ax.scatter(r[:, 0], r[:, 1], s=3, c="#9a9a9a", alpha=0.35, lw=0, zorder=2)
        p = thin(pts)
        inside = (
            (p[:, 0] >= box[0]) & (p[:, 0] <= box[1]) & (p[:, 1] >= box[2]) & (p[:, 1] <= box[3])
        )
        ax.scatter(p[:, 0], p[:, 1], s=4, c="#D55E00", alpha=0.6, lw=0, zorder=3)
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect("equal")
        outside = int((~inside).sum())
        heading = "" if (n == 1 and label == "samples") else label
        if outside:
            share = 100.0 * outside / len(p)
            what = f"{share:.0f}% of points" if share >= 1 else f"{outside} of {len(p)} points"
            heading += f"{chr(10) if heading else ''}{what} outside the frame"
        if heading:
            ax.set_title(heading, fontsize=9)
        ax.tick_params(labelsize=8)
    handles = _legend_handles(grid is not None, ref is not None)
    if handles:
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
    if title:
        fig.suptitle(title, fontsize=11)
    height = fig.get_figheight()
    bottom = 0.3 / height if handles else 0.0
    top = 1 - 0.35 / height if title else 1.0
    fig.tight_layout(rect=(0, bottom, 1, top), h_pad=3.5)
    return _save(fig, path)


def _mixture_box(density: Any) -> np.ndarray | None:
    """``(2, 2)`` [lo; hi] corners covering every component's mean +- 4 std (a 2-D mixture)."""
    means, covs = getattr(density, "means", None), getattr(density, "covs", None)
    if not isinstance(means, Tensor) or not isinstance(covs, Tensor) or means.shape[-1] != 2:
        return None
    std = torch.sqrt(torch.diagonal(covs, dim1=-2, dim2=-1))
    lo = (means - 4 * std).min(0).values
    hi = (means + 4 * std).max(0).values
    return torch.stack([lo, hi]).to(torch.float64).numpy()


def _legend_handles(density: bool, reference: bool) -> list:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", ms=4, color="#D55E00", label="samples"),
    ]
    if reference:
        handles.append(Line2D([], [], ls="", marker="o", ms=4, color="#9a9a9a", label="reference"))
    if density:
        handles.append(Line2D([], [], color="#08306b", lw=0.8, label="50/90/99% of target mass"))
    return handles if (density or reference) else []


def tile_images(
    images: Tensor | np.ndarray,
    nrow: int | None = None,
    value_range: tuple[float, float] | None = None,
    pad: int = 1,
) -> np.ndarray:
    """Tile ``(B, C, H, W)`` (or ``(B, H, W)``) images into one ``(rows (H+pad)+pad,
    nrow (W+pad)+pad, C)`` array in [0, 1] on a white background, row-major.

    Pixels map linearly, ``(v - lo) / (hi - lo)``, and are clipped to [0, 1]; NaN becomes ``lo``.
    ``value_range`` defaults to ``(-1, 1)`` if any pixel is negative, else ``(0, 1)``.
    """
    arr = (
        images.detach().to("cpu", torch.float64).numpy()
        if isinstance(images, Tensor)
        else np.asarray(images, dtype=np.float64)
    )
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] < 1:
        raise ValueError(
            f"images has shape {arr.shape}; expected (B, C, H, W) with C in (1, 3), or (B, H, W)"
        )
    B, C, H, W = arr.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(B))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow={nrow!r} must be a positive integer")
    if value_range is None:
        value_range = (-1.0, 1.0) if float(np.nanmin(arr)) < 0 else (0.0, 1.0)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range={value_range!r} must satisfy lo < hi")
    arr = np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    rows = math.ceil(B / nrow)
    canvas = np.ones((rows * (H + pad) + pad, nrow * (W + pad) + pad, C))
    for k in range(B):
        r, c = divmod(k, nrow)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        canvas[y : y + H, x : x + W] = arr[k].transpose(1, 2, 0)
    return canvas


def save_image_grid(
    images: Tensor | np.ndarray,
    path: str | os.PathLike,
    nrow: int | None = None,
    title: str | None = None,
    value_range: tuple[float, float] | None = None,
) -> str:
    """Tile a batch of images into one PNG.

    Args:
        images: ``(B, C, H, W)`` with ``C`` in {1, 3} or ``(B, H, W)``.
        path: output ``.png`` file.
        nrow: images per row (default ``ceil(sqrt(B))``).
        title: figure title.
        value_range: the ``(lo, hi)`` mapped to black and white; pixels are clipped to it.
            Default: ``(-1, 1)`` if any pixel is negative (data scaled to [-1, 1]), else ``(0, 1)``.

    Returns:
        The path written.
    """
    _check_path(path)
    canvas = tile_images(images, nrow, value_range)
    C = canvas.shape[2]
    scale = max(4.0 / max(canvas.shape[:2]), 0.06)
    fig = _figure(
        max(canvas.shape[1] * scale, 2.5), canvas.shape[0] * scale + (0.4 if title else 0.1)
    )
    ax = fig.add_axes((0, 0, 1, 1 - (0.4 / (canvas.shape[0] * scale + 0.4) if title else 0)))
    if C == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, y=0.995, va="top")
    return _save(fig, path)


def save_error_plot(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    metric_label: str = "error",
    floors: Mapping[str, float | Mapping[str, float]] | None = None,
    orders: Mapping[str, float] | None = None,
    ticks: Sequence[float] | None = None,
    guide_targets: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Log-log error against NFE: one panel per target, one line per solver.

    Args:
        records: rows with keys ``solver``, ``target``, ``nfe`` and ``error`` (optionally
            ``metric``, used as the panel's y label when it is the same for the whole panel).
            Non-positive or non-finite errors are left out (they cannot be drawn on a log axis).
        path: output ``.png`` file.
        metric_label: y-axis label when the rows carry no ``metric``.
        floors: optional ``{target: value}`` or ``{target: {label: value}}``: dashed horizontal
            lines (noise or truncation floors, below which errors cannot be resolved).
        orders: optional ``{solver: declared order p}``: for each distinct ``p`` a grey guide of
            slope ``-p`` (``error ~ C NFE^-p``) over the first octave, under the lowest error.
        guide_targets: the panels that get the order guides (default: all).
        ticks: NFE values to label on the x axis (default: the NFEs measured, thinned).
        title: figure title.

    Returns:
        The path written.
    """
    _check_path(path)
    rows = [dict(r) for r in records]
    if not rows:
        raise ValueError("records is empty; expected rows with solver, target, nfe and error")
    for r in rows:
        missing = {"solver", "target", "nfe", "error"} - set(r)
        if missing:
            raise ValueError(f"record {r!r} lacks {sorted(missing)}")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(solvers)}
    marker = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(solvers)}
    guide_orders = sorted({float(p) for p in (orders or {}).values() if p and p > 0})

    n = len(targets)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    width = max(4.4 * ncols + 0.3, 7.5)
    longest = max(len(str(s)) for s in solvers)
    legend_cols = max(1, min(len(solvers), int(width / (0.75 + 0.075 * longest))))
    legend_rows = math.ceil(len(solvers) / legend_cols)
    fig = _figure(width, 3.6 * nrows + 0.5 + 0.25 * legend_rows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, target in zip(axes, targets, strict=False):
        panel = [r for r in rows if r["target"] == target]
        drawn: list[float] = []
        nfes_all: list[float] = []
        for solver in solvers:
            pts = sorted(
                (float(r["nfe"]), float(r["error"]))
                for r in panel
                if r["solver"] == solver and math.isfinite(float(r["error"])) and r["error"] > 0
            )
            if not pts:
                continue
            nfe, err = np.array(pts).T
            drawn.extend(err)
            nfes_all.extend(nfe)
            ax.loglog(
                nfe, err, marker=marker[solver], ms=4.5, lw=1.6, color=colour[solver], label=solver
            )
        panel_floors = (floors or {}).get(target) or {}
        if not isinstance(panel_floors, Mapping):
            panel_floors = {"noise / truncation floor": panel_floors}
        for i, (label, value) in enumerate(panel_floors.items()):
            if value and value > 0 and math.isfinite(value):
                drawn.append(value)
                ax.axhline(value, ls=(0, (4, 2 + 2 * i)), lw=0.9, color="#555555", zorder=0)
                ax.annotate(
                    label,
                    xy=(0.02, value),
                    xycoords=("axes fraction", "data"),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="left",
                    va="bottom",
                    fontsize=6.5,
                    color="#444444",
                )
        if drawn and nfes_all:
            lo, hi = min(drawn), max(drawn)
            bottom = lo / 2.5
            if guide_targets is None or target in guide_targets:
                bottom = min(bottom, _order_guides(ax, guide_orders, min(nfes_all), lo) / 1.5)
            ax.set_ylim(bottom, hi * 2.5)
        metrics = {r.get("metric") for r in panel} - {None}
        ax.set_ylabel(metrics.pop() if len(metrics) == 1 else metric_label, fontsize=9)
        ax.set_xlabel("NFE (score evaluations)", fontsize=9)
        _nfe_ticks(ax, sorted(set(ticks) if ticks else {float(r["nfe"]) for r in panel}))
        ax.set_title(str(target), fontsize=10)
        ax.grid(True, which="major", lw=0.3, alpha=0.6)
        ax.tick_params(labelsize=8)
    handles, labels = [], []
    for ax in axes[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=legend_cols, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, (0.22 * legend_rows + 0.1) / fig.get_figheight(), 1, 1))
    return _save(fig, path)


def _order_guides(ax: Any, orders: list[float], nfe_lo: float, err_lo: float) -> float:
    """Grey ``NFE^-p`` segments over the first octave, starting just under the lowest error
    (errors fall with NFE, so the lower left of a panel is empty). Returns the lowest y drawn."""
    lowest = err_lo
    x = np.array([nfe_lo, 2 * nfe_lo])
    y0 = err_lo / 1.3
    for p in orders:
        y = y0 * (x / nfe_lo) ** (-p)
        ax.loglog(x, y, color="#8a8a8a", lw=1.1, zorder=0)
        ax.annotate(
            f"order {p:g}",
            xy=(x[1], y[1]),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=6.5,
            color="#666666",
        )
        lowest = min(lowest, float(y[1]))
    return lowest


def _nfe_ticks(ax: Any, nfes: list[float]) -> None:
    """Label the NFE values actually measured (plain integers), not log-axis minor ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    kept: list[float] = []
    for v in nfes:  # drop labels closer than 15% to the previous one (they would overlap)
        if not kept or v / kept[-1] > 1.15:
            kept.append(v)
    nfes = kept
    ax.xaxis.set_major_locator(FixedLocator(nfes))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


__all__ = ["save_error_plot", "save_image_grid", "save_scatter", "tile_images"]
