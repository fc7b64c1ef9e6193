"""Does ``tune_grid``'s probe objective rank grids for a stochastic sampler? (heldout, 20 NFE)

For ``sa_solver`` at 20 NFE on ``heldout_mixture_8d`` (VP, exact score) and a family of warped
log-SNR grids (power ``p``, ``t_end = 1e-3 f``), prints the per-mode W2 excess over its floor on
20,000 fresh samples beside ``tune_grid``'s objective (sliced W2^2 to an ``ode_adaptive``
reference from the same probe ``x_T``, principal axes + 128 random directions) on two probes of
2,048 and one of 8,192 samples. If the objective's spread across grids is below its spread across
probe seeds, the tuned grid is picked by probe noise.

Rerun (about 5 min on one core): ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sde_tuning_objective.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tuning import target_by_name  # noqa: E402

import solvers  # noqa: E402
from scoresde import VPSDE  # noqa: E402
from scoresde.harness import per_mode_w2, stratified_sample  # noqa: E402
from scoresde.tuning import _directions, sliced_w2_sq, warped_log_snr_grid  # noqa: E402


def main() -> None:
    sde, target = VPSDE(), target_by_name("heldout_mixture_8d")
    score, d, solver, steps = target.score_fn(sde), 8, "sa_solver", 19  # 19 steps + denoise
    T, t_ref = float(sde.T), float(sde.default_t_end)
    floor = (
        sum(
            per_mode_w2(
                stratified_sample(target, 20000, torch.Generator().manual_seed(100 + k)), target
            )
            for k in range(4)
        )
        / 4
    )
    x_eval = sde.prior_sample((20000, d), generator=torch.Generator().manual_seed(5),
                              dtype=torch.float64)  # fmt: skip
    probes = []
    for n, seed in ((2048, 1), (2048, 2), (8192, 3)):
        x = sde.prior_sample((n, d), generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)  # fmt: skip
        ref = solvers.sample(sde, score, x_T=x, solver="ode_adaptive", t_end=t_ref, rtol=1e-6,
                             atol=1e-6).samples  # fmt: skip
        probes.append(
            (x, ref, _directions(ref, 128, torch.Generator().manual_seed(seed + 10)), seed)
        )
    print(f"heldout_mixture_8d, {solver} at 20 NFE; per-mode W2 floor {floor:.4f} (20,000)")
    print("| p | t_end / 1e-3 | per-mode W2 excess (20,000) | objective, probe 2,048 seed 1 | "
          "2,048 seed 2 | 8,192 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for p in (0.35, 0.5, 0.7, 1.0):
        for f in (1, 3, 9):
            grid = warped_log_snr_grid(sde, steps, T, t_ref * f, p)
            out = solvers.sample(sde, score, x_T=x_eval.clone(), solver=solver, grid=grid,
                                 generator=torch.Generator().manual_seed(0)).samples  # fmt: skip
            objs = [
                sliced_w2_sq(
                    solvers.sample(
                        sde,
                        score,
                        x_T=x,
                        solver=solver,
                        grid=grid,
                        generator=torch.Generator().manual_seed(seed + 2),
                    ).samples,
                    ref,
                    dirs,
                )  # fmt: skip
                for x, ref, dirs, seed in probes
            ]
            print(f"| {p} | {f} | {per_mode_w2(out, target) - floor:.4f} | "
                  + " | ".join(f"{v:.5f}" for v in objs) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
