"""The results of a study: one :class:`Record` per (solver, target, NFE), per-target summaries,
and their views: text tables, fitted orders, CSV and JSON (figures: :mod:`.plots`)."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

import solvers as _solvers

from ..targets import GaussianMixture
from .metrics import fit_order


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
    per_mode_w2: float | None = None
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
            width = max([14, *(len(r.solver) for r in rows)]) + 2
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
                for field_name, title in (
                    ("per_mode_w2", "per-mode W2 (sum_k w_k W2 of each mode's moments)"),
                    (
                        "mode_weight_err",
                        "mode-weight error (total variation between weight vectors)",
                    ),
                ):
                    floor = s.mode_floors.get(field_name, math.nan)
                    lines.append(f"  {title}; floor {floor:.2e}")
                    for solver in dict.fromkeys(r.solver for r in rows):
                        by_budget = {r.nfe_budget: r for r in self.rows(name, solver)}
                        cells = "".join(
                            _fmt(getattr(by_budget[b], field_name) if b in by_budget else None, 10)
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
        width = max([14, *(len(s) for s in solvers_)]) + 2
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
            self.settings.get("orders_note")
            or "  Gaussian targets: fitted on the exact discretisation error (output vs the exact "
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
        from .plots import plot_errors

        return plot_errors(self, path, title)

    def plot_samples(
        self, path: str | os.PathLike, target: str, nfe_budget: int | None = None
    ) -> str:
        """Scatter each solver's output at one NFE budget over the 2-D target's density."""
        from .plots import plot_samples

        return plot_samples(self, path, target, nfe_budget)

    def nfe_of(self, key: tuple[str, str, int]) -> int:
        """The NFE actually spent by the run ``(solver label, target, NFE budget)``."""
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
