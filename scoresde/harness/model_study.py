"""A study on your own model: :func:`scoresde.model_check.check_model` (each fixed-step solver
against the model's own converged reference run from the same ``x_T``) as a
:class:`~.report.StudyResult`, so it has the analytic study's ``table()``, ``orders()``,
``orders_table()``, ``plot()``, ``to_csv()`` and ``to_json()``.

The "targets" of the result are the metrics: ``pathwise`` (RMSE per coordinate, ODE solvers),
``sliced_w2`` (every solver) and, for 8x8 one-channel images, ``frechet_digits`` (Fréchet distance
of :class:`~.features.DigitsFeatures`). Orders are fitted like the analytic study's: pathwise on
every point (the reference's error, about ``reference_tol``, is far below the solvers'), the
distributional metrics on the errors above twice their floor (SDE solvers: the metric between two
SDE reference runs with independent noise; ODE solvers: 0, as they share ``x_T`` with theirs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import solvers as _solvers

from .report import Record, StudyResult, TargetSummary

METRICS = {
    "pathwise": ("pathwise RMSE", "RMSE per coordinate vs the converged reference from the same x_T"),
    "sliced_w2": ("sliced W2", "sliced W2 vs the reference run's samples"),
    "frechet": ("Frechet distance (digits features)", "Frechet distance of digits-classifier features"),
}  # fmt: skip


def load_model(model: Any) -> tuple[Any, Any, tuple[int, ...]]:
    """``(sde, score_fn, shape)`` from a checkpoint / export path or such a tuple."""
    if isinstance(model, str | os.PathLike):
        from ..training import load_pretrained

        sde, net, score_fn, meta = load_pretrained(model, "cpu")
        if net.num_classes is not None:  # unconditional, through the null label
            score_fn = net.score_fn(net.null_label)
        return sde, score_fn, tuple(meta["data"]["shape"])
    if isinstance(model, tuple) and len(model) == 3:
        return model[0], model[1], tuple(model[2])
    raise ValueError(
        f"model={model!r}; expected a checkpoint or export path, or a tuple (sde, score_fn, shape)"
    )


def model_study(
    model: Any,
    solvers: Sequence[str] | None = None,
    nfes: Sequence[int] = (10, 20, 40),
    seed: int = 0,
    n_samples: int = 256,
    features: Any = "auto",
    reference_tol: float = 1e-5,
    sde_reference_steps: int = 500,
) -> StudyResult:
    """Run :func:`~scoresde.model_check.check_model` and return a :class:`StudyResult`.

    ``features``: a map from images to ``(n, k)`` features for the Fréchet distance, ``None`` for
    none, or ``"auto"``: :func:`~.features.digits_features` when the samples are ``(1, 8, 8)``.
    ``reference_tol`` (dopri5 ``rtol = atol``) and ``sde_reference_steps`` (Euler-Maruyama) set
    the references; the defaults suit float32 networks at NFE <= 40: 1e-6 costs twice the NFE of
    1e-5 and sits near float32 round-off, while the solvers' errors there are above 1e-3.
    """
    from ..model_check import check_model

    sde, score_fn, shape = load_model(model)
    if isinstance(solvers, str):
        solvers = [solvers]
    if features == "auto":
        from .features import digits_features

        features = digits_features(seed) if shape == (1, 8, 8) else None
    raw = check_model(
        sde, score_fn, shape, solvers, nfes, n_samples, seed, reference_tol, sde_reference_steps,
        features=features,
    )  # fmt: skip
    metrics = ["pathwise", "sliced_w2"] + (["frechet"] if features is not None else [])
    sde_floors = raw["floors"].get("sde", {})
    records, summaries = [], {}
    dim = math.prod(shape)
    for metric in metrics:
        label, description = METRICS[metric]
        floors = {"reference tolerance": reference_tol} if metric == "pathwise" else {}
        if metric in sde_floors:
            floors["SDE noise floor (two SDE references)"] = sde_floors[metric]
        name = "frechet_digits" if metric == "frechet" else metric
        method = f"{n_samples} samples, seed {seed}"
        summaries[name] = TargetSummary(name, dim, 1, description, label, method, floors)
        for r in raw["records"]:
            if math.isnan(r[metric]):
                continue  # pathwise is undefined for SDE solvers
            spec = _solvers.get(r["solver"])
            floor = sde_floors.get(metric, 0.0) if r["kind"] == "sde" else 0.0
            records.append(
                Record(
                    solver=r["solver"],
                    target=name,
                    registry_name=r["solver"],
                    kind=r["kind"],
                    declared_order=float(spec.order),
                    nfe_budget=r["nfe_budget"],
                    nfe=r["nfe"],
                    steps=r["steps"],
                    metric=label,
                    method=method,
                    error=r[metric],
                    floor=floor,
                    # pathwise: the reference is the exact solution from this x_T
                    disc_error=r[metric] if metric == "pathwise" else None,
                    noise_floor=floor,
                )
            )
    settings = {
        "model": os.fspath(model) if isinstance(model, str | os.PathLike) else "user model",
        "solvers": sorted({r.solver for r in records}),
        "targets": list(summaries),
        "nfes": sorted({int(n) for n in nfes}),
        "seed": seed,
        "sde": repr(sde),
        "shape": list(shape),
        "n_samples": n_samples,
        "reference_tol": reference_tol,
        "sde_reference_steps": sde_reference_steps,
        "orders_note": "  Over the three largest NFEs: pathwise on every point; distributional "
        "metrics on errors above twice the floor ('-': too few such points). The Frechet "
        "distance is a squared distance: its order is twice the solver's.",
        "plot_title": "Sampler error vs NFE against the model's own converged reference",
    }
    return StudyResult(records, summaries, settings)


__all__ = ["METRICS", "load_model", "model_study"]
