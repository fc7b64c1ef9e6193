"""Imperfect scores for the study: how trained networks err, and where stochastic samplers win.

``score~(x, t)`` replaces the exact score ``s(x, t)``; ``d`` is the size, ``sigma~ = sigma_t /
alpha_t`` the noise level, and errors are stated in the noise prediction ``eps = -sigma_t s``
(the quantity networks are trained on), so ``Delta s = -Delta eps / sigma_t``:

* ``scale``: ``score~ = (1 + d) s`` (a miscalibrated output scale);
* ``bias``: ``Delta eps = d sin(x)``, a smooth additive bias of size ``d`` at every noise level;
* ``lownoise``: ``Delta eps = d sin(x) / sqrt(sigma~)``, an error that grows at low noise.

``sin`` acts elementwise; none of them vanishes where the data lie. The crossover NFE of a
study is the smallest budget from which on the best stochastic sampler beats the best ODE one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]
SCORE_ERRORS = ("scale", "bias", "lownoise")
SCORE_ERROR_SOLVERS = ("dpm_solver_pp_2m_sde", "dpm_solver_pp_3m_sde", "sa_solver")
"""Added to the default solvers of ``scoresde check --score-error``."""


def parse_score_error(text: str) -> tuple[str, float]:
    """``"KIND:SIZE"`` -> ``(kind, size)``, e.g. ``"scale:0.1"``."""
    kind, sep, size = str(text).partition(":")
    if kind not in SCORE_ERRORS or not sep:
        raise ValueError(
            f"score error {text!r}; expected KIND:SIZE with KIND one of {', '.join(SCORE_ERRORS)}"
        )
    try:
        value = float(size)
    except ValueError:
        raise ValueError(f"score error size {size!r} in {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"score error size {size!r} in {text!r} must be finite")
    return kind, value


def perturb_score(score_fn: ScoreFn, sde: Any, kind: str, size: float) -> ScoreFn:
    """The score ``score_fn`` perturbed by the error ``kind`` of size ``size`` (module docstring)."""
    if kind not in SCORE_ERRORS:
        raise ValueError(f"score error kind {kind!r}; expected one of {', '.join(SCORE_ERRORS)}")
    d = float(size)

    def perturbed(x: Tensor, t: Tensor) -> Tensor:
        s = score_fn(x, t)
        if kind == "scale":
            return s * (1.0 + d)
        alpha, sigma = sde.marginal(t)
        shape = (-1,) + (1,) * (x.dim() - 1)
        sigma = sigma.to(x.dtype).reshape(shape)
        d_eps = d * torch.sin(x)
        if kind == "lownoise":
            d_eps = d_eps / torch.sqrt(sigma / alpha.to(x.dtype).reshape(shape))
        return s - d_eps / sigma

    return perturbed


def crossovers(result: Any) -> dict[str, int | None]:
    """Per target, the smallest NFE budget from which on (at it and every larger budget of the
    study) the best ``sde`` solver's error is below the best ``ode`` solver's; ``None`` if none."""
    out: dict[str, int | None] = {}
    for target in result.targets:
        rows = [r for r in result.records if r.target == target]
        out[target] = None
        for budget in sorted({r.nfe_budget for r in rows}, reverse=True):
            best = {
                kind: min(
                    (r.error for r in rows if r.nfe_budget == budget and r.kind == kind),
                    default=math.inf,
                )  # fmt: skip
                for kind in ("ode", "sde")
            }
            if not best["sde"] < best["ode"]:
                break
            out[target] = budget
    return out


def crossover_table(result: Any) -> str:
    """Markdown table: per target and budget the best ODE and SDE errors, then the crossover."""
    cross = crossovers(result)
    lines = ["| target | NFE | best ODE (error) | best SDE (error) |", "|---|---|---|---|"]
    for target in result.targets:
        rows = [r for r in result.records if r.target == target]
        for budget in sorted({r.nfe_budget for r in rows}):
            cells = []
            for kind in ("ode", "sde"):
                cand = [r for r in rows if r.nfe_budget == budget and r.kind == kind]
                best = min(cand, key=lambda r: r.error, default=None)
                cells.append("-" if best is None else f"{best.solver} ({best.error:.4g})")
            lines.append(f"| {target} | {budget} | {cells[0]} | {cells[1]} |")
    lines.append("")
    lines.append(
        "crossover NFE (stochastic beats ODE): "
        + ", ".join(f"{t}: {'none' if b is None else b}" for t, b in cross.items())
    )
    return "\n".join(lines)
