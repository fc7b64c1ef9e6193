"""A study: resolve the solvers, targets and budgets, run every (solver, target, NFE) and
measure it (exact moments for affine solvers on Gaussian targets, else samples).

Data flows one way: :mod:`.targets`, :mod:`.metrics` and :mod:`.moments` feed this module, which
returns a :class:`~.report.StudyResult`.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

import solvers as _solvers
from schedules import LinearVP
from solvers.registry import SolverSpec
from solvers.resolve import check_options, check_t_end

from ..sde import VPSDE
from ..targets import GaussianMixture
from . import moments
from .metrics import _empirical_moments, gaussian_w2, mode_errors, sliced_w2
from .report import Record, StudyResult, TargetSummary, _nz
from .score_error import perturb_score
from .targets import DEFAULT_TARGETS, TARGETS, _resolve_targets, stratified_sample

DEFAULT_NFES = (10, 20, 40, 80, 160)


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
        check_options(spec, opts, extra=("grid",))
        run_grid = opts.pop("grid", grid)
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
    n_samples: int | None = None,
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
    score_error: tuple[str, float] | None = None,
    model: Any = None,
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
        n_samples: samples per run for the Monte-Carlo metrics (mixtures, non-affine solvers;
            default 4096).
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
        score_error: ``(kind, size)`` replaces the exact score by an imperfect one
            (:func:`scoresde.harness.score_error.perturb_score`); the errors are still against
            the exact target. Exact moment propagation only for ``scale`` (the others are not
            affine in ``x``).
        model: check the solvers on your own model instead of the exact targets: a checkpoint or
            ``scoresde export`` directory, or a tuple ``(sde, score_fn, shape)``. Each solver is
            measured against the model's own converged reference run from the same ``x_T``
            (:func:`scoresde.harness.model_study.model_study`; uses ``solvers``, ``nfes``,
            ``seed`` and ``n_samples``, default 256 here; ``targets`` and the options of the
            analytic study do not apply).

    Returns:
        A :class:`StudyResult` (``.table()``, ``.orders()``, ``.to_csv()``, ``.to_json()``,
        ``.plot()``).
    """
    if model is not None:
        from .model_study import model_study

        names = [r.name for r in _resolve_solvers(solvers, None, None)]
        n = 256 if n_samples is None else n_samples
        return model_study(
            model, names, nfes if nfes is not DEFAULT_NFES else (10, 20, 40), seed, n
        )
    if n_samples is None:
        n_samples = 4096
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
    t_end = check_t_end(sde, t_end)

    # budgets that cannot pay for one step are skipped, and listed in settings["skipped"]
    min_nfe = {r.label: int(_solvers.get(r.name).evals_per_step) + int(denoise) for r in runs}
    skipped = [
        {"solver": r.label, "nfe": b, "min_nfe": min_nfe[r.label]}
        for r in runs
        for b in budgets
        if b < min_nfe[r.label]
    ]
    if len(skipped) == len(runs) * len(budgets):
        need = ", ".join(f"{label} needs NFE >= {n}" for label, n in min_nfe.items())
        raise ValueError(
            f"no NFE budget in {budgets} pays for one step plus the denoising evaluation: {need}"
        )

    from tqdm.auto import tqdm

    if score_error is not None:
        kind, size = score_error
        perturb_score(lambda x, t: x, sde, kind, size)  # checks the kind
        exact = exact and kind == "scale"
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
            if score_error is not None:
                ctx.score_fn = perturb_score(ctx.score_fn, sde, *score_error)
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
        "score_error": None if score_error is None else f"{score_error[0]}:{score_error[1]}",
        "nfe_convention": "NFE budget counts every score evaluation including the final "
        "denoising step; steps = floor((NFE - 1) / evals_per_step)",
        "skipped": skipped,
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
        ``t_end``, then denoised: :func:`scoresde.moments.exact_solution_moments`."""
        if not self.gaussian:
            return None
        if kind not in self._ideal:
            self._ideal[kind] = moments.exact_solution_moments(
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
        modes = {k: v for k, v in nf.items() if k.startswith("mode_") or k == "per_mode_w2"}
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
        mean, cov = moments.exact_output_moments(
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
                nan_rec.update(
                    mode_weight_err=1.0,
                    mode_mean_err=math.inf,
                    mode_cov_err=math.inf,
                    per_mode_w2=math.inf,
                )
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
