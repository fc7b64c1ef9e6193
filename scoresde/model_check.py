"""Accuracy of solvers on your own model, without ground truth: each solver against a converged
reference run of the same model from the same ``x_T``.

* ODE solvers: the reference is ``ode_adaptive`` (dopri5) at ``rtol = atol = reference_tol``. The
  pathwise error is the root-mean-square distance per coordinate,
  ``sqrt(mean_i ||x_i - x_ref,i||^2 / d)``; the distributional one is the sliced W2 between the
  two sample sets.
* SDE solvers: a sample path depends on its noise, so only the distributional error is defined;
  the reference is ``euler_maruyama`` with ``sde_reference_steps`` steps from the same ``x_T``.

The empirical order is :func:`scoresde.harness.fit_order` of the error against NFE. Works for any
process and score function, adapted diffusers / k-diffusion models included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

import solvers as S

from .harness.features import frechet_distance
from .harness.metrics import fit_order, sliced_w2


def _pathwise(x: Tensor, ref: Tensor) -> float:
    d = (x - ref).reshape(len(x), -1).to(torch.float64)
    return float(d.pow(2).mean().sqrt())


def check_model(
    sde: Any,
    score_fn: Any,
    shape: Sequence[int],
    solver_names: Sequence[str] | None = None,
    nfes: Sequence[int] = (10, 20, 40),
    n: int = 256,
    seed: int = 0,
    reference_tol: float = 1e-6,
    sde_reference_steps: int = 1000,
    features: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Errors of each fixed-step solver at each NFE against the converged reference runs.

    Returns ``{"records": [...], "orders": {solver: (pathwise order, distributional order)},
    "floors": {...}}``; a record holds ``solver``, ``kind``, ``nfe``, ``steps``, ``pathwise``
    (``nan`` for SDE solvers), ``sliced_w2`` and, given a feature map ``features`` (images to
    ``(n, k)`` features), ``frechet``: the Fréchet distance between Gaussian fits of the features
    (:func:`scoresde.harness.features.frechet_distance`). ``floors["sde"]`` holds each
    distributional metric between two SDE reference runs with independent noise (what a perfect
    SDE sampler scores); ODE solvers share ``x_T`` with their reference, so theirs is 0.
    """
    names = (
        list(solver_names) if solver_names else [s for s in S.available() if not S.get(s).adaptive]
    )
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, *shape), generator=gen)
    refs: dict[str, Tensor] = {}

    def reference(kind: str) -> Tensor:
        if kind not in refs:
            g = torch.Generator().manual_seed(seed + 1)
            if kind == "ode":
                tol = {"rtol": reference_tol, "atol": reference_tol}
                refs[kind] = S.sample(sde, score_fn, x_T=x_T, solver="ode_adaptive", **tol)[0]
            else:
                refs[kind] = S.sample(
                    sde, score_fn, x_T=x_T, solver="euler_maruyama", steps=sde_reference_steps,
                    generator=g,
                )[0]  # fmt: skip
        return refs[kind]

    def frechet(x: Tensor, ref: Tensor) -> float:
        return frechet_distance(features(x), features(ref))

    records = []
    for name in names:
        spec = S.get(name)
        if spec.adaptive or not spec.evals_per_step:
            raise ValueError(f"{name!r} is adaptive; check_model compares fixed-step solvers")
        ref = reference(spec.kind)
        for nfe in nfes:
            steps = max(1, (int(nfe) - 1) // spec.evals_per_step)
            g = torch.Generator().manual_seed(seed + 2)
            x, stats = S.sample(sde, score_fn, x_T=x_T, solver=name, steps=steps, generator=g)
            records.append(
                {
                    "solver": name,
                    "kind": spec.kind,
                    "nfe_budget": int(nfe),
                    "nfe": stats.nfe,
                    "pathwise": _pathwise(x, ref) if spec.kind == "ode" else math.nan,
                    "sliced_w2": sliced_w2(x.reshape(n, -1), ref.reshape(n, -1), seed=seed),
                    "steps": stats.steps,
                    **({"frechet": frechet(x, ref)} if features is not None else {}),
                }
            )
    orders = {}
    for name in names:
        rows = [r for r in records if r["solver"] == name]
        nfe = [r["nfe"] for r in rows]
        orders[name] = (
            fit_order(nfe, [r["pathwise"] for r in rows]),
            fit_order(nfe, [r["sliced_w2"] for r in rows]),
        )
    floors: dict[str, dict[str, float]] = {}
    if "sde" in refs:  # a second SDE reference with independent noise
        g = torch.Generator().manual_seed(seed + 3)
        steps = sde_reference_steps
        other = S.sample(sde, score_fn, x_T=x_T, solver="euler_maruyama", steps=steps, generator=g)[
            0
        ]
        ref = refs["sde"]
        floors["sde"] = {
            "sliced_w2": sliced_w2(other.reshape(n, -1), ref.reshape(n, -1), seed=seed)
        }
        if features is not None:
            floors["sde"]["frechet"] = frechet(other, ref)
    return {"records": records, "orders": orders, "floors": floors}


def format_table(result: dict[str, Any]) -> str:
    """A markdown table of the records, with each solver's fitted orders."""
    lines = [
        "| solver | kind | NFE | pathwise RMSE | sliced W2 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in result["records"]:
        lines.append(
            f"| {r['solver']} | {r['kind']} | {r['nfe']} | {r['pathwise']:.3g} | {r['sliced_w2']:.3g} |"
        )
    lines += ["", "| solver | order (pathwise) | order (sliced W2) |", "| --- | ---: | ---: |"]
    for name, (p, w) in result["orders"].items():
        lines.append(f"| {name} | {p:.2f} | {w:.2f} |")
    return "\n".join(lines)


__all__ = ["check_model", "format_table"]
