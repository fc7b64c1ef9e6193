"""``scoresde check --tuned``: each solver on its tuned grid beside its default grid.

For every target, solver and NFE budget of a finished study, :func:`scoresde.tune_grid` picks a
grid from the target's score alone (a probe batch, no target samples), and the study is rerun on
that grid with the same seed: the same prior draw, noise stream and reference sample, so the two
rows differ only by the grid.
"""

from __future__ import annotations

from typing import Any

import torch

from ..harness import StudyResult, run_study, steps_for_budget
from ..tuning import tune_grid

TUNED = " tuned"


def with_tuned_grids(
    result: StudyResult, sde: Any, probe: int, progress: bool = False
) -> StudyResult:
    """``result`` with a ``"<solver> tuned"`` row after each solver's row, for every target."""
    settings = result.settings
    options = settings.get("solver_options", {})
    tuned: dict[str, list] = {}  # target -> records
    grids: dict[str, dict[str, dict[int, list[float]]]] = {}
    for tname, target in result.target_objects.items():
        score_fn = target.score_fn(sde)
        for budget in settings["nfes"]:
            chosen = {}
            for label, name in settings["solvers"].items():
                if steps_for_budget(name, budget, settings["denoise"]) < 1:
                    continue
                opts = dict(options.get(label, {}))
                grid = tune_grid(
                    sde,
                    score_fn,
                    name,
                    budget,
                    (probe, target.dim),
                    torch.Generator().manual_seed(settings["seed"]),
                    denoise=settings["denoise"],
                    **opts,
                ).tolist()
                grids.setdefault(tname, {}).setdefault(label, {})[budget] = grid
                chosen[label + TUNED] = (name, {**opts, "grid": grid})
            if not chosen:
                continue
            part = run_study(
                chosen,
                {tname: target},
                [budget],
                settings["seed"],
                sde=sde,
                n_samples=settings["n_samples"],
                n_reference=settings["n_reference"],
                n_projections=settings["n_projections"],
                t_end=settings["t_end"],
                denoise=settings["denoise"],
                keep_samples=False,
                progress=progress,
            )
            tuned.setdefault(tname, []).extend(part.records)

    records = []
    for tname in result.targets:
        for label in settings["solvers"]:
            records += result.rows(tname, label)
            records += [r for r in tuned.get(tname, []) if r.solver == label + TUNED]
    new_settings = {
        **settings,
        "tuned_grids": grids,
        "tuning": f"scoresde.tune_grid per target, solver and NFE on {probe} probe samples "
        "(seed = the study's seed), from the target's score only",
    }
    return StudyResult(records, result.targets, new_settings, result.samples, result.target_objects)
