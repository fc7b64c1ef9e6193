"""Tuned time grids: choose a solver's grid for an NFE budget from the model's own score.

:func:`tune_grid` searches a two-parameter family of grids, the log-SNR grid warped by a power
``p`` and ending at a truncation time ``t_end``,

    lambda_i = lambda(T) + (lambda(t_end) - lambda(T)) (i / N)^p,    t_i = t(lambda_i),

(``p = 1`` is the uniform log-SNR grid; ``p > 1`` takes smaller steps near ``T``, ``p < 1``
smaller steps near ``t_end``). Each candidate is scored by how far the distribution of the cheap
run's outputs lies from a reference: the same probe batch ``x_T`` integrated to high accuracy
(``ode_adaptive`` at a tight tolerance). The distance is the sliced squared 2-Wasserstein distance

    SW2^2(x, y) = mean_u W2^2(u.x, u.y),    W2^2 in 1-D = mean_i (sort(u.x)_i - sort(u.y)_i)^2,

over the reference's principal axes and random unit directions. It compares distributions, not
paths: a sample that the cheap solver sends to another mode of the same mass costs nothing,
whereas a pathwise RMS would count it (and rank grids wrongly on multimodal data).

The search sees only the score function (no target samples): a coarse sweep over ``log p`` and
``log t_end``, then a compass search from the best point (try the four neighbours; move on
improvement, else halve the step), at most ``max_runs`` cheap runs of the probe batch in all.
The solver's own default grid competes too, so on the probe batch the tuned grid is never worse
than the default.

Grids save to and load from JSON with :func:`save_grid` / :func:`load_grid`; ``sample(...,
grid=tensor)`` takes ``t_end`` from the grid's last time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import solvers as _solvers
from schedules import time_grid
from solvers.protocol import DiffusionProcess, ScoreFn

GRID_FORMAT = "scoresde-grid/1"


def warped_log_snr_grid(
    process: DiffusionProcess, steps: int, t_start: float, t_end: float, power: float
) -> Tensor:
    """``lambda_i = lambda(t_start) + (lambda(t_end) - lambda(t_start)) (i/N)^power``, mapped to t.

    float64, ``steps + 1`` strictly decreasing times with the exact endpoints.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    if not (t_start > t_end > 0):
        raise ValueError(f"t_start={t_start!r}, t_end={t_end!r}: expected t_start > t_end > 0")
    if not (math.isfinite(power) and power > 0):
        raise ValueError(f"power={power!r} must be a positive number")
    lam0 = float(process.log_snr(torch.tensor(t_start, dtype=torch.float64)))
    lam1 = float(process.log_snr(torch.tensor(t_end, dtype=torch.float64)))
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    t = process.t_from_log_snr(lam0 + (lam1 - lam0) * u**power).to(torch.float64).clone()
    t[0], t[-1] = t_start, t_end
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(
            f"the warped log-SNR grid (power {power}, {steps} steps on [{t_end}, {t_start}]) is "
            "not strictly decreasing in float64"
        )
    return t


def _directions(reference: Tensor, n_random: int, generator: torch.Generator) -> Tensor:
    """Unit directions ``(d, k)``: the reference's principal axes and ``n_random`` random ones."""
    y = reference.reshape(reference.shape[0], -1).to(torch.float64)
    d = y.shape[1]
    centred = y - y.mean(0)
    axes = torch.linalg.svd(centred, full_matrices=False).Vh[: min(d, 64)].T  # (d, <=64)
    rand = torch.randn(d, n_random, generator=generator, dtype=torch.float64)
    return torch.cat([axes.cpu(), rand / rand.norm(dim=0, keepdim=True)], 1)


def sliced_w2_sq(x: Tensor, y: Tensor, directions: Tensor) -> float:
    """``mean_u W2^2(u.x, u.y)`` over the columns ``u`` of ``directions`` (equal sample sizes).

    Non-finite samples make it ``inf``.
    """
    a = x.reshape(x.shape[0], -1).to("cpu", torch.float64) @ directions
    b = y.reshape(y.shape[0], -1).to("cpu", torch.float64) @ directions
    val = float(((a.sort(0).values - b.sort(0).values) ** 2).mean())
    return val if math.isfinite(val) else math.inf


@dataclass
class TuneResult:
    """What :func:`tune_grid` found (``tune_grid(..., return_result=True)``).

    Attributes:
        grid: the chosen float64 time grid, ``T`` down to ``t_end``.
        solver, nfe, steps, options: what it was tuned for.
        power, t_end: its parameters (``power=None`` when the solver's default grid won).
        objective: its sliced ``SW2^2`` to the reference on the probe batch.
        default_objective: the same for the solver's default grid at the default ``t_end``.
        runs: cheap sampling runs made; seconds: wall time of the whole search.
        trials: every ``(power, t_end, objective)`` evaluated.
    """

    grid: Tensor
    solver: str
    nfe: int
    steps: int
    options: dict[str, Any]
    power: float | None
    t_end: float
    objective: float
    default_objective: float
    runs: int
    seconds: float
    trials: list[tuple[float | None, float, float]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """The search's parameters and results as JSON-ready values (for :func:`save_grid`)."""
        return {
            "power": self.power,
            "t_end": self.t_end,
            "objective": self.objective,
            "default_objective": self.default_objective,
            "runs": self.runs,
            "seconds": round(self.seconds, 3),
        }


def tune_grid(
    sde: DiffusionProcess,
    score_fn: ScoreFn,
    solver: str,
    nfe: int,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    denoise: bool = True,
    reference_rtol: float = 1e-6,
    reference_t_end: float | None = None,
    powers: Sequence[float] = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0),
    t_end_factors: Sequence[float] = (1.0, 3.0, 9.0, 27.0),
    max_runs: int = 40,
    n_directions: int = 128,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    return_result: bool = False,
    **options: Any,
) -> Tensor | TuneResult:
    """The time grid for ``solver`` at ``nfe`` score evaluations, tuned on the model itself.

    Args:
        sde: the diffusion.
        score_fn: the model's score ``(x, t) -> score``; the only access to the data.
        solver: a registered fixed-step solver.
        nfe: the budget, counting every score evaluation including the final denoising step
            (``steps = floor((nfe - denoise) / evals_per_step)``, as ``scoresde check`` does).
        shape: shape of the probe batch, batch first (e.g. ``(2048, d)``; more samples rank grids
            more reliably, fewer tune faster).
        generator: seeds the probe batch and the solver noise.
        denoise: whether the runs end with the denoising step (as :func:`solvers.sample`).
        reference_rtol: tolerance of the ``ode_adaptive`` reference (``atol`` the same).
        reference_t_end: truncation time of the reference (default ``sde.default_t_end``), also
            the smallest ``t_end`` searched.
        powers, t_end_factors: the coarse sweep: warp powers, and ``t_end`` as multiples of
            ``reference_t_end``.
        max_runs: cheap runs of the probe batch in all (the sweep, the default grid and the
            compass search; the reference run comes on top).
        n_directions: random directions of the sliced distance (beside the principal axes).
        device, dtype: where and in what precision to draw the probe batch.
        return_result: return a :class:`TuneResult` instead of the grid alone.
        options: solver options, passed to every run.

    Returns:
        The float64 grid (strictly decreasing, ``T`` to the chosen ``t_end``), ready for
        ``sample(..., solver=solver, grid=grid)``; or a :class:`TuneResult`.
    """
    from .harness import steps_for_budget

    start = time.perf_counter()
    spec = _solvers.get(solver)
    steps = steps_for_budget(solver, nfe, denoise)
    if steps < 1:
        raise ValueError(
            f"nfe={nfe} cannot pay for one step of {solver!r} "
            f"({spec.evals_per_step} evaluations per step{' + 1 to denoise' if denoise else ''})"
        )
    unknown = set(options) - set(spec.options)
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {solver!r}; valid: {valid}")
    if not powers or min(powers) <= 0:
        raise ValueError(f"powers={tuple(powers)} must be non-empty and positive")
    if not t_end_factors or min(t_end_factors) < 1:
        raise ValueError(f"t_end_factors={tuple(t_end_factors)} must be non-empty and >= 1")
    sweep = len(powers) * len(t_end_factors) + 1
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < sweep:
        raise ValueError(f"max_runs={max_runs!r} must be an integer >= the sweep's {sweep} runs")
    T = float(sde.T)
    t_ref = float(sde.default_t_end if reference_t_end is None else reference_t_end)
    if not 0 < t_ref < T:
        raise ValueError(f"reference_t_end={t_ref!r} must lie in (0, T={T})")

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    x_T = sde.prior_sample(
        tuple(shape), generator=torch.Generator().manual_seed(seed), device=device, dtype=dtype
    )
    reference = _solvers.sample(
        sde,
        score_fn,
        x_T=x_T,
        solver="ode_adaptive",
        t_end=t_ref,
        denoise=denoise,
        rtol=reference_rtol,
        atol=reference_rtol,
    ).samples
    directions = _directions(reference, n_directions, torch.Generator().manual_seed(seed + 1))

    def candidate(power: float | None, t_end: float) -> Tensor:
        if power is None:
            return time_grid(spec.default_grid, sde, steps, T, t_end)
        return warped_log_snr_grid(sde, steps, T, t_end, power)

    trials: dict[tuple[float | None, float], float] = {}

    def trial(power: float | None, t_end: float) -> float:
        """The objective of one candidate, each evaluated once (``inf`` if it breaks down)."""
        key = (power, t_end)
        if key in trials:
            return trials[key]
        if len(trials) >= max_runs or not t_ref <= t_end < T:
            return math.inf
        try:
            grid = candidate(power, t_end)
        except ValueError:  # collapses in float64: not a candidate
            return math.inf
        try:
            out = _solvers.sample(
                sde,
                score_fn,
                x_T=x_T,
                solver=solver,
                grid=grid,
                denoise=denoise,
                generator=torch.Generator(x_T.device).manual_seed(seed + 2),
                **options,
            ).samples
            trials[key] = sliced_w2_sq(out, reference, directions)
        except FloatingPointError:  # the score blew up on this grid
            trials[key] = math.inf
        return trials[key]

    default_obj = trial(None, float(sde.default_t_end))
    for p in powers:
        for f in t_end_factors:
            trial(float(p), t_ref * float(f))

    # compass search in (log p, log t_end) from the best swept point
    def spacing(values: Sequence[float]) -> float:
        logs = sorted(math.log(v) for v in set(values))
        return (logs[-1] - logs[0]) / (len(logs) - 1) if len(logs) > 1 else math.log(2)

    step_p, step_t = spacing(powers) / 2, spacing(t_end_factors) / 2
    (p, t), v = min(((k, v) for k, v in trials.items() if k[0] is not None), key=lambda kv: kv[1])
    while len(trials) < max_runs and max(step_p, step_t) > 0.02:
        moves = [(math.exp(s) * p, t) for s in (-step_p, step_p)]
        moves += [(p, math.exp(s) * t) for s in (-step_t, step_t)]
        val, move = min((trial(*m), m) for m in moves)
        if val < v:
            v, (p, t) = val, move
        else:
            step_p, step_t = step_p / 2, step_t / 2

    (power, t_end), best = min(trials.items(), key=lambda kv: kv[1])
    if not math.isfinite(best):
        raise FloatingPointError(
            f"every candidate grid for {solver!r} at {nfe} NFE gave non-finite samples"
        )
    result = TuneResult(
        grid=candidate(power, t_end),
        solver=solver,
        nfe=nfe,
        steps=steps,
        options=dict(options),
        power=power,
        t_end=t_end,
        objective=best,
        default_objective=default_obj,
        runs=len(trials),
        seconds=time.perf_counter() - start,
        trials=[(k[0], k[1], val) for k, val in trials.items()],
    )
    return result if return_result else result.grid


# ------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------


def save_grid(
    path: str | os.PathLike,
    grid: Tensor | Sequence[float] | TuneResult,
    *,
    solver: str | None = None,
    nfe: int | None = None,
    sde: Any = None,
    options: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> str:
    """Write a time grid with its metadata to JSON; returns the path.

    A :class:`TuneResult` brings its own solver, NFE, options and search results. ``sde`` is
    recorded through its ``to_config()`` (else its ``repr``). The times are written with Python's
    shortest round-trip float repr, so :func:`load_grid` returns the identical float64 grid.
    """
    if isinstance(grid, TuneResult):
        solver = grid.solver if solver is None else solver
        nfe = grid.nfe if nfe is None else nfe
        options = grid.options if options is None else options
        info = {**grid.info(), **(info or {})}
        grid = grid.grid
    times = _check_times(grid, "grid")
    if solver is not None:
        _solvers.get(solver)
    config = None
    if sde is not None:
        config = sde.to_config() if hasattr(sde, "to_config") else repr(sde)
    doc = {
        "format": GRID_FORMAT,
        "solver": solver,
        "nfe": nfe,
        "steps": len(times) - 1,
        "options": dict(options or {}),
        "sde": config,
        "t_end": times[-1],
        "tuning": dict(info or {}),
        "grid": times,
    }
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def load_grid(path: str | os.PathLike) -> tuple[Tensor, dict[str, Any]]:
    """Read a grid written by :func:`save_grid`: ``(float64 grid, metadata)``.

    The metadata holds ``solver``, ``nfe``, ``steps``, ``options``, ``sde`` (a config dict for
    :func:`scoresde.sde_from_config`), ``t_end`` and ``tuning``.
    """
    path = os.fspath(path)
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"grid file {path!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"grid file {path!r} is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != GRID_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"grid file {path!r} has format {got!r}; expected {GRID_FORMAT!r}")
    times = _check_times(doc.get("grid"), f"the grid in {path!r}")
    meta = {k: v for k, v in doc.items() if k not in ("format", "grid")}
    return torch.tensor(times, dtype=torch.float64), meta


def _check_times(grid: Any, what: str) -> list[float]:
    """The times as floats: at least two, finite, positive and strictly decreasing."""
    try:
        times = [float(v) for v in torch.as_tensor(grid, dtype=torch.float64).flatten().tolist()]
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} is {type(grid).__name__}; expected a sequence of times") from None
    if len(times) < 2:
        raise ValueError(f"{what} has {len(times)} time(s); expected at least 2")
    if not all(math.isfinite(v) and v > 0 for v in times):
        raise ValueError(f"{what} holds non-finite or non-positive times; expected times in (0, T]")
    if any(b >= a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError(f"{what} is not strictly decreasing (from T towards t_end)")
    return times
