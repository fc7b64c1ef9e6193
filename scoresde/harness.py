"""Solver-accuracy harness: how far is a sampler's output from the exact target, per NFE?

Every sampler here is run with the *exact* score of an analytic target (a :class:`Gaussian` or a
:class:`GaussianMixture`, whose diffused score is known in closed form), so all of the error is
the sampler's own: time discretisation, the truncation at ``t_end`` and the prior mismatch at ``T``.

**NFE convention.** An NFE budget counts every score evaluation, the final Tweedie denoising step
included. A solver with ``e = evals_per_step`` gets ``steps = floor((NFE - 1) / e)`` steps (with
``denoise=False``: ``floor(NFE / e)``); budgets too small for one step are skipped. The NFE
actually spent (some solvers save evaluations, e.g. Heun's last step) is measured and is what the
tables and plots show.

**Metrics** (all against the exact target at ``t = 0``, the error users care about):

* Gaussian targets: the 2-Wasserstein distance in closed form (Bures),
  ``W2^2 = |m1 - m2|^2 + tr(C1 + C2 - 2 (C2^{1/2} C1 C2^{1/2})^{1/2})``. For solvers that are
  affine in the state and the noise (``solvers.get(name).is_affine(**options)``) the output mean
  and covariance are propagated exactly (:func:`scoresde.accuracy.exact_output_moments`): no
  Monte-Carlo noise. Other solvers use the moments of ``n_samples`` samples; their noise floor is
  the same estimate computed on exact samples of the target.
  Beside the error against the target, ``disc_error`` is the distance to the *ideal* output (the
  exact solution of the solver's continuous equation, reverse SDE or probability-flow ODE, from
  the prior ``N(0, prior_std^2 I)`` to ``t_end``, then the denoising step), also Gaussian and known
  in closed form (:func:`scoresde.accuracy.exact_solution_moments`). ``disc_error`` is the
  discretisation error alone and goes to 0; the ``floor = W2(ideal, target)`` is what no step
  count removes (truncation at ``t_end`` plus, for ODE solvers, the prior mismatch
  ``p_T != N(0, prior_std^2 I)``).
* Mixture targets: the sliced 2-Wasserstein distance (POT, the optional ``ot`` extra) between the
  output and a reference sample of the target (stratified: exactly ``round(n w_k)`` points per
  mode); the mode-weight error ``1/2 sum_k |w_hat_k - w_k|`` with ``w_hat_k`` the mean
  responsibility of mode ``k`` over the samples; the worst per-mode mean error
  ``max_k |m_hat_k - m_k|`` and covariance error ``max_k ||C_hat_k - C_k||_F / ||C_k||_F``
  (responsibility-weighted moments). Each has a noise floor: the same metric for an i.i.d. sample
  of the target of the same size (what a perfect sampler scores), averaged over four draws.

**Orders.** The empirical order is ``-slope`` of a least-squares line through
``(log NFE, log error)`` over the three largest NFEs (the asymptotic regime): on ``disc_error``
for Gaussian targets, and on the points more than twice above the noise floor for mixtures (at
least three of them). It is printed beside the declared order.

**Randomness.** Everything derives from ``seed``: all solvers and budgets of a target share one
prior draw and one solver-noise stream (common random numbers), so their differences are far less
noisy than the floors.

Quick start::

    from scoresde.harness import run_study
    result = run_study(["euler_maruyama", "ode_euler"], ["gaussian_aniso_8d"], [10, 20, 40])
    print(result.table())
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

import solvers as _solvers
from schedules import LinearVP
from solvers.registry import SolverSpec

from . import accuracy
from .accuracy import gaussian_w2
from .sde import VPSDE
from .targets import Gaussian, GaussianMixture

# ------------------------------------------------------------------------------------------------
# built-in targets
# ------------------------------------------------------------------------------------------------


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
DEFAULT_NFES = (10, 20, 40, 80, 160)


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


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def _require_ot() -> Any:
    try:
        import ot
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sample-based optimal-transport metrics need POT, the optional 'ot' extra: "
            "pip install 'scoresde[ot]' (or pip install pot)"
        ) from err
    return ot


def sliced_w2(x: Tensor, y: Tensor, n_projections: int = 64, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (POT), ``SW2^2 = E_theta W2^2(theta#x, theta#y)``.

    ``theta`` uniform on the sphere, ``n_projections`` Monte-Carlo directions drawn from ``seed``
    (fix it to compare several samples against one reference with the same directions).
    """
    ot = _require_ot()
    a = x.detach().to("cpu", torch.float64).numpy()
    b = y.detach().to("cpu", torch.float64).numpy()
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, seed=seed))


def mode_errors(samples: Tensor, target: GaussianMixture) -> dict[str, float]:
    """Mode statistics of ``samples`` against a mixture, by soft assignment.

    With responsibilities ``r_ik = p(k | x_i)`` under the target:
    ``w_hat_k = mean_i r_ik``, ``m_hat_k = sum_i r_ik x_i / sum_i r_ik`` and
    ``C_hat_k = sum_i r_ik (x_i - m_hat_k)(x_i - m_hat_k)^T / sum_i r_ik``. Returns

    * ``mode_weight_err = 1/2 sum_k |w_hat_k - w_k|`` (total variation between weight vectors),
    * ``mode_mean_err = max_k |m_hat_k - m_k|``,
    * ``mode_cov_err = max_k ||C_hat_k - C_k||_F / ||C_k||_F``.
    """
    x = samples.detach().reshape(samples.shape[0], -1).to("cpu", torch.float64)
    finite = torch.isfinite(x).all(1)
    x = x[finite]
    if x.shape[0] == 0:
        return {"mode_weight_err": 1.0, "mode_mean_err": math.inf, "mode_cov_err": math.inf}
    r = target.responsibilities(x)  # (B, K)
    mass = r.sum(0)  # (K,)
    w_hat = mass / x.shape[0]
    weight_err = 0.5 * float((w_hat - target.weights).abs().sum())
    safe = mass.clamp_min(1e-300)
    m_hat = (r.T @ x) / safe[:, None]
    mean_err = (m_hat - target.means).norm(dim=1)
    centred = x[None, :, :] - m_hat[:, None, :]  # (K, B, d)
    c_hat = torch.einsum("bk,kbi,kbj->kij", r, centred, centred) / safe[:, None, None]
    cov_err = (c_hat - target.covs).flatten(1).norm(dim=1) / target.covs.flatten(1).norm(dim=1)
    empty = mass < 1e-9  # a mode no sample reached: its moments are undefined, the error maximal
    mean_err = torch.where(empty, torch.full_like(mean_err, math.inf), mean_err)
    cov_err = torch.where(empty, torch.full_like(cov_err, math.inf), cov_err)
    return {
        "mode_weight_err": weight_err,
        "mode_mean_err": float(mean_err.max()),
        "mode_cov_err": float(cov_err.max()),
    }


def _empirical_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
    mean = x.mean(0)
    c = x - mean
    return mean, c.T @ c / (x.shape[0] - 1)


def fit_order(nfe: Sequence[float], error: Sequence[float], last: int | None = 3) -> float:
    """Empirical convergence order: ``-slope`` of the least-squares line of log error on log NFE.

    Non-finite or non-positive errors are dropped. Only the ``last`` points with the largest NFE
    are used (the asymptotic regime; ``None`` uses all). ``nan`` with fewer than two points.
    """
    pts = sorted(
        (math.log(n), math.log(e))
        for n, e in zip(nfe, error, strict=True)
        if n and n > 0 and e is not None and math.isfinite(e) and e > 0
    )
    if last is not None:
        pts = pts[-last:]
    if len({p[0] for p in pts}) < 2:
        return math.nan
    xs, ys = np.array(pts).T
    slope = np.polyfit(xs, ys, 1)[0]
    return float(-slope)


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One (solver, target, NFE) measurement. Errors are against the exact target at ``t = 0``."""

    solver: str
    target: str
    registry_name: str
    kind: str
    declared_order: float
    nfe_budget: int
    nfe: int
    steps: int
    metric: str
    method: str
    error: float
    floor: float
    disc_error: float | None = None
    trunc_floor: float | None = None
    noise_floor: float | None = None
    mode_weight_err: float | None = None
    mode_mean_err: float | None = None
    mode_cov_err: float | None = None
    wall_time: float = 0.0


@dataclass
class TargetSummary:
    """What the study knows about one target: its description and floors."""

    name: str
    dim: int
    components: int
    description: str
    metric: str
    method: str
    floors: dict[str, float] = field(default_factory=dict)
    mode_floors: dict[str, float] = field(default_factory=dict)


CSV_FIELDS = [f for f in Record.__dataclass_fields__]


def _fmt(v: float | None, width: int = 9) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    if math.isinf(v):
        return "inf".rjust(width)
    return f"{v:.2e}".rjust(width)


@dataclass
class StudyResult:
    """The outcome of :func:`run_study`: records, per-target summaries and the run's settings."""

    records: list[Record]
    targets: dict[str, TargetSummary]
    settings: dict[str, Any]
    samples: dict[tuple[str, str, int], Tensor] = field(default_factory=dict, repr=False)
    target_objects: dict[str, GaussianMixture] = field(default_factory=dict, repr=False)

    # -- views --------------------------------------------------------------------------------
    def rows(self, target: str | None = None, solver: str | None = None) -> list[Record]:
        return [
            r
            for r in self.records
            if (target is None or r.target == target) and (solver is None or r.solver == solver)
        ]

    def orders(self) -> list[dict[str, Any]]:
        """Fitted and declared order per (solver, target).

        Gaussian targets: fit on ``disc_error`` (exact). Mixtures: on the errors above twice the
        noise floor. ``fitted`` is ``nan`` when fewer than two (Gaussian) or three (mixture)
        points qualify; the fit uses the three largest NFEs of those.
        """
        out = []
        for target in self.targets:
            for solver in dict.fromkeys(r.solver for r in self.rows(target)):
                rows = self.rows(target, solver)
                if rows[0].disc_error is not None:
                    pts = [
                        (r.nfe, r.disc_error) for r in rows if r.disc_error > 2 * _nz(r.noise_floor)
                    ]
                    basis = "disc_error"
                    enough = 2
                else:
                    pts = [(r.nfe, r.error) for r in rows if r.error > 2 * r.floor]
                    basis = "error above 2x floor"
                    enough = 3  # sampling noise: two points do not make a slope
                fitted = fit_order(*zip(*pts, strict=True)) if len(pts) >= enough else math.nan
                out.append(
                    {
                        "solver": solver,
                        "target": target,
                        "declared": rows[0].declared_order,
                        "fitted": fitted,
                        "points": len(pts),
                        "basis": basis,
                    }
                )
        return out

    def table(self, metric: str = "error") -> str:
        """Text table per target: one row per solver, one column per NFE budget.

        ``metric`` is a :class:`Record` field (``error``, ``disc_error``, ``mode_weight_err``...).
        Each row ends with the fitted order and the declared one in parentheses.
        """
        if metric not in CSV_FIELDS:
            raise ValueError(f"metric={metric!r}; expected one of {', '.join(CSV_FIELDS)}")
        orders = {(o["solver"], o["target"]): o for o in self.orders()}
        lines: list[str] = []
        for name, s in self.targets.items():
            rows = self.rows(name)
            if not rows:
                continue
            budgets = sorted({r.nfe_budget for r in rows})
            floors = ", ".join(f"{k} {v:.2e}" for k, v in s.floors.items())
            lines.append(f"{name}: {s.description}")
            metric_name = s.metric if metric == "error" else metric
            lines.append(f"  {metric_name} ({s.method}); floors: {floors}")
            width = max(14, *(len(r.solver) for r in rows)) + 2
            head = "  " + "NFE".ljust(width) + "".join(str(b).rjust(10) for b in budgets)
            lines.append(head + "   order (declared)")
            for solver in dict.fromkeys(r.solver for r in rows):
                by_budget = {r.nfe_budget: r for r in self.rows(name, solver)}
                cells = "".join(
                    _fmt(getattr(by_budget[b], metric) if b in by_budget else None, 10)
                    for b in budgets
                )
                o = orders[(solver, name)]
                fitted = "  -" if math.isnan(o["fitted"]) else f"{o['fitted']:5.2f}"
                lines.append(f"  {solver.ljust(width)}{cells}   {fitted} ({o['declared']:g})")
            if s.components > 1 and metric == "error":
                floor = s.mode_floors.get("mode_weight_err", math.nan)
                lines.append(
                    "  mode-weight error (total variation between weight vectors); "
                    f"floor {floor:.2e}"
                )
                for solver in dict.fromkeys(r.solver for r in rows):
                    by_budget = {r.nfe_budget: r for r in self.rows(name, solver)}
                    cells = "".join(
                        _fmt(by_budget[b].mode_weight_err if b in by_budget else None, 10)
                        for b in budgets
                    )
                    lines.append(f"  {solver.ljust(width)}{cells}")
            lines.append("")
        actual = {(r.nfe_budget, r.nfe) for r in self.records if r.nfe != r.nfe_budget}
        if actual:
            lines.append(
                "Columns are NFE budgets (final denoising step included); a solver spends "
                "floor((NFE-1)/evals_per_step) steps, so its actual NFE may be lower (see CSV)."
            )
        return "\n".join(lines).rstrip() + "\n"

    def orders_table(self) -> str:
        """One line per solver: fitted orders on each target beside the declared order."""
        orders = self.orders()
        targets = list(self.targets)
        solvers_ = list(dict.fromkeys(o["solver"] for o in orders))
        width = max(14, *(len(s) for s in solvers_)) + 2
        tw = [max(10, len(t) + 2) for t in targets]
        lines = [
            "Empirical order (-slope of log error vs log NFE)",
            "  "
            + "solver".ljust(width)
            + "declared"
            + "".join(t.rjust(w) for t, w in zip(targets, tw, strict=True)),
        ]
        lookup = {(o["solver"], o["target"]): o for o in orders}
        for s in solvers_:
            cells = ""
            for t, w in zip(targets, tw, strict=True):
                o = lookup.get((s, t))
                val = "-" if o is None or math.isnan(o["fitted"]) else f"{o['fitted']:.2f}"
                cells += val.rjust(w)
            declared = next(o["declared"] for o in orders if o["solver"] == s)
            lines.append("  " + s.ljust(width) + f"{declared:g}".rjust(8) + cells)
        lines.append(
            "  Gaussian targets: fitted on the exact discretisation error (output vs the exact "
            "solution's law) over the three largest NFEs; mixtures: on errors above twice the "
            "noise floor ('-': too few such points)."
        )
        return "\n".join(lines) + "\n"

    # -- files --------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike) -> str:
        """Write every record (one row per solver, target and NFE) as CSV."""
        path = _prepare(path)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in self.records:
                w.writerow(asdict(r))
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "targets": {k: asdict(v) for k, v in self.targets.items()},
            "records": [asdict(r) for r in self.records],
            "orders": self.orders(),
        }

    def to_json(self, path: str | os.PathLike) -> str:
        """Write settings, target summaries, records and fitted orders as JSON."""
        path = _prepare(path)
        with open(path, "w") as fh:
            json.dump(_jsonable(self.to_dict()), fh, indent=1, allow_nan=False)
        return path

    def plot(self, path: str | os.PathLike, title: str | None = None) -> str:
        """Log-log error against NFE, one panel per target, one line per solver (PNG)."""
        from .plotting import save_error_plot

        records = []
        for r in self.records:
            s = self.targets[r.target]
            records.append(
                {
                    "solver": r.solver,
                    "target": f"{r.target} (d={s.dim})",
                    "nfe": r.nfe,
                    "error": r.error,
                    "metric": s.metric,
                }
            )
        floors = {f"{k} (d={s.dim})": s.floors for k, s in self.targets.items()}
        declared = {r.solver: r.declared_order for r in self.records}
        records = [
            {**rec, "solver": f"{rec['solver']} (order {declared[rec['solver']]:g})"}
            for rec in records
        ]
        if title is None:
            title = (
                "Sampler error vs NFE against the exact target (exact score, "
                f"{self.settings['sde'].split('(')[0]}, t_end={self.settings['t_end']:g})"
            )
        return save_error_plot(
            records,
            path,
            floors=floors,
            orders=declared,
            ticks=self.settings["nfes"],
            guide_targets=[
                f"{k} (d={s.dim})" for k, s in self.targets.items() if s.components == 1
            ],
            title=title,
        )

    def plot_samples(
        self, path: str | os.PathLike, target: str, nfe_budget: int | None = None
    ) -> str:
        """Scatter each solver's output at one NFE budget over the 2-D target's density."""
        from .plotting import save_scatter

        keys = [k for k in self.samples if k[1] == target]
        if not keys:
            raise ValueError(
                f"no stored samples for target {target!r}; samples are kept for 2-D mixture "
                f"targets: {sorted({k[1] for k in self.samples}) or 'none in this study'}"
            )
        budgets = sorted({k[2] for k in keys})
        if nfe_budget is None:
            nfe_budget = budgets[0]
        if nfe_budget not in budgets:
            raise ValueError(f"nfe_budget={nfe_budget!r}; stored budgets: {budgets}")
        panels = {
            f"{k[0]} (NFE {self._nfe(k)})": self.samples[k] for k in keys if k[2] == nfe_budget
        }
        t = self.target_objects[target]
        return save_scatter(
            panels,
            path,
            density_fn=t,
            title=f"{target}: samples at an NFE budget of {nfe_budget}, over the exact density",
        )

    def _nfe(self, key: tuple[str, str, int]) -> int:
        return next(r.nfe for r in self.records if (r.solver, r.target, r.nfe_budget) == key)


def _nz(v: float | None) -> float:
    return 0.0 if v is None else v


def _prepare(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return path


def _jsonable(obj: Any) -> Any:
    """Replace non-finite floats by strings ("inf", "nan") so the JSON stays standard."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------------
# the study
# ------------------------------------------------------------------------------------------------


def steps_for_budget(solver: str, nfe: int, denoise: bool = True) -> int:
    """Steps a solver gets for an NFE budget: ``floor((NFE - denoise) / evals_per_step)``.

    Returns 0 when the budget cannot pay for one step. Adaptive solvers choose their own steps
    and cannot be held to a budget: they raise ``ValueError``.
    """
    spec = _solvers.get(solver)
    if spec.adaptive or not spec.evals_per_step:
        raise ValueError(
            f"solver {solver!r} is adaptive (it chooses its own steps), so it cannot be run at a "
            "fixed NFE budget; compare it separately by tolerance"
        )
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"NFE budget {nfe!r} must be a positive integer")
    return max(0, (nfe - int(denoise)) // int(spec.evals_per_step))


def _seed(seed: int, *parts: str) -> int:
    """A stable 63-bit seed from the study seed and names (no salted ``hash``)."""
    h = zlib.crc32("/".join(parts).encode())
    return int(np.random.SeedSequence([seed, h]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _gen(seed: int, *parts: str) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *parts))


@dataclass(frozen=True)
class SolverRun:
    """One solver configuration of a study: its label, registry name, options and time grid."""

    label: str
    name: str
    options: dict[str, Any]
    grid: str | None


SolversArg = str | Sequence[str] | Mapping[str, str | tuple[str, Mapping[str, Any]]] | None


def _resolve_solvers(
    solvers: SolversArg,
    solver_options: Mapping[str, Mapping[str, Any]] | None,
    grid: str | None,
) -> list[SolverRun]:
    """Turn the ``solvers`` argument of :func:`run_study` into validated :class:`SolverRun` s."""
    if solvers is None:
        solvers = default_solvers()
    if isinstance(solvers, str):
        solvers = [solvers]
    if isinstance(solvers, Mapping):
        items = []
        for label, value in solvers.items():
            name, opts = (value, {}) if isinstance(value, str) else value
            items.append((str(label), name, dict(opts)))
    else:
        items = [(n, n, {}) for n in solvers]
    if not items:
        raise ValueError(f"no solvers given; available solvers: {', '.join(_solvers.available())}")
    labels = [label for label, _, _ in items]
    if len(set(labels)) != len(labels):
        raise ValueError(f"solvers {labels} contain duplicates")
    extra = {k: dict(v) for k, v in (solver_options or {}).items()}
    for k in extra:
        if k not in labels:
            raise ValueError(f"solver_options names {k!r}, which is not among the solvers {labels}")
    runs = []
    for label, name, opts in items:
        spec = _solvers.get(name)  # raises with the valid names
        steps_for_budget(name, 10)  # raises for adaptive solvers
        opts = {**opts, **extra.get(label, {})}
        run_grid = opts.pop("grid", grid)
        unknown = set(opts) - set(spec.options)
        if unknown:
            valid = ", ".join(spec.options) or "none"
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for solver {name!r}; valid options: {valid} "
                "(and grid)"
            )
        runs.append(SolverRun(label, name, opts, run_grid))
    return runs


# One of each family: SDE order 1 (two discretisations), predictor-corrector, the first-order
# exponential integrator (DDIM), second-order single- and multistep ODE solvers, and RK4.
DEFAULT_SOLVERS = (
    "euler_maruyama",
    "ancestral",
    "predictor_corrector",
    "ddim",
    "ode_heun",
    "edm_heun",
    "dpm_solver_pp_2m",
    "ode_rk4",
)


def fixed_step_solvers() -> list[str]:
    """Every registered fixed-step solver (adaptive ones cannot be held to an NFE budget)."""
    return [
        n
        for n in _solvers.available()
        if not _solvers.get(n).adaptive and _solvers.get(n).evals_per_step
    ]


def default_solvers() -> list[str]:
    """:data:`DEFAULT_SOLVERS` that are registered (all fixed-step solvers if none is)."""
    fixed = fixed_step_solvers()
    chosen = [n for n in DEFAULT_SOLVERS if n in fixed]
    return chosen or fixed


def run_study(
    solvers: SolversArg = None,
    targets: Any = DEFAULT_TARGETS,
    nfes: Sequence[int] = DEFAULT_NFES,
    seed: int = 0,
    *,
    sde: Any = None,
    n_samples: int = 4096,
    n_reference: int | None = None,
    n_projections: int = 64,
    t_end: float | None = None,
    grid: str | None = None,
    denoise: bool = True,
    solver_options: Mapping[str, Mapping[str, Any]] | None = None,
    exact: bool = True,
    keep_samples: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> StudyResult:
    """Measure each solver's error against each exact target at each NFE budget.

    Args:
        solvers: registered solver names (default: :data:`DEFAULT_SOLVERS`, one per family;
            :func:`fixed_step_solvers` lists every solver that can be held to a budget), or a
            mapping ``{label: name}`` / ``{label: (name, {option: value, "grid": grid})}`` to
            compare variants of one solver (options, time grids) side by side.
        targets: built-in names (:data:`TARGETS`), :class:`Gaussian` / :class:`GaussianMixture`
            objects, a mix of both, or a mapping ``{name: target}``.
        nfes: NFE budgets (final denoising evaluation included, see the module docstring).
        seed: seeds everything: the prior draws, the solver noise, the reference samples and the
            sliced-W2 projections. The same prior sample and noise stream are used for every
            solver and budget (common random numbers), so differences are not sampling noise.
        sde: the diffusion process (default ``VPSDE(LinearVP())``).
        n_samples: samples per run for the Monte-Carlo metrics (mixtures, non-affine solvers).
        n_reference: size of the mixture reference sample (default ``n_samples``, so the noise
            floor is the distance between two perfect samplers' outputs).
        n_projections: directions for the sliced W2.
        t_end: truncation time (default ``sde.default_t_end``).
        grid: time grid name for every solver (default: each solver's own default grid; a
            ``"grid"`` in a solver's options overrides it).
        denoise: finish with the Tweedie denoising step (as :func:`solvers.sample` does).
        solver_options: ``{label: {option: value}}`` passed through to the solvers.
        exact: propagate moments exactly for affine solvers on Gaussian targets (when False,
            Gaussian targets are measured from samples like any other solver).
        keep_samples: keep the outputs on 2-D mixture targets (for :meth:`StudyResult.plot_samples`).
        dtype, device: where and in what precision to sample (float64 by default: the harness
            measures errors down to 1e-6 and below).
        progress: show a progress bar over the (solver, target, NFE) runs.

    Returns:
        A :class:`StudyResult` (``.table()``, ``.orders()``, ``.to_csv()``, ``.to_json()``,
        ``.plot()``).
    """
    runs = _resolve_solvers(solvers, solver_options, grid)
    tmap = _resolve_targets(targets)
    budgets = _check_nfes(nfes)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an integer")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 16:
        raise ValueError(f"n_samples={n_samples!r} must be an integer >= 16")
    n_ref = n_samples if n_reference is None else int(n_reference)
    if n_ref < 16:
        raise ValueError(f"n_reference={n_reference!r} must be >= 16")
    sde = VPSDE(LinearVP()) if sde is None else sde
    t_end = float(sde.default_t_end if t_end is None else t_end)
    if not 0 < t_end < float(sde.T):
        raise ValueError(f"t_end={t_end!r} must lie in (0, T={float(sde.T)})")

    from tqdm.auto import tqdm

    total = len(runs) * len(tmap) * len(budgets)
    bar = tqdm(total=total, disable=not progress, desc="scoresde check", unit="run")
    records: list[Record] = []
    summaries: dict[str, TargetSummary] = {}
    kept: dict[tuple[str, str, int], Tensor] = {}
    try:
        for tname, target in tmap.items():
            ctx = _TargetContext(
                tname, target, sde, t_end, denoise, seed, n_samples, n_ref, n_projections, dtype
            )
            summaries[tname] = ctx.summary(runs, exact)
            x_T = None
            for run in runs:
                spec = _solvers.get(run.name)
                for budget in budgets:
                    bar.set_postfix_str(f"{tname} / {run.label} / NFE {budget}", refresh=False)
                    steps = steps_for_budget(run.name, budget, denoise)
                    if steps < 1:
                        bar.update(1)
                        continue
                    start = time.perf_counter()
                    common = dict(
                        solver=run.name,
                        steps=steps,
                        grid=run.grid,
                        t_end=t_end,
                        denoise=denoise,
                        **run.options,
                    )
                    if ctx.gaussian and exact and spec.is_affine(**run.options):
                        rec = ctx.exact_record(spec, run.label, budget, common)
                    else:
                        if x_T is None:
                            x_T = sde.prior_sample(
                                (n_samples, target.dim),
                                generator=_gen(seed, tname, "prior"),
                                dtype=dtype,
                            ).to(device)
                        rec, out = ctx.sampled_record(spec, run.label, budget, common, x_T)
                        if keep_samples and target.dim == 2 and not ctx.gaussian:
                            kept[(run.label, tname, budget)] = out.detach().cpu()
                    rec.wall_time = time.perf_counter() - start
                    records.append(rec)
                    bar.update(1)
    finally:
        bar.close()
    settings = {
        "solvers": {r.label: r.name for r in runs},
        "targets": list(tmap),
        "nfes": budgets,
        "seed": seed,
        "sde": repr(sde),
        "t_end": t_end,
        "denoise": denoise,
        "n_samples": n_samples,
        "n_reference": n_ref,
        "n_projections": n_projections,
        "dtype": str(dtype).replace("torch.", ""),
        "solver_options": {r.label: r.options for r in runs if r.options},
        "solver_grids": {r.label: r.grid or "solver default" for r in runs},
        "nfe_convention": "NFE budget counts every score evaluation including the final "
        "denoising step; steps = floor((NFE - 1) / evals_per_step)",
    }
    return StudyResult(records, summaries, settings, kept, dict(tmap))


def _check_nfes(nfes: Sequence[int]) -> list[int]:
    if isinstance(nfes, int):
        nfes = [nfes]
    out = []
    for n in nfes:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
            raise ValueError(f"NFE budget {n!r} must be an integer >= 2 (one step + denoising)")
        out.append(int(n))
    if not out:
        raise ValueError("nfes is empty; expected NFE budgets such as 10 20 40 80")
    return sorted(set(out))


class _TargetContext:
    """Per-target state: reference samples, floors and the metric computations."""

    def __init__(
        self,
        name: str,
        target: GaussianMixture,
        sde: Any,
        t_end: float,
        denoise: bool,
        seed: int,
        n_samples: int,
        n_ref: int,
        n_projections: int,
        dtype: torch.dtype,
    ) -> None:
        self.name, self.target, self.sde = name, target, sde
        self.t_end, self.denoise, self.seed = t_end, denoise, seed
        self.n, self.n_ref, self.n_proj = n_samples, n_ref, n_projections
        self.dtype = dtype
        self.gaussian = target.num_components == 1
        self.score_fn = target.score_fn(sde)
        self.proj_seed = _seed(seed, name, "projections") % (2**32)
        self._ideal: dict[str, tuple[Tensor, Tensor] | None] = {}
        self._floors: dict[str, float] = {}
        self._reference: Tensor | None = None

    # -- floors -------------------------------------------------------------------------------
    def ideal(self, kind: str) -> tuple[Tensor, Tensor] | None:
        """Output law of the exact reverse process (``kind`` = ode or sde) from the prior, at
        ``t_end``, then denoised: :func:`scoresde.accuracy.exact_solution_moments`."""
        if not self.gaussian or not hasattr(self.sde, "prior_std"):
            return None
        if kind not in self._ideal:
            self._ideal[kind] = accuracy.exact_solution_moments(
                self.sde, self.target.mean, self.target.cov, kind, self.t_end, self.denoise
            )
        return self._ideal[kind]

    def trunc_floor(self, kind: str) -> float | None:
        ideal = self.ideal(kind)
        if ideal is None:
            return None
        return gaussian_w2(ideal[0], ideal[1], self.target.mean, self.target.cov)

    def reference(self) -> Tensor:
        if self._reference is None:
            self._reference = stratified_sample(
                self.target, self.n_ref, _gen(self.seed, self.name, "reference")
            )
        return self._reference

    def noise_floors(self, repeats: int = 4) -> dict[str, float]:
        """Each metric on an exact i.i.d. target sample of size ``n``, averaged over ``repeats``
        draws: what a perfect sampler scores, so differences below it are sampling noise."""
        if not self._floors:
            gen = _gen(self.seed, self.name, "floor")
            acc: dict[str, float] = {}
            for _ in range(repeats):
                x = self.target.sample(self.n, generator=gen, dtype=torch.float64)
                if self.gaussian:
                    m, c = _empirical_moments(x)
                    vals = {"w2_mc": gaussian_w2(m, c, self.target.mean, self.target.cov)}
                else:
                    vals = {
                        "sliced_w2": sliced_w2(x, self.reference(), self.n_proj, self.proj_seed)
                    }
                    vals.update(mode_errors(x, self.target))
                for k, v in vals.items():
                    acc[k] = acc.get(k, 0.0) + v / repeats
            self._floors = acc
        return self._floors

    def summary(self, runs: Sequence[SolverRun], exact: bool) -> TargetSummary:
        t = self.target
        desc = next(
            (info.description for k, info in TARGETS.items() if k == self.name),
            f"user {'Gaussian' if self.gaussian else f'mixture of {t.num_components}'} in d={t.dim}",
        )
        floors: dict[str, float] = {}
        if self.gaussian:
            kinds = sorted({_solvers.get(r.name).kind for r in runs})
            for kind in kinds:
                f = self.trunc_floor(kind)
                if f is not None:
                    floors[f"{kind.upper()} truncation + prior floor"] = f
            affine = exact and all(_solvers.get(r.name).is_affine(**r.options) for r in runs)
            if not affine:
                floors["Monte-Carlo floor (non-affine solvers)"] = self.noise_floors()["w2_mc"]
            method = (
                "exact moments, no sampling noise"
                if affine
                else f"exact moments for affine solvers, else {self.n} samples"
            )
            return TargetSummary(self.name, t.dim, 1, desc, "W2 (Bures)", method, floors)
        nf = self.noise_floors()
        floors["sampling-noise floor"] = nf["sliced_w2"]
        method = f"{self.n} samples vs {self.n_ref} reference points, {self.n_proj} projections"
        modes = {k: v for k, v in nf.items() if k.startswith("mode_")}
        return TargetSummary(
            self.name, t.dim, t.num_components, desc, "sliced W2", method, floors, modes
        )

    # -- measurements -------------------------------------------------------------------------
    def _record(
        self, spec: SolverSpec, label: str, budget: int, nfe: int, steps: int, **kw: Any
    ) -> Record:
        return Record(
            solver=label,
            registry_name=spec.name,
            target=self.name,
            kind=spec.kind,
            declared_order=float(spec.order),
            nfe_budget=budget,
            nfe=nfe,
            steps=steps,
            **kw,
        )

    def _probe_nfe(self, common: dict[str, Any]) -> int:
        """NFE actually spent: one run with a single sample (cheap, and exact for fixed steps)."""
        x = self.sde.prior_sample((1, self.target.dim), generator=torch.Generator().manual_seed(0))
        _, stats = _solvers.sample(
            self.sde, self.score_fn, x_T=x.to(self.dtype), generator=torch.Generator(), **common
        )
        return int(stats.nfe)

    def exact_record(
        self, spec: SolverSpec, label: str, budget: int, common: dict[str, Any]
    ) -> Record:

        opts = {
            k: v
            for k, v in common.items()
            if k not in ("solver", "steps", "grid", "t_end", "denoise")
        }
        mean, cov = accuracy.exact_output_moments(
            self.sde,
            self.score_fn,
            self.target.dim,
            spec.name,
            common["steps"],
            grid=common["grid"],
            t_end=common["t_end"],
            denoise=common["denoise"],
            **opts,
        )
        mean = torch.as_tensor(mean, dtype=torch.float64).cpu()
        cov = torch.as_tensor(cov, dtype=torch.float64).cpu()
        err = gaussian_w2(mean, cov, self.target.mean, self.target.cov)
        ideal = self.ideal(spec.kind)
        disc = None if ideal is None else gaussian_w2(mean, cov, ideal[0], ideal[1])
        trunc = self.trunc_floor(spec.kind)
        return self._record(
            spec,
            label,
            budget,
            self._probe_nfe(common),
            common["steps"],
            metric="W2 (Bures)",
            method="exact moments",
            error=err,
            floor=_nz(trunc),
            disc_error=disc,
            trunc_floor=trunc,
            noise_floor=0.0,
        )

    def sampled_record(
        self, spec: SolverSpec, label: str, budget: int, common: dict[str, Any], x_T: Tensor
    ) -> tuple[Record, Tensor]:
        gen = _gen(self.seed, self.name, "solver-noise")
        if x_T.device.type != "cpu":
            gen = torch.Generator(x_T.device).manual_seed(
                _seed(self.seed, self.name, "solver-noise")
            )
        out, stats = _solvers.sample(
            self.sde, self.score_fn, x_T=x_T.to(self.dtype), generator=gen, **common
        )
        out64 = out.detach().to("cpu", torch.float64)
        floors = self.noise_floors()
        if not bool(torch.isfinite(out64).all()):
            bad = int((~torch.isfinite(out64).all(1)).sum())
            nan_rec = dict(error=math.inf)
            if self.gaussian:
                nan_rec.update(disc_error=math.inf)
            else:
                nan_rec.update(mode_weight_err=1.0, mode_mean_err=math.inf, mode_cov_err=math.inf)
            rec = self._record(
                spec,
                label,
                budget,
                int(stats.nfe),
                int(stats.steps),
                metric="W2 (Bures)" if self.gaussian else "sliced W2",
                method=f"samples ({bad} of {out64.shape[0]} non-finite: diverged)",
                floor=floors.get("w2_mc", floors.get("sliced_w2", 0.0)),
                **nan_rec,
            )
            return rec, out64
        if self.gaussian:
            m, c = _empirical_moments(out64)
            ideal = self.ideal(spec.kind)
            trunc = self.trunc_floor(spec.kind)
            rec = self._record(
                spec,
                label,
                budget,
                int(stats.nfe),
                int(stats.steps),
                metric="W2 (Bures)",
                method=f"moments of {out64.shape[0]} samples",
                error=gaussian_w2(m, c, self.target.mean, self.target.cov),
                floor=max(_nz(trunc), floors["w2_mc"]),
                disc_error=None if ideal is None else gaussian_w2(m, c, ideal[0], ideal[1]),
                trunc_floor=trunc,
                noise_floor=floors["w2_mc"],
            )
            return rec, out64
        modes = mode_errors(out64, self.target)
        rec = self._record(
            spec,
            label,
            budget,
            int(stats.nfe),
            int(stats.steps),
            metric="sliced W2",
            method=f"{out64.shape[0]} samples vs {self.n_ref} reference",
            error=sliced_w2(out64, self.reference(), self.n_proj, self.proj_seed),
            floor=floors["sliced_w2"],
            noise_floor=floors["sliced_w2"],
            **modes,
        )
        return rec, out64


def solver_table(builtin_only: bool = True) -> str:
    """A Markdown table of the registered solvers (name, kind, order, NFE per step, default grid,
    options, reference), as README shows it. ``builtin_only`` keeps the solvers defined in the
    ``solvers`` package (not those registered by user code)."""
    rows = [
        "| solver | kind | order | NFE / step | default grid | options | reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in _solvers.available():
        spec = _solvers.get(name)
        if builtin_only and not spec.fn.__module__.startswith("solvers."):
            continue
        nfe = "adaptive" if spec.adaptive or not spec.evals_per_step else str(spec.evals_per_step)
        opts = ", ".join(f"`{k}={v!r}`" for k, v in spec.options.items()) or "-"
        ref = spec.reference.replace("|", "/") or "-"
        rows.append(
            f"| `{name}` | {spec.kind} | {spec.order:g} | {nfe} | {spec.default_grid} | {opts} "
            f"| {ref} |"
        )
    return "\n".join(rows)


__all__ = [
    "DEFAULT_NFES",
    "DEFAULT_TARGETS",
    "TARGETS",
    "Record",
    "StudyResult",
    "TargetInfo",
    "TargetSummary",
    "DEFAULT_SOLVERS",
    "default_solvers",
    "fixed_step_solvers",
    "fit_order",
    "get_target",
    "mode_errors",
    "run_study",
    "sliced_w2",
    "solver_table",
    "stratified_sample",
    "steps_for_budget",
    "SolverRun",
]
