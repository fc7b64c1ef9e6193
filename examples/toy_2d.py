"""A 2-D toy end to end: train a score network, sample it with three solvers, plot and measure.

    python examples/toy_2d.py                 # about a minute on a laptop CPU
    python examples/toy_2d.py --data 8gaussians --steps 5000 --out runs/toy_8g
    python examples/toy_2d.py --quick         # a few seconds: the smoke test

1. Train an MLP score model (v-prediction) on the ``mixture`` data set (three anisotropic,
   unequally weighted Gaussian modes) by denoising score matching with
   :class:`scoresde.training.Trainer`; the
   checkpoint lands in ``--out`` and is loaded back with ``load_pretrained`` (EMA weights).
   Re-running with the same ``--out`` reuses a finished checkpoint.
2. Sample it with an SDE solver (Euler-Maruyama), a first-order ODE solver (DDIM) and a
   second-order multistep ODE solver (DPM-Solver++ 2M).
3. Because the data are an analytic mixture, every solver also runs with the *exact* score: the
   gap between the two rows of a solver is the network's error, the gap between the exact-score
   row and the noise floor is the solver's own. Metrics: sliced W2 against a reference sample
   and the mode-weight error (see :mod:`scoresde.harness`).
4. ``samples.png``: each solver's samples over the exact density's contours.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import scoresde
from scoresde.data import get_dataset
from scoresde.harness import mode_errors, sliced_w2
from scoresde.nets import MLP, ScoreModel
from scoresde.training import Trainer, load_pretrained

# (solver, steps): an SDE solver, a first-order and a second-order ODE solver
SOLVERS = [("euler_maruyama", 500), ("ddim", 50), ("dpm_solver_pp_2m", 20)]
QUICK_SOLVERS = [("euler_maruyama", 20), ("ddim", 10), ("dpm_solver_pp_2m", 5)]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mixture", help="a 2-D data set (mixture, 8gaussians...)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--n", type=int, default=4000, help="samples per solver")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default runs/toy_2d)")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.n = min(args.steps, 60), min(args.n, 500)
    out = args.out or ("runs/toy_2d_quick" if args.quick else "runs/toy_2d")
    plan = QUICK_SOLVERS if args.quick else SOLVERS

    # -- 1. train ---------------------------------------------------------------------------------
    data = get_dataset(args.data)
    if not data.info.is_2d:
        parser.error(f"--data {args.data!r} is not 2-D")
    sde = scoresde.VPSDE()
    torch.manual_seed(args.seed)  # network initialisation
    net = MLP(2, hidden=32 if args.quick else 128, depth=2 if args.quick else 3)
    # v-prediction: eps = sigma x + alpha v (VP) carries the score's linear growth in x, so the
    # model stays right in the prior's tails where there is little training data. An MLP
    # predicting eps directly saturates there, and ODE solvers (which, unlike SDE solvers, never
    # correct a trajectory) then carry about 2% of the samples far away.
    model = ScoreModel(net, sde, prediction="v", sigma_data=data.info.sigma_data)
    trainer = Trainer(
        model,
        data,
        out_dir=out,
        steps=args.steps,
        batch_size=256,
        lr=1e-3,
        warmup=min(100, args.steps // 10),
        ema_decay=0.99 if args.quick else 0.999,
        seed=args.seed,
        device="cpu",
        ckpt_every=0,
        log_every=max(1, min(100, args.steps)),
        progress=not args.quick,
    )
    start = time.perf_counter()
    try:
        fit = trainer.fit(resume=True)  # continues, or reuses, a run already in `out`
        steps_done, loss = trainer.step, fit.get("loss", float("nan"))  # nan: nothing to train
    finally:
        trainer.close()
    print(f"trained {steps_done} steps in {time.perf_counter() - start:.1f} s, loss {loss:.4f}")
    sde, _, score_fn, _ = load_pretrained(fit["checkpoint"], device="cpu")  # EMA weights

    # -- 2. sample with three solvers, with the network and with the exact score ---------------
    target = getattr(data, "target", None)  # analytic data sets know their exact density
    exact_score = None if target is None else target.score_fn(sde)
    reference = data.reference(args.n, seed=args.seed + 1)
    # The noise floor: the same distance for exact samples of the data. It fluctuates a lot from
    # draw to draw (W2 feels every mode's sample share), so report its mean and range.
    floors = [
        sliced_w2(data.reference(args.n, seed=args.seed + 2 + k), reference) for k in range(5)
    ]
    floor = sum(floors) / len(floors)
    results: dict[str, dict[str, float]] = {}
    panels = {}
    print(
        f"\nsliced W2 to {args.n} reference points (noise floor {floor:.3f}, "
        f"{min(floors):.3f}-{max(floors):.3f} over 5 exact samples), mode-weight error"
    )
    print(f"{'solver':<18}{'NFE':>5}{'SW2 net':>10}{'SW2 exact':>11}{'modes net':>11}{'exact':>8}")
    for solver, steps in plan:
        row: dict[str, float] = {}
        runs = {"net": score_fn} | ({} if exact_score is None else {"exact": exact_score})
        for which, fn in runs.items():
            g = torch.Generator().manual_seed(args.seed)  # same prior draw and noise for both
            x, stats = scoresde.sample(
                sde, fn, shape=(args.n, 2), solver=solver, steps=steps, generator=g
            )
            row[f"sw2_{which}"] = sliced_w2(x, reference)
            if target is not None:
                row[f"modes_{which}"] = mode_errors(x, target)["mode_weight_err"]
            row["nfe"] = stats.nfe
            if which == "net":
                panels[f"{solver} ({stats.nfe} NFE)"] = x
        results[solver] = row
        print(
            f"{solver:<18}{row['nfe']:>5}{row['sw2_net']:>10.3f}{row.get('sw2_exact', float('nan')):>11.3f}"
            f"{row.get('modes_net', float('nan')):>11.3f}{row.get('modes_exact', float('nan')):>8.3f}"
        )
    results["floor"] = {"sw2": floor, "sw2_min": min(floors), "sw2_max": max(floors)}

    # -- 3. plot --------------------------------------------------------------------------------
    try:
        from scoresde.plotting import save_scatter

        path = save_scatter(
            panels,
            os.path.join(out, "samples.png"),
            reference=None if target is not None else reference,
            density_fn=target,
            title=f"{args.data}: samples of the trained model, three solvers",
        )
        print(f"\nwrote {path}")
    except ImportError as err:  # matplotlib is the optional 'plot' extra
        print(f"no plot: {err}")
    return results


if __name__ == "__main__":
    main()
