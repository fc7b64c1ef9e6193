"""Our samplers against k-diffusion's and diffusers' on the same exact score, and against the
physical limit.

    .venv/bin/pip install -r requirements-bench.txt      # the bench extra: diffusers, POT
    .venv/bin/pip install --no-deps "k-diffusion==0.1.1.post1"   # alone: see requirements-bench.txt
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers.py            # everything, a few minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers.py --quick    # a smoke run, under a minute

Sections (``--sections``, all by default; the output is Markdown for BENCHMARKS.md):

* ``accuracy``: every sampler at NFE budgets 10, 20, 50, 100 on the harness's targets
  (:mod:`scoresde.harness`), each library on its own default time grid (``--grids all`` adds the
  others: the best per cell is what the summary compares). Gaussian targets: the exact W2 of the
  output distribution, propagated exactly (:class:`peer_adapters.BasisNoise`) for every sampler
  that is affine in its start and noise (all of the peers' are; checked per run), by Monte-Carlo
  otherwise. Mixtures: sliced W2 against a reference sample (noise floor: two exact samples) and
  the mode-weight error and the per-mode W2 (``harness.per_mode_w2``), every sampler started
  from the same ``x_T`` (common random numbers). The issue #10 goal table reports each metric as
  excess over its floor (the same metric on exact target samples).
* ``crosscheck``: each of our solvers that shares a peer's algorithm, run with the peer on the
  *same* grid, start and noise: the outputs must agree to round-off. A gap is a bug on one side.
* ``overhead``: ``wall(sample) / wall(NFE bare network calls)`` in one run, for an MLP score
  (2-D, batch 10,000) and a conv net (3x32x32, batch 64), random weights.
* ``likelihood``: the PF-ODE log-likelihood, ours (``scoresde.likelihood.log_likelihood``,
  torchdiffeq dopri5) against scipy's ``solve_ivp`` RK45 (what the score-SDE reference code
  uses) at equal tolerances: NFE, wall time and the error against the analytic log-density.

NFE is always *counted* (a wrapper around the score), never inferred: ours include the final
Tweedie step; k-diffusion's ``n`` noise levels end with a step to sigma = 0 that is the same
denoising step; diffusers' last step lands on the clean sample. Each sampler gets the largest
size whose counted NFE fits the budget (Heun-type samplers use 2 per step, so 9 of 10 or 19 of
20): the actual NFE is printed where it differs from the budget.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# benchmarks/ holds scripts named like our packages (benchmarks/bench_solvers.py): keep it off sys.path
# so that ``import solvers`` is the library, and put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import solvers  # noqa: E402
from schedules import time_grid  # noqa: E402
from scoresde import VPSDE, GaussianMixture, harness  # noqa: E402
from scoresde.accuracy import exact_solution_moments, gaussian_w2  # noqa: E402
from solvers.protocol import pf_velocity  # noqa: E402


def _load_sibling(name: str):
    """Import ``benchmarks/<name>.py`` by path (the directory is not on ``sys.path``)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pa = _load_sibling("peer_adapters")

KDIFF_SAMPLERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "lms",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
)
# (scheduler, config): every algorithm variant benchmarked on its default spacing
DIFFUSERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("DDPM", {}),
    ("DDIM", {}),
    ("EulerAncestral", {}),
    ("DPMSolverMultistep", {}),
    ("DPMSolverMultistep", {"solver_order": 3}),
    ("UniPCMultistep", {}),
    ("UniPCMultistep", {"use_karras_sigmas": True}),
    ("UniPCMultistep", {"solver_order": 3}),
    ("UniPCMultistep", {"solver_order": 3, "use_karras_sigmas": True}),
    ("DEISMultistep", {}),
)
DEFAULT_TARGETS = ("gaussian_aniso_8d", "gaussian_iso_16d", "ring_2d", "mixture_16d")
DEFAULT_NFES = (10, 20, 50, 100)

# Our solvers that implement a peer's algorithm exactly: (ours, our options, library, peer).
PAIRS: tuple[tuple[str, dict[str, Any], str, str], ...] = (
    ("ddim", {}, "k-diffusion", "euler"),
    ("ancestral", {}, "k-diffusion", "euler_ancestral"),
    ("edm_heun", {}, "k-diffusion", "heun"),
    ("dpm_solver_pp_2m", {}, "k-diffusion", "dpmpp_2m"),
    ("dpm_solver_pp_2m", {"lower_order_final": False}, "k-diffusion", "dpmpp_2m"),
    ("ddim", {}, "diffusers", "DDIM"),
    ("ancestral", {}, "diffusers", "DDPM"),
    ("ancestral", {}, "diffusers", "EulerAncestral"),
    ("dpm_solver_pp_2m", {}, "diffusers", "DPMSolverMultistep"),
    ("dpm_solver_pp_2m", {"lower_order_final": False}, "diffusers", "DPMSolverMultistep"),
    ("unipc", {}, "diffusers", "UniPCMultistep"),
)


# ------------------------------------------------------------------------------------------------
# method sets
# ------------------------------------------------------------------------------------------------
def our_methods(grids: str, names: Sequence[str] | None = None) -> list[pa.Method]:
    """Every registered fixed-step solver on its default grid (``grids="all"``: on every grid)."""
    out = []
    for name in names or solvers.available():
        spec = solvers.get(name)
        if spec.adaptive:
            continue
        choices = [spec.default_grid]
        if grids == "all":
            choices += [
                g for g in ("uniform", "quadratic", "karras", "log_snr") if g != spec.default_grid
            ]
        out += [pa.ours(name, g) for g in choices]
    return out


def peer_methods(grids: str) -> list[pa.Method]:
    """k-diffusion's samplers (Karras grid; ``all``: + exponential) and its adaptive DPM-Solver,
    and diffusers' schedulers (their default spacing; ``all``: every spacing, and Karras sigmas
    for DPM-Solver++; UniPC is listed with and without Karras sigmas)."""
    out = []
    k_grids = ("karras",) if grids != "all" else ("karras", "exponential")
    for name in KDIFF_SAMPLERS:
        out += [pa.kdiff(name, g) for g in k_grids]
    out.append(pa.kdiff_adaptive())
    for name, config in DIFFUSERS:
        out.append(pa.diffusers(name, **config))
        if grids == "all" and not config.get("use_karras_sigmas"):
            default = out[-1].grid
            for spacing in ("leading", "linspace", "trailing"):
                if spacing != default:
                    out.append(pa.diffusers(name, spacing, **config))
            if name == "DPMSolverMultistep":
                out.append(pa.diffusers(name, use_karras_sigmas=True, **config))
    return out


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
SW2_PROJECTIONS = inspect.signature(harness.sliced_w2).parameters["n_projections"].default


def sliced_w2(x: Tensor, y: Tensor, n_projections: int = SW2_PROJECTIONS, seed: int = 0) -> float:
    """``harness.sliced_w2`` for two samples of equal size, by sorting (same projections).

    ``SW2^2 = mean_theta mean_i (sort(theta . x)_i - sort(theta . y)_i)^2`` with POT's seeded
    projections: for equal sizes this is exactly what ``ot.sliced_wasserstein_distance``
    returns (checked to 1e-15), about 25 times faster at 10,000 samples.
    """
    import ot

    if x.shape != y.shape:
        return harness.sliced_w2(x, y, n_projections, seed)
    proj = torch.from_numpy(ot.sliced.get_random_projections(x.shape[1], n_projections, seed=seed))
    px = torch.sort(x.detach().cpu().to(torch.float64) @ proj, dim=0).values
    py = torch.sort(y.detach().cpu().to(torch.float64) @ proj, dim=0).values
    return float((px - py).pow(2).mean().sqrt())


def _empirical(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.to(torch.float64)
    m = x.mean(0)
    c = x - m
    return m, c.T @ c / (x.shape[0] - 1)


# ------------------------------------------------------------------------------------------------
# accuracy
# ------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One sampler at one NFE budget on one target."""

    target: str
    method: pa.Method
    budget: int
    size: int
    nfe: int
    metrics: dict[str, float]
    how: str  # "exact" or "mc"


@dataclass
class TargetRun:
    name: str
    description: str
    gaussian: bool
    floors: dict[str, float]
    cells: list[Cell] = field(default_factory=list)


def _finite(x: Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def accuracy_on_target(
    name: str,
    methods: Sequence[pa.Method],
    nfes: Sequence[int],
    n_samples: int,
    seed: int,
    log: Callable[[str], None],
) -> TargetRun:
    """Run every method at every budget on one harness target."""
    target = harness.get_target(name)
    sde = VPSDE()
    problem = pa.Problem(sde, target.score_fn(sde))
    gaussian = target.num_components == 1
    d = target.dim
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n_samples, d), generator=gen, dtype=torch.float64)
    floors: dict[str, float] = {}
    if gaussian:
        ref_m, ref_c = target.mean, target.cov
        for kind in ("ode", "sde"):
            ideal = exact_solution_moments(sde, ref_m, ref_c, kind, problem.t_end, denoise=True)
            floors[f"{kind}_floor"] = gaussian_w2(ideal[0], ideal[1], ref_m, ref_c)
        exact = target.sample(n_samples, generator=gen, dtype=torch.float64)
        floors["mc_floor"] = gaussian_w2(*_empirical(exact), ref_m, ref_c)
    else:
        ref = harness.stratified_sample(target, n_samples, gen)  # exact mode weights
        other = target.sample(n_samples, generator=gen, dtype=torch.float64)
        floors["sw2_floor"] = sliced_w2(other, ref, seed=seed)
        floors["mode_floor"] = harness.mode_errors(other, target)["mode_weight_err"]
        floors["pmw2_floor"] = harness.per_mode_w2(other, target)
    run = TargetRun(name, harness.TARGETS[name].description, gaussian, floors)

    for method in methods:
        t0 = time.perf_counter()
        for budget in nfes:
            try:
                size, nfe = pa.size_for_budget(method, budget)
            except ValueError:
                continue
            metrics: dict[str, float] = {}
            how = "mc"
            if gaussian and method.affine:
                basis = pa.BasisNoise(d, nfe + 4, float(sde.prior_std), seed)
                try:
                    out = method.run(problem, basis.x_T(), size, basis)
                    mean, cov, resid = basis.moments(out)
                    if _finite(out) and resid < 1e-6:
                        metrics["w2"] = gaussian_w2(mean, cov, ref_m, ref_c)
                        how = "exact"
                except (RuntimeError, ValueError):
                    pass  # not affine in the draws (or draws differently): Monte-Carlo below
            if gaussian and how == "mc":
                out = method.run(problem, x_T, size, pa.GaussianNoise(seed + 1))
                ok = _finite(out)
                metrics["w2"] = gaussian_w2(*_empirical(out), ref_m, ref_c) if ok else math.nan
            elif not gaussian:
                out = method.run(problem, x_T, size, pa.GaussianNoise(seed + 1))
                if _finite(out):
                    metrics["sw2"] = sliced_w2(out, ref, seed=seed)
                    metrics["mode"] = harness.mode_errors(out, target)["mode_weight_err"]
                    metrics["pmw2"] = harness.per_mode_w2(out, target)
                else:
                    metrics["sw2"] = metrics["mode"] = metrics["pmw2"] = math.nan
            run.cells.append(Cell(name, method, budget, size, nfe, metrics, how))
        log(f"  {name:18s} {method.label:36s} {method.grid:16s} {time.perf_counter() - t0:6.1f}s")
    return run


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "nan"
    return f"{v:.2e}" if v < 0.01 else f"{v:.4f}"


def _cell_text(cell: Cell | None, metric: str) -> str:
    if cell is None:
        return "-"
    text = _fmt(cell.metrics.get(metric, math.nan))
    if cell.nfe != cell.budget:
        text += f" ({cell.nfe})"
    if cell.how == "mc" and cell.metrics and "w2" in cell.metrics:
        text += " mc"
    return text


def accuracy_table(run: TargetRun, nfes: Sequence[int], metric: str) -> str:
    """Markdown: a row per (library, sampler, grid), a column per NFE budget."""
    rows: dict[tuple[str, str, str], dict[int, Cell]] = {}
    for c in run.cells:
        rows.setdefault((c.method.library, c.method.name, c.method.grid), {})[c.budget] = c
    head = "| library | sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    lines = [head, "|" + "---|" * (3 + len(nfes))]
    for (lib, name, grid), by in rows.items():
        best = {n: _best(run, n, metric, lib) for n in nfes}
        cells = []
        for n in nfes:
            t = _cell_text(by.get(n), metric)
            if by.get(n) is not None and best[n] is by.get(n):
                t = f"**{t}**"
            cells.append(t)
        lines.append(f"| {lib} | {name} | {grid} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best(
    run: TargetRun, budget: int, metric: str, library: str | None = None, peers: bool = False
) -> Cell | None:
    best = None
    for c in run.cells:
        if c.budget != budget:
            continue
        if library is not None and c.method.library != library:
            continue
        if peers and c.method.library == "scoresde":
            continue
        v = c.metrics.get(metric, math.nan)
        if not math.isfinite(v):
            continue
        if best is None or v < best.metrics[metric]:
            best = c
    return best


def _verdict_accuracy(ours: float, peer: float, noise: float) -> str:
    """``win`` / ``loss`` / ``tie``: a tie when the gap is within ``noise`` (Monte-Carlo metrics:
    the floor of two exact samples) or within 5 % (exact metrics, where every sampler converges
    to the same truncation floor)."""
    if abs(ours - peer) <= max(noise, 0.05 * max(ours, peer)):
        return "tie"
    return "win" if ours < peer else "loss"


def summary(runs: Sequence[TargetRun], nfes: Sequence[int]) -> str:
    """Our best against the best peer, per target and budget."""
    lines = [
        "| target | metric | NFE | our best | error | best peer | error | peer / ours | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        metrics = ["w2"] if run.gaussian else ["sw2", "mode", "pmw2"]
        noise = {"sw2": run.floors.get("sw2_floor", 0.0), "mode": run.floors.get("mode_floor", 0.0)}
        for metric in metrics:
            for n in nfes:
                o = _best(run, n, metric, "scoresde")
                p = _best(run, n, metric, peers=True)
                if o is None or p is None:
                    continue
                ov, pv = o.metrics[metric], p.metrics[metric]
                ratio = pv / ov if ov > 0 else math.inf
                verdict = _verdict_accuracy(ov, pv, noise.get(metric, 0.0))
                lines.append(
                    f"| {run.name} | {metric} | {n} | {o.method.name} [{o.method.grid}] | {_cell_text(o, metric)} "
                    f"| {p.method.label} [{p.method.grid}] | {_cell_text(p, metric)} | {ratio:.2f} | {verdict} |"
                )
    return "\n".join(lines)


GOALS = {10: 1 / 3, 20: 1 / 2}  # issue #10: our best excess <= this fraction of the best peer's


def goals(runs: Sequence[TargetRun], nfes: Sequence[int]) -> str:
    """Issue #10's goals: excess over the metric's floor, our best against the best peer.

    Mixtures: per-mode W2 minus its value on exact target samples of the same size (goal: at most
    1/3 of the best peer's excess at 10 NFE, 1/2 at 20). Gaussians: exact W2 minus the exact
    flow's own W2 at ``t_end`` (goal: our W2 at 10 NFE at most 1/2 of the best peer's; both the
    W2 and its excess are shown).
    """
    lines = [
        "| target | metric | NFE | our best | excess | best peer | excess | ours / peer | goal | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        metric = "w2" if run.gaussian else "pmw2"
        floor = run.floors["ode_floor"] if run.gaussian else run.floors["pmw2_floor"]
        for n in nfes:
            o = _best(run, n, metric, "scoresde")
            p = _best(run, n, metric, peers=True)
            if o is None or p is None:
                continue
            oe, pe = o.metrics[metric] - floor, p.metrics[metric] - floor
            if run.gaussian:
                ratio = o.metrics[metric] / p.metrics[metric]
                goal = 0.5 if n == 10 else None
                shown = f"{ratio:.2f} (W2), {oe / pe:.2f} (excess)"
            else:
                ratio = oe / pe if pe > 0 else math.inf
                goal = GOALS.get(n)
                shown = f"{ratio:.2f}"
            met = "-" if goal is None else ("yes" if ratio <= goal else "NO")
            lines.append(
                f"| {run.name} | {metric} | {n} | {o.method.name} [{o.method.grid}] | {_fmt(oe)} "
                f"| {p.method.label} [{p.method.grid}] | {_fmt(pe)} | {shown} "
                f"| {'-' if goal is None else f'<= {goal:.2f}'} | {met} |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# cross-check: same algorithm, same grid, same start, same noise
# ------------------------------------------------------------------------------------------------
def crosscheck(
    nfes: Sequence[int], n_samples: int, seed: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Max |ours - peer| over samples of ring_2d (nonlinear score), relative to max |x|."""
    target = harness.get_target("ring_2d")
    sde = VPSDE()
    problem = pa.Problem(sde, target.score_fn(sde))
    x_T = sde.prior_sample(
        (n_samples, target.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    available = set(solvers.available())
    rows = []
    for ours_name, opts, lib, peer in PAIRS:
        if ours_name not in available:
            rows.append({"ours": ours_name, "opts": opts, "peer": f"{lib}:{peer}", "missing": True})
            continue
        for budget in nfes:
            if lib == "k-diffusion":
                probe = pa.ours(ours_name, "karras")
                steps, _ = pa.size_for_budget(probe, budget)
                grid = time_grid("karras", sde, steps, float(sde.T), problem.t_end)

                def sigmas_fn(p: pa.Problem, n: int, grid: Tensor = grid) -> Tensor:
                    s = torch.exp(-p.sde.log_snr(grid.to(torch.float64)))
                    return torch.cat([s, s.new_zeros(1)])

                peer_m = pa.kdiff(peer, sigmas_fn=sigmas_fn)
                peer_size = len(grid)
            else:
                peer_m = pa.diffusers(peer)
                peer_size, _ = pa.size_for_budget(peer_m, budget)
                grid = diffusers_model_times(peer, problem, peer_size)
            c_ours, c_peer = pa.CountingScore(problem.score_fn), pa.CountingScore(problem.score_fn)
            x_o, _ = solvers.sample(
                sde,
                c_ours,
                x_T=x_T,
                solver=ours_name,
                grid=grid,
                t_end=float(grid[-1]),
                noise_fn=pa.GaussianNoise(seed + 7),
                **opts,
            )
            x_p = peer_m.run(
                pa.Problem(sde, c_peer, problem.t_end), x_T, peer_size, pa.GaussianNoise(seed + 7)
            )
            scale = float(x_p.abs().max())
            diff = float((x_o - x_p).abs().max()) / scale
            rows.append(
                {
                    "ours": ours_name,
                    "opts": opts,
                    "peer": f"{lib}:{peer}",
                    "budget": budget,
                    "nfe_ours": c_ours.calls,
                    "nfe_peer": c_peer.calls,
                    "rel_diff": diff,
                    "sw2_ours": harness.sliced_w2(
                        x_o,
                        target.sample(
                            n_samples,
                            generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64,
                        ),
                    ),
                    "sw2_peer": harness.sliced_w2(
                        x_p,
                        target.sample(
                            n_samples,
                            generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64,
                        ),
                    ),
                }
            )
        log(f"  crosscheck {ours_name} {opts} vs {lib}:{peer} done")
    return rows


def diffusers_model_times(name: str, problem: pa.Problem, size: int) -> Tensor:
    """The continuous times at which a diffusers scheduler calls the model (decreasing)."""
    import diffusers as dlib

    cls_name, _, defaults, _ = pa.DIFFUSERS_SCHEDULERS[name]
    sched = getattr(dlib, cls_name)(
        num_train_timesteps=1000, trained_betas=pa.diffusers_trained_betas(problem.sde), **defaults
    )
    sched.set_timesteps(size)
    eps = pa.DiffusersEps(problem, sched.alphas_cumprod)
    return torch.tensor([eps.time_of(float(k)) for k in sched.timesteps], dtype=torch.float64)


def _verdict(r: dict[str, Any]) -> str:
    """Identical up to round-off (float64 vs float64: ~1e-14; diffusers keeps float32 tables)."""
    if r["nfe_ours"] != r["nfe_peer"]:
        return "NFE differ"
    tol = 1e-12 if r["peer"].startswith("k-diffusion") else 1e-4
    return "identical" if r["rel_diff"] < tol else "DIFFERENT"


def crosscheck_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| ours | peer (same grid, start, noise) | NFE ours / peer | max abs diff / max abs x | SW2 ours | SW2 peer | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o = r["ours"] + (
            f" ({', '.join(f'{k}={v}' for k, v in r['opts'].items())})" if r["opts"] else ""
        )
        if r.get("missing"):
            lines.append(f"| {o} | {r['peer']} | not registered | - | - | - | - |")
            continue
        lines.append(
            f"| {o} | {r['peer']} | {r['nfe_ours']} / {r['nfe_peer']} | {r['rel_diff']:.1e} "
            f"| {_fmt(r['sw2_ours'])} | {_fmt(r['sw2_peer'])} | {_verdict(r)} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# overhead against the physical limit
# ------------------------------------------------------------------------------------------------
class MLPScore(nn.Module):
    """A random-weight time-conditioned MLP, ``(x, t) -> R^d`` (read as the score)."""

    def __init__(self, dim: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], 1))


class ConvScore(nn.Module):
    """A random-weight time-conditioned conv net on ``(B, 3, 32, 32)`` (read as the score)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, channels, 3, padding=1)
        self.emb = nn.Linear(1, channels)
        self.mid = nn.Conv2d(channels, channels, 3, padding=1)
        self.mid2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.act(self.inp(x) + self.emb(t[:, None].to(x.dtype))[:, :, None, None])
        h = self.act(self.mid(h))
        h = self.act(self.mid2(h))
        return self.out(h)


@dataclass
class OverheadRow:
    net: str
    method: pa.Method
    nfe: int
    ratio: float
    ratios: list[float]
    sample_s: float


def overhead(
    methods: Sequence[pa.Method], budget: int, reps: int, seed: int, log: Callable[[str], None]
) -> list[OverheadRow]:
    """``wall(sample) / wall(NFE bare network calls)``: median over ``reps`` paired runs.

    Each repetition times one sampling run and, right after it, ``NFE`` bare calls, so that both
    see the same machine load; the median of the paired ratios is reported with their spread.

    The bare calls evaluate the network ``NFE`` times on the start state (the physical limit of
    any sampler that needs ``NFE`` evaluations); the sample runs each library's sampler with its
    own noise source and the adapter that feeds it the network (:mod:`peer_adapters`), whose cost
    counts as overhead. Our solvers take the network as the score directly.
    """
    torch.manual_seed(seed)
    nets = {
        "MLP 2-D, batch 10000": (MLPScore(2, hidden=128), (10_000, 2)),
        "conv 3x32x32, batch 64": (ConvScore(channels=32), (64, 3, 32, 32)),
    }
    sde = VPSDE()
    rows = []
    for label, (net, shape) in nets.items():
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        x_T = sde.prior_sample(
            shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32
        )
        tvec = torch.full((shape[0],), 0.5, dtype=torch.float32)
        with torch.no_grad():
            for _ in range(3):
                net(x_T, tvec)  # warm-up
        for method in methods:
            try:
                size, _ = pa.size_for_budget(method, budget)
            except ValueError as err:
                log(f"  overhead: skipped ({err})")
                continue
            walls, ratios = [], []
            nfe = 0
            for _ in range(reps):
                counter = pa.CountingScore(net)
                problem = pa.Problem(sde, counter)
                t0 = time.perf_counter()
                method.run(problem, x_T, size, None)
                wall = time.perf_counter() - t0
                nfe = counter.calls
                with torch.no_grad():
                    t0 = time.perf_counter()
                    for _ in range(nfe):
                        net(x_T, tvec)
                    bare = time.perf_counter() - t0
                walls.append(wall)
                ratios.append(wall / bare)  # paired: both under the same machine load
            ratio = statistics.median(ratios)
            rows.append(OverheadRow(label, method, nfe, ratio, ratios, statistics.median(walls)))
            log(f"  overhead {label:24s} {method.label:36s} {ratio:6.3f}")
    return rows


def overhead_table(rows: Sequence[OverheadRow]) -> str:
    lines = [
        "| network | library | sampler | NFE | wall(sample) / wall(NFE bare calls) | spread | sample wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{min(r.ratios):.3f}-{max(r.ratios):.3f}"
        lines.append(
            f"| {r.net} | {r.method.library} | {r.method.name} | {r.nfe} | {r.ratio:.3f} | {spread} | {r.sample_s:.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# likelihood cost
# ------------------------------------------------------------------------------------------------
def _pf_field(sde: VPSDE, score_fn: pa.ScoreFn, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """``v = f x - g^2 score / 2`` (``solvers.protocol.pf_velocity``) and its exact divergence at
    one time (one NFE)."""
    from scoresde.likelihood import exact_divergence

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        tvec = torch.full((x.shape[0],), t, dtype=x.dtype)
        g2 = float(sde.diffusion(t)) ** 2
        v = pf_velocity(x, score_fn(x, tvec), float(sde.drift_coef(t)), g2)
        div = exact_divergence(v, x)
    return v.detach(), div.detach()


def scipy_log_likelihood(
    sde: VPSDE,
    score_fn: pa.ScoreFn,
    x: Tensor,
    rtol: float,
    atol: float,
    t_eps: float,
    prior_logp: Callable[[Tensor], Tensor],
) -> tuple[Tensor, int]:
    """The score-SDE reference recipe: ``solve_ivp(RK45)`` on the flattened ``(x, Delta)`` state
    of the whole batch, ``log p(x) = log p_T(x_T) + int_eps^T div v dt`` (exact divergence here)."""
    from scipy.integrate import solve_ivp

    shape, b = x.shape, x.shape[0]
    nfe = 0

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[:-b]).reshape(shape)
        v, div = _pf_field(sde, score_fn, xt, min(float(t), float(sde.T)))
        return np.concatenate([v.reshape(-1).numpy(), div.numpy()])

    y0 = np.concatenate([x.reshape(-1).numpy(), np.zeros(b)])
    sol = solve_ivp(fun, (t_eps, float(sde.T)), y0, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[:-b, -1]).reshape(shape)
    delta = torch.from_numpy(sol.y[-b:, -1])
    return prior_logp(z) + delta, nfe


def likelihood_cost(
    targets: Sequence[str], tols: Sequence[float], n: int, seed: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    from scoresde.likelihood import log_likelihood

    rows = []
    sde = VPSDE()
    t_eps = 1e-5
    for name in targets:
        target = harness.get_target(name)
        score = target.score_fn(sde)
        x = target.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        exact = target.log_prob_t(x, t_eps, sde)

        def prior(z: Tensor, target: GaussianMixture = target) -> Tensor:
            return target.log_prob_t(z, float(sde.T), sde)

        for tol in tols:
            for solver in ("ours", "scipy"):
                t0 = time.perf_counter()
                if solver == "ours":
                    res = log_likelihood(
                        sde, score, x, rtol=tol, atol=tol, t_eps=t_eps, prior_logp=prior
                    )
                    logp, nfe = res.logp, res.nfe
                else:
                    logp, nfe = scipy_log_likelihood(sde, score, x, tol, tol, t_eps, prior)
                wall = time.perf_counter() - t0
                err = (logp - exact).abs()
                rows.append(
                    {
                        "target": name,
                        "tol": tol,
                        "solver": solver,
                        "nfe": nfe,
                        "wall": wall,
                        "mean_err": float(err.mean()),
                        "max_err": float(err.max()),
                    }
                )
            log(f"  likelihood {name} tol={tol:g} done")
    return rows


def likelihood_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| target | rtol = atol | solver | NFE | wall (s) | wall / ours | mean abs err (nats) | max abs err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours = {(r["target"], r["tol"]): r for r in rows if r["solver"] == "ours"}
    for r in rows:
        o = ours[(r["target"], r["tol"])]
        label = (
            "scoresde.log_likelihood (dopri5)" if r["solver"] == "ours" else "scipy solve_ivp RK45"
        )
        lines.append(
            f"| {r['target']} | {r['tol']:g} | {label} | {r['nfe']} | {r['wall']:.3f} | {r['wall'] / o['wall']:.2f} "
            f"| {r['mean_err']:.1e} | {r['max_err']:.1e} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, no GPU; "
        f"k-diffusion {pa.k_diffusion_version()}, diffusers {pa.diffusers_version()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sections",
        default="accuracy,crosscheck,overhead,likelihood",
        help="comma-separated subset of accuracy,crosscheck,overhead,likelihood",
    )
    p.add_argument("--quick", action="store_true", help="smaller everything: a smoke run")
    p.add_argument(
        "--targets", nargs="+", default=list(DEFAULT_TARGETS), choices=sorted(harness.TARGETS)
    )
    p.add_argument("--nfe", nargs="+", type=int, default=list(DEFAULT_NFES))
    p.add_argument(
        "--grids",
        choices=("default", "all"),
        default="default",
        help="each library's default time grid, or every grid it offers (slower)",
    )
    p.add_argument(
        "--samples", type=int, default=10_000, help="Monte-Carlo samples per run (mixtures)"
    )
    p.add_argument("--overhead-nfe", type=int, default=20)
    p.add_argument(
        "--reps", type=int, default=5, help="timing repetitions (median of paired ratios)"
    )
    p.add_argument(
        "--solvers", nargs="+", default=None, help="our solvers (default: all fixed-step)"
    )
    p.add_argument(
        "--tuned",
        nargs="*",
        default=[],
        help="our solvers also run on their grid from scoresde.tune_grid (tuned per target and budget)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="also write the Markdown report here")
    args = p.parse_args(argv)
    if args.quick:
        args.nfe = [n for n in args.nfe if n <= 20] or [10]
        args.samples = min(args.samples, 2000)
        args.reps = 1
        args.overhead_nfe = min(args.overhead_nfe, 5)
        args.targets = [
            t for t in args.targets if t in ("gaussian_aniso_8d", "ring_2d")
        ] or args.targets[:1]
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"accuracy", "crosscheck", "overhead", "likelihood"}
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}")
    try:
        pa.load_k_diffusion_sampling()
        import diffusers  # noqa: F401
    except ImportError as err:
        print(
            f"the peers are not installed ({err}); install them with:\n  {pa.BENCH_INSTALL}",
            file=sys.stderr,
        )
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    report = [
        f"Machine: {machine()}.",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/peers.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
    ]
    ours_m = our_methods(args.grids, args.solvers) + [pa.ours_tuned(n) for n in args.tuned]
    peers_m = peer_methods(args.grids)
    if "accuracy" in sections:
        runs = []
        for name in args.targets:
            log(f"accuracy: {name}")
            runs.append(
                accuracy_on_target(name, ours_m + peers_m, args.nfe, args.samples, args.seed, log)
            )
        report.append("### Issue #10 goals: excess over the metric's floor\n")
        report.append(goals(runs, args.nfe) + "\n")
        report.append("### Accuracy: our best against the best peer\n")
        report.append(summary(runs, args.nfe) + "\n")
        for run in runs:
            floors = ", ".join(f"{k} {_fmt(v)}" for k, v in run.floors.items())
            if run.gaussian:
                report.append(f"### {run.name}: exact W2 to the target ({run.description})\n")
                report.append(
                    f"Floors: {floors} (ode/sde floor: the exact flow's own error, truncation at t_end and prior mismatch; mc: Monte-Carlo rows).\n"
                )
                report.append(accuracy_table(run, args.nfe, "w2") + "\n")
            else:
                report.append(f"### {run.name}: sliced W2 ({run.description})\n")
                report.append(f"Floors: {floors}.\n")
                report.append(accuracy_table(run, args.nfe, "sw2") + "\n")
                report.append(f"### {run.name}: mode-weight error\n")
                report.append(accuracy_table(run, args.nfe, "mode") + "\n")
                report.append(f"### {run.name}: per-mode W2\n")
                report.append(accuracy_table(run, args.nfe, "pmw2") + "\n")
    if "crosscheck" in sections:
        log("crosscheck")
        rows = crosscheck(
            [n for n in args.nfe if n <= 20] or args.nfe[:1],
            min(args.samples, 2000),
            args.seed,
            log,
        )
        report.append("### Cross-check: same algorithm, same grid, start and noise (ring_2d)\n")
        report.append(crosscheck_table(rows) + "\n")
    if "overhead" in sections:
        log("overhead")
        rows_o = overhead(
            ours_m_for_overhead(ours_m)
            + [m for m in peers_m if m.grid in ("karras",) or m.library == "diffusers"],
            args.overhead_nfe,
            args.reps,
            args.seed,
            log,
        )
        report.append(
            f"### Overhead against the physical limit (NFE budget {args.overhead_nfe}, float32, median of {args.reps} paired runs)\n"
        )
        report.append(overhead_table(rows_o) + "\n")
    if "likelihood" in sections:
        log("likelihood")
        tols = (1e-3, 1e-5, 1e-7)
        lik_targets = ["gaussian_aniso_2d", "ring_2d"]
        rows_l = likelihood_cost(lik_targets, tols, 500 if not args.quick else 100, args.seed, log)
        report.append("### Likelihood cost (exact divergence, analytic prior p_T, t_eps = 1e-5)\n")
        report.append(likelihood_table(rows_l) + "\n")
    report.append(f"Total time: {time.perf_counter() - start:.0f} s.")
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


def ours_m_for_overhead(methods: Sequence[pa.Method]) -> list[pa.Method]:
    """Our solvers on their default grids (one row each)."""
    seen, out = set(), []
    for m in methods:
        if m.name not in seen:
            seen.add(m.name)
            out.append(m)
    return out


if __name__ == "__main__":
    sys.exit(main())
