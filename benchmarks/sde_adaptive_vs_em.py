"""sde_adaptive against Euler-Maruyama, and torchsde reversible Heun's step count, on ring_2d (VP).

Per-mode W2 (``scoresde.harness.per_mode_w2``, its floor printed first) with the exact score.
Rerun: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sde_adaptive_vs_em.py``
"""

from __future__ import annotations

import warnings

import torch

import solvers
from scoresde import VPSDE
from scoresde.harness import get_target, per_mode_w2, stratified_sample


def main() -> None:
    target, sde = get_target("ring_2d"), VPSDE()
    score, n = target.score_fn(sde), 4000

    def run(solver: str, size: int = n, **kw):
        x, st = solvers.sample(
            sde, score, shape=(size, 2), solver=solver, dtype=torch.float64,
            generator=torch.Generator().manual_seed(0), **kw,
        )  # fmt: skip
        return per_mode_w2(x, target), st

    floor = sum(
        per_mode_w2(stratified_sample(target, n, torch.Generator().manual_seed(100 + k)), target)
        for k in range(4)
    )
    print(f"floor (n={n}) {floor / 4:.4f}")
    for opts in (dict(rtol=0.05, atol=0.0078), dict(rtol=0.02, atol=0.003)):
        w2, st = run("sde_adaptive", **opts)
        print(f"sde_adaptive {opts}: NFE {st.nfe}, accepted {st.accepted:.1f}, "
              f"rejected {st.rejected:.1f} per sample, W2 {w2:.4f}")  # fmt: skip
    for steps in (25, 50, 100, 200, 400):
        w2, st = run("euler_maruyama", steps=steps)
        print(f"euler_maruyama: NFE {st.nfe}, W2 {w2:.4f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for steps in (250, 500, 1000, 2000, 4000):
            w2, _ = run("torchsde_reversible_heun", size=2000, steps=steps)
            print(f"torchsde_reversible_heun (2,000 samples): {steps} steps, W2 {w2:.4f}")


if __name__ == "__main__":
    main()
