"""Figures of a study (matplotlib, the optional ``plot`` extra): error against NFE per target, and
the samples of 2-D targets over their density."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import StudyResult


def plot_errors(result: StudyResult, path: str | os.PathLike, title: str | None = None) -> str:
    """Log-log error against NFE, one panel per target, one line per solver (PNG)."""
    from ..plotting import save_error_plot

    records = []
    for r in result.records:
        s = result.targets[r.target]
        records.append(
            {
                "solver": r.solver,
                "target": f"{r.target} (d={s.dim})",
                "nfe": r.nfe,
                "error": r.error,
                "metric": s.metric,
            }
        )
    floors = {f"{k} (d={s.dim})": s.floors for k, s in result.targets.items()}
    declared = {r.solver: r.declared_order for r in result.records}
    records = [
        {**rec, "solver": f"{rec['solver']} (order {declared[rec['solver']]:g})"} for rec in records
    ]
    if title is None:
        title = result.settings.get("plot_title") or (
            "Sampler error vs NFE against the exact target (exact score, "
            f"{result.settings['sde'].split('(')[0]}, t_end={result.settings['t_end']:g})"
        )
    return save_error_plot(
        records,
        path,
        floors=floors,
        orders=declared,
        ticks=result.settings["nfes"],
        guide_targets=[f"{k} (d={s.dim})" for k, s in result.targets.items() if s.components == 1],
        title=title,
    )


def plot_samples(
    result: StudyResult, path: str | os.PathLike, target: str, nfe_budget: int | None = None
) -> str:
    """Scatter each solver's output at one NFE budget over the 2-D target's density."""
    from ..plotting import save_scatter

    keys = [k for k in result.samples if k[1] == target]
    if not keys:
        raise ValueError(
            f"no stored samples for target {target!r}; samples are kept for 2-D mixture "
            f"targets: {sorted({k[1] for k in result.samples}) or 'none in this study'}"
        )
    budgets = sorted({k[2] for k in keys})
    if nfe_budget is None:
        nfe_budget = budgets[0]
    if nfe_budget not in budgets:
        raise ValueError(f"nfe_budget={nfe_budget!r}; stored budgets: {budgets}")
    panels = {
        f"{k[0]} (NFE {result.nfe_of(k)})": result.samples[k] for k in keys if k[2] == nfe_budget
    }
    t = result.target_objects[target]
    return save_scatter(
        panels,
        path,
        density_fn=t,
        title=f"{target}: samples at an NFE budget of {nfe_budget}, over the exact density",
    )
