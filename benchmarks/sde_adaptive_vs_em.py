"""``sde_adaptive`` against Euler-Maruyama: the NFE each needs to reach a given per-mode W2.

VP SDE, exact score, per-mode W2 (``scoresde.harness.per_mode_w2``). The reverse-SDE floor of a
target is the per-mode W2 of ``--samples`` exact samples (``stratified_sample``, mean over 4
seeds): what a perfect sampler scores at this sample count. For each target the script runs
Euler-Maruyama on its default (uniform) grid at several step counts and ``sde_adaptive`` (each
listed variant) at tolerances ``k * (rtol, atol)`` of its defaults, all from the same ``x_T``
and generator seed, every run with the final denoising step (counted in NFE). It then
interpolates, on log-log axes between the two runs that bracket it, the NFE each needs to reach
``--goal`` times the floor, and prints the ratio to Euler-Maruyama's (the #11 goal: <= 1/3);
beside it the cheapest run at or below that error (for ``sde_adaptive`` an upper bound on its
NFE that needs no interpolation: above ~4x its default tolerances a single step can span a whole
SNR segment, so the error jumps, and interpolating across that jump means little).
``--diagnose`` first prints where the NFE goes on the first target: batch attempts against
per-sample attempts, rejections, the log-SNR of the accepted steps, and fixed-step improved Euler
against Euler-Maruyama at equal NFE.

``heldout_mixture_8d`` is benchmarks/tuning.py's random mixture; its results were seen while
choosing ``sde_adaptive``'s pair, so ``fresh_mixture_12d`` (the same recipe, 12-D, five modes,
another seed) was drawn only for the final tables. ``--reversible-heun`` adds the torchsde reversible-Heun step-count table of the
previous session (ring_2d, 2,000 samples).

Rerun (about 20 min at 20,000 samples and 40 min at 100,000 on one core of a loaded machine;
BENCHMARKS.md lists the exact runs behind its table):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sde_adaptive_vs_em.py --samples 20000 \
        --diagnose --targets ring_2d mixture_16d heldout_mixture_8d
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sde_adaptive_vs_em.py --samples 100000 \
        --targets heldout_mixture_8d mixture_16d ring_2d --variants exp/batch \
        --scales 5.66 4 2.83 2 1.41 1 --em-steps 50 100 200 400 800
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuning import heldout_mixture, target_by_name  # noqa: E402

import solvers  # noqa: E402
from scoresde import VPSDE  # noqa: E402
from scoresde.harness import per_mode_w2, stratified_sample  # noqa: E402

# a second held-out target, drawn by the same recipe with another seed and shape only for the
# final tables (heldout_mixture_8d's results were seen while choosing sde_adaptive's pair)
FRESH = {"fresh_mixture_12d": lambda: heldout_mixture(d=12, k=5, seed=20261128)}


def target_of(name: str):
    return FRESH[name]() if name in FRESH else target_by_name(name)


VARIANTS = {
    "exp/batch": {"method": "exp", "control": "batch"},
    "em/batch": {"method": "em", "control": "batch"},
    "em/sample": {"method": "em", "control": "sample"},
}


def nfe_at(points: list[tuple[int, float]], level: float) -> tuple[float | None, str]:
    """NFE where the error first falls to ``level``: log-log interpolation between the last run
    above and the first run at or below it (runs sorted by NFE). ``(None, ">")`` if no run gets
    there, ``(nfe, "<=")`` if the cheapest run is already below."""
    pts = sorted(points)
    for i, (nfe, err) in enumerate(pts):
        if err <= level:
            if i == 0:
                return float(nfe), "<="
            n0, e0 = pts[i - 1]
            w = math.log(e0 / level) / math.log(e0 / err)
            return math.exp(math.log(n0) + w * math.log(nfe / n0)), "="
    return None, ">"


def study(name: str, n: int, em_steps: list[int], scales: list[float], variants: list[str],
          goal: float, seed: int) -> dict:  # fmt: skip
    target, sde = target_of(name), VPSDE()
    score, d = target.score_fn(sde), target.means.shape[1]
    floor = (
        sum(
            per_mode_w2(
                stratified_sample(target, n, torch.Generator().manual_seed(100 + k)), target
            )
            for k in range(4)
        )
        / 4
    )
    print(f"\n## {name} (d={d}), {n} samples, floor {floor:.4f}, goal {goal} x floor = "
          f"{goal * floor:.4f}")  # fmt: skip
    print("| sampler | setting | NFE | accepted | rejected | per-mode W2 | / floor |")
    print("|---|---|---|---|---|---|---|")

    def run(solver: str, **kw) -> tuple[float, solvers.SampleStats]:
        x, st = solvers.sample(
            sde, score, shape=(n, d), solver=solver, dtype=torch.float64,
            generator=torch.Generator().manual_seed(seed), **kw,
        )  # fmt: skip
        return per_mode_w2(x, target), st

    curves: dict[str, list[tuple[int, float]]] = {"euler_maruyama": []}
    for steps in em_steps:
        w2, st = run("euler_maruyama", steps=steps)
        curves["euler_maruyama"].append((st.nfe, w2))
        print(f"| euler_maruyama | {steps} steps | {st.nfe} | | | {w2:.4f} | {w2 / floor:.2f} |")
    defaults = solvers.get("sde_adaptive").options
    for v in variants:
        curves[v] = []
        for k in scales:
            tol = {"rtol": k * defaults["rtol"], "atol": k * defaults["atol"]}
            w2, st = run("sde_adaptive", **VARIANTS[v], **tol)
            curves[v].append((st.nfe, w2))
            print(f"| sde_adaptive {v} | {k:g} x (rtol, atol) | {st.nfe} | {st.accepted:.1f} | "
                  f"{st.rejected:.1f} | {w2:.4f} | {w2 / floor:.2f} |")  # fmt: skip
    level = goal * floor
    em_nfe, em_rel = nfe_at(curves["euler_maruyama"], level)
    print(f"\nNFE to reach per-mode W2 {level:.4f} ({goal} x floor): interpolated, and the "
          "cheapest run at or below it (an upper bound that needs no interpolation)")  # fmt: skip
    print("| sampler | NFE (interpolated) | / Euler-Maruyama | cheapest run at or below | "
          "/ Euler-Maruyama |")  # fmt: skip
    print("|---|---|---|---|---|")
    out = {"floor": floor, "level": level, "nfe": {}}
    for key, pts in curves.items():
        nfe, rel = nfe_at(pts, level)
        below = min((p for p, e in pts if e <= level), default=None)
        out["nfe"][key] = (nfe, rel, below)
        shown = "never" if nfe is None else f"{rel if rel != '=' else ''}{nfe:.0f}"
        ratio = "" if nfe is None or em_nfe is None else f"{nfe / em_nfe:.2f}"
        bound = "" if below is None or em_nfe is None else f"<= {below / em_nfe:.2f}"
        if key == "euler_maruyama":
            below, bound = "", ""
        print(f"| {key} | {shown} | {ratio} | {'none' if below is None else below} | {bound} |")
    if em_rel != "=":
        print(f"(Euler-Maruyama's NFE is {em_rel} its bracket: widen --em-steps)")
    return out


def stochastic_heun(sde, score, x: torch.Tensor, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Fixed-step improved Euler (sde_adaptive's accepted update) on the uniform grid, then
    Tweedie's denoising step, as ``sample`` ends Euler-Maruyama: ``2 steps + 1`` NFE."""
    grid = torch.linspace(sde.T, sde.default_t_end, steps + 1, dtype=torch.float64).tolist()
    full = lambda v: torch.full((x.shape[0],), v, dtype=x.dtype)  # noqa: E731

    def drift(y: torch.Tensor, t: float) -> torch.Tensor:
        return float(sde.drift_coef(t)) * y - float(sde.diffusion(t)) ** 2 * score(y, full(t))

    for t, s in zip(grid[:-1], grid[1:], strict=True):
        dt = t - s
        dw = math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        g_t, g_s = float(sde.diffusion(t)), float(sde.diffusion(s))
        x1 = x - dt * drift(x, t) + g_t * dw
        x = 0.5 * (x1 + x - dt * drift(x1, s) + g_s * dw)
    alpha, sigma = (float(v) for v in sde.marginal(grid[-1]))
    return (x + sigma**2 * score(x, full(grid[-1]))) / alpha


def diagnose(name: str, n: int, seed: int) -> None:
    """Where the NFE goes: batch iterations vs per-sample attempts, rejections, where in
    log-SNR the accepted steps lie, and fixed-step improved Euler vs Euler-Maruyama."""
    target, sde = target_of(name), VPSDE()
    score, d = target.score_fn(sde), target.means.shape[1]
    print(f"\n## Where the NFE goes: {name}, {n} samples, default tolerances")
    print("| variant | exponent | NFE | batch attempts | attempts per sample (mean) | "
          "rejected share | accepted steps at log-SNR < -2 / -2..0 / 0..2 / > 2 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    edges = (-2.0, 0.0, 2.0)
    for v, exponent in (
        ("em/sample", 0.9),
        ("em/sample", 2 / 3),
        ("em/batch", 2 / 3),
        ("exp/batch", 2 / 3),
    ):
        times: list[float] = []
        _, st = solvers.sample(
            sde, score, shape=(n, d), solver="sde_adaptive", dtype=torch.float64,
            generator=torch.Generator().manual_seed(seed), exponent=exponent, **VARIANTS[v],
            callback=lambda i, t, x, times=times: times.append(t),
        )  # fmt: skip
        attempts = st.accepted + st.rejected
        bins = [0, 0, 0, 0]
        if VARIANTS[v]["control"] == "batch":  # the callback sees each accepted batch step once
            lam = sde.log_snr(torch.tensor(times, dtype=torch.float64)).tolist()
            for lv in lam:
                bins[sum(lv > e for e in edges)] += 1
        shown = " / ".join(map(str, bins)) if any(bins) else "(per sample)"
        iters = (
            len(times) if VARIANTS[v]["control"] == "sample" else round(attempts)
        )  # sample: one call per attempt
        print(f"| {v} | {exponent:.3g} | {st.nfe} | {iters} | {attempts:.1f} | "
              f"{st.rejected / attempts:.2f} | {shown} |")  # fmt: skip
    print("\nFixed steps on the uniform grid (final denoising step included):")
    print("| NFE | Euler-Maruyama W2 | improved Euler (stochastic Heun) W2 |")
    print("|---|---|---|")
    for nfe in (25, 51, 101, 201):
        x_t = sde.prior_sample((n, d), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)  # fmt: skip
        x_em, _ = solvers.sample(sde, score, x_T=x_t, solver="euler_maruyama", steps=nfe - 1,
                                 generator=torch.Generator().manual_seed(seed + 1))  # fmt: skip
        x_h = stochastic_heun(
            sde, score, x_t, (nfe - 1) // 2, torch.Generator().manual_seed(seed + 1)
        )
        print(f"| {nfe} | {per_mode_w2(x_em, target):.4f} | {per_mode_w2(x_h, target):.4f} |")


def reversible_heun() -> None:
    target, sde = target_by_name("ring_2d"), VPSDE()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for steps in (250, 500, 1000, 2000, 4000):
            x, _ = solvers.sample(
                sde, target.score_fn(sde), shape=(2000, 2), solver="torchsde_reversible_heun",
                steps=steps, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            w2 = per_mode_w2(x, target)
            print(f"torchsde_reversible_heun (ring_2d, 2,000 samples): {steps} steps, W2 {w2:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", nargs="+", default=["ring_2d"])
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--em-steps", type=int, nargs="+", default=[25, 50, 100, 200, 400, 800])
    ap.add_argument("--scales", type=float, nargs="+", default=[8, 5.66, 4, 2.83, 2, 1.41, 1, 0.5])
    ap.add_argument(
        "--variants", nargs="+", default=["exp/batch", "em/batch"], choices=list(VARIANTS)
    )
    ap.add_argument("--goal", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reversible-heun", action="store_true")
    ap.add_argument("--diagnose", action="store_true", help="where the NFE goes (first target)")
    args = ap.parse_args()
    if args.diagnose:
        diagnose(args.targets[0], args.samples, args.seed)
    for name in args.targets:
        study(name, args.samples, args.em_steps, args.scales, args.variants, args.goal, args.seed)
    if args.reversible_heun:
        reversible_heun()


if __name__ == "__main__":
    main()
