"""``scoresde check``: how accurate is each sampler? Measured against exact analytic targets.

    scoresde check                                   # the default study (about half a minute)
    scoresde check --solvers ddim dpm_solver_pp_2m --target gaussian_aniso_32d --nfe 5 10 20
    scoresde check --solvers "predictor_corrector:snr=0.05" --target ring_2d --out runs/pc
    scoresde check --solvers dpm_solver_pp_2m:grid=uniform dpm_solver_pp_2m:grid=log_snr
    scoresde check --tuned --solvers unipc dpm_solver_pp_2m --nfe 5 10 20  # tuned vs default grids
    scoresde check --list                            # solvers and targets to choose from

Every sampler runs with the exact score of the target, so the error is the sampler's own. Gaussian
targets are measured by the closed-form 2-Wasserstein distance (exact output moments for affine
solvers: no Monte-Carlo noise), mixtures by sliced W2 against a reference sample and by their
mode weights, each with its noise floor. NFE budgets include the final denoising step. Writes
``results.csv``, ``results.json``, ``error_vs_nfe.png`` and, for 2-D mixtures,
``samples_<target>.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from ._args import HelpFormatter, integer, output_dir, plain, positive_float, positive_int


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..harness import DEFAULT_NFES, DEFAULT_SOLVERS, DEFAULT_TARGETS

    p = subparsers.add_parser(
        "check",
        help="measure solver accuracy against exact targets (table, orders, plot, CSV/JSON)",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--solvers",
        nargs="+",
        metavar="NAME[:OPT=VAL,...]",
        default=None,
        help=f"registered solvers, 'all' for every fixed-step one (default: {' '.join(DEFAULT_SOLVERS)})",
    )
    p.add_argument(
        "--target",
        "--targets",
        dest="targets",
        nargs="+",
        metavar="NAME",
        default=list(DEFAULT_TARGETS),
        help=f"built-in targets or 'all' (default: {' '.join(DEFAULT_TARGETS)})",
    )
    p.add_argument(
        "--nfe",
        nargs="+",
        type=positive_int,
        default=None,
        help=f"NFE budgets, final denoising step included (default: {' '.join(map(str, DEFAULT_NFES))}; "
        "with --ckpt: 10 20 40)",
    )
    p.add_argument("--seed", type=integer, default=0, help="seeds everything (default: 0)")
    p.add_argument("--out", default="check_results", help="output directory (default: %(default)s)")
    p.add_argument("--sde", default="VPSDE", help="VPSDE, SubVPSDE or VESDE (default: %(default)s)")
    p.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help="samples per run for sample-based metrics (default: 4096; with --ckpt: 256)",
    )
    p.add_argument("--grid", default=None, help="time grid for all solvers (default: their own)")
    p.add_argument("--t-end", type=positive_float, default=None, help="truncation time")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads for torch and BLAS (default: %(default)s; the study's tensors are "
        "small, and extra threads only contend with other work on a shared machine)",
    )
    p.add_argument(
        "--tuned",
        action="store_true",
        help="also run each solver on a grid tuned by scoresde.tune_grid for each target and NFE "
        "(a '<solver> tuned' row beside each solver; a few seconds per grid)",
    )
    p.add_argument(
        "--tune-probe",
        type=positive_int,
        default=1024,
        help="probe batch size for --tuned (default: %(default)s)",
    )
    p.add_argument(
        "--score-error",
        default=None,
        metavar="KIND:SIZE",
        help="sample with an imperfect score: scale, bias or lownoise (e.g. scale:0.1); adds the "
        "exponential SDE samplers to the default solvers and reports the NFE at which "
        "stochastic samplers overtake ODE ones",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list solvers and targets, then exit")
    p.add_argument(
        "--ckpt",
        default=None,
        help="check solvers on this trained model (checkpoint or export directory) against its "
        "own converged reference runs instead of the analytic targets",
    )
    p.set_defaults(func=run)
    return p


def _parse_solver(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:opt=value,opt=value`` (values are Python literals, else strings)."""
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(
                f"solver option {item!r} in {text!r}: expected NAME:OPTION=VALUE[,OPTION=VALUE]"
            )
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return name.strip(), options


def _listing() -> str:
    import solvers

    from ..harness import TARGETS, fixed_step_solvers

    fixed = set(fixed_step_solvers())
    lines = ["solvers (name, kind, order, NFE per step, options):"]
    for name in solvers.available():
        s = solvers.get(name)
        note = "" if name in fixed else "  [adaptive: not usable at a fixed NFE budget]"
        opts = ", ".join(f"{k}={v!r}" for k, v in s.options.items()) or "-"
        lines.append(
            f"  {name:<26} {s.kind:<4} {s.order:<4g} {str(s.evals_per_step):<5} {opts}{note}"
        )
    lines.append("targets:")
    for name, info in TARGETS.items():
        lines.append(f"  {name:<26} {info.description}")
    return "\n".join(lines)


@contextlib.contextmanager
def _thread_limit(threads: int) -> Iterator[None]:
    """Limit torch's intra-op threads (and BLAS pools, via threadpoolctl when installed)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield
        else:
            with threadpool_limits(limits=threads):
                yield
    finally:
        torch.set_num_threads(before)


def _check_ckpt(args: argparse.Namespace, fail: Any) -> int:
    """``check --ckpt``: :func:`scoresde.harness.run_study` with ``model=`` (each solver against
    the model's own converged reference), printed and written like the analytic study."""
    from ..harness import run_study
    from ..training import CheckpointError

    try:
        names = None if args.solvers is None else args.solvers
        if names == ["all"]:
            from ..harness import fixed_step_solvers

            names = fixed_step_solvers()
        with _thread_limit(args.threads):
            result = run_study(
                names,
                model=args.ckpt,
                nfes=args.nfe or (10, 20, 40),
                seed=args.seed,
                n_samples=args.samples or 256,
            )
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        return fail(str(err))
    print(result.table())
    print(result.orders_table())
    os.makedirs(args.out, exist_ok=True)
    paths = [
        result.to_csv(os.path.join(args.out, "model_check.csv")),
        result.to_json(os.path.join(args.out, "model_check.json")),
    ]
    if not args.no_plot:
        try:
            paths.append(result.plot(os.path.join(args.out, "model_check.png")))
        except ImportError as err:
            print(f"(no plot: {err})")
    print("wrote " + ", ".join(paths))
    return 0


def run(args: argparse.Namespace) -> int:
    import solvers

    from ..harness import (
        DEFAULT_NFES,
        DEFAULT_SOLVERS,
        SCORE_ERROR_SOLVERS,
        TARGETS,
        crossover_table,
        crossovers,
        fixed_step_solvers,
        parse_score_error,
        run_study,
    )
    from ..sde import SDES

    def fail(msg: str) -> int:
        print(f"scoresde check: error: {msg}", file=sys.stderr)
        return 2

    if args.list:
        print(_listing())
        return 0
    if args.tuned and (args.ckpt or args.score_error is not None):
        return fail(
            "--tuned compares grids on the exact targets; it cannot be combined with "
            "--ckpt or --score-error"
        )
    if args.ckpt:
        return _check_ckpt(args, fail)
    try:
        chosen: dict[str, tuple[str, dict[str, Any]]] | list[str] | None = None
        if args.solvers is not None:
            if args.solvers == ["all"]:
                chosen = fixed_step_solvers()
            else:
                chosen = {}
                for text in args.solvers:
                    name, opts = _parse_solver(text)
                    solvers.get(name)  # unknown names list the valid ones
                    chosen[text if opts else name] = (name, opts)
        targets = list(TARGETS) if args.targets == ["all"] else args.targets
        for t in targets:
            if t not in TARGETS:
                raise ValueError(f"unknown target {t!r}; available targets: {', '.join(TARGETS)}")
        if args.sde not in SDES:
            raise ValueError(f"unknown SDE {args.sde!r}; available: {', '.join(SDES)}")
        sde = SDES[args.sde]()
        score_error = None
        if args.score_error is not None:
            score_error = parse_score_error(args.score_error)
            if chosen is None:
                chosen = [*DEFAULT_SOLVERS, *SCORE_ERROR_SOLVERS]
    except ValueError as err:
        return fail(str(err))

    if problem := output_dir(args.out):
        return fail(problem)
    start = time.perf_counter()
    try:
        with _thread_limit(args.threads):
            result = run_study(
                chosen,
                targets,
                args.nfe or list(DEFAULT_NFES),
                args.seed,
                sde=sde,
                n_samples=args.samples or 4096,
                t_end=args.t_end,
                grid=args.grid,
                progress=not args.quiet,
                score_error=score_error,
            )
            if args.tuned:
                from ._tuned import with_tuned_grids

                result = with_tuned_grids(result, sde, args.tune_probe, progress=not args.quiet)
    except ValueError as err:
        return fail(str(err))
    elapsed = time.perf_counter() - start

    for s in result.settings["skipped"]:
        print(
            f"note: {s['solver']} skipped at NFE {s['nfe']}: one step plus the denoising "
            f"evaluation needs NFE >= {s['min_nfe']}"
        )
    print(result.table())
    print(result.orders_table())
    title = None
    if score_error is not None:
        print(f"\nScore error {args.score_error}: best ODE against best stochastic sampler")
        print(crossover_table(result))
        cross = crossovers(result)
        title = f"score error {args.score_error}; stochastic overtakes ODE at NFE " + ", ".join(
            f"{t}: {'none' if b is None else b}" for t, b in cross.items()
        )
    os.makedirs(args.out, exist_ok=True)
    written = [
        result.to_csv(os.path.join(args.out, "results.csv")),
        result.to_json(os.path.join(args.out, "results.json")),
    ]
    if not args.no_plot:
        try:
            written.append(result.plot(os.path.join(args.out, "error_vs_nfe.png"), title))
            for t in result.targets:
                if any(k[1] == t for k in result.samples):
                    written.append(
                        result.plot_samples(os.path.join(args.out, f"samples_{t}.png"), t)
                    )
        except ImportError as err:
            print(f"scoresde check: no plots: {err}", file=sys.stderr)
    print(f"{len(result.records)} runs in {elapsed:.1f} s; wrote:")
    for path in written:
        print(f"  {path}")
    return 0
