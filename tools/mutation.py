"""Mutation testing of ``schedules/`` and ``solvers/`` with mutmut 3 (see TESTING.md).

    .venv/bin/pip install -r requirements-mutation.txt
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python tools/mutation.py GROUP [GROUP ...]
    .venv/bin/python tools/mutation.py --summary GROUP ...     # tables only, from the last run

Each group (see ``GROUPS``) mutates some modules and runs its own test selection, in its own
scratch copy of the repository (``--workdir``, default ``$TMPDIR/scoresde-mutation/GROUP``), so a
group's results are usable as soon as it finishes and its mutmut cache survives reruns (only
mutants of functions that changed are run again).

Two things differ from a bare ``mutmut run`` in the repository:

* mutmut 3 does not mutate decorated functions, which would leave every registered solver
  (``@register(...)`` / ``@_register(...)``) unmutated. In the scratch copy those decorators are
  rewritten as the equivalent call after the function, ``name = register(...)(name)``, so the
  solvers' update rules are mutated too. Nothing else in the copy changes.
* The test selection is per group (``pytest_add_cli_args_test_selection`` is written into the
  copy's pyproject.toml): for each mutant mutmut runs only the selected tests that executed the
  mutated function, fastest first, stopping at the first failure.

The score counted here is killed / all mutants generated in the group's modules: "no tests"
(no selected test executes the function) and "survived" both count against it; a timeout counts
as killed (mutmut's own convention), and the table shows timeouts separately.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (mutmut name patterns, test selection). Every file of schedules/ and solvers/ is in
# exactly one group (checked by tests/test_mutants_tooling.py).
# Tests of solvers/ (test_guidance.py's inpainting tests are left out: test_architecture.py
# checks the before_step hook on every solver in a fraction of the time). The sde_adaptive
# cases of test_solvers.py take 35 of its 50 s, so only the group that mutates it runs them.
SOLVER_TESTS = [
    "tests/test_solvers.py",
    "tests/test_sde_solvers.py",
    "tests/test_multistep.py",
    "tests/test_solver_orders.py",
    "tests/test_solvers_convergence.py",
    "tests/test_architecture.py",
    "tests/test_hardening.py",
    "tests/test_mutants_solvers.py",
]

# the sde_adaptive solver's cases (a bare "sde_adaptive" would also match "torchsde_adaptive")
NOT_SDE_ADAPTIVE = "sde_adaptive and not torchsde_adaptive"

GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "schedules": (
        ["schedules.*"],
        [
            "tests/test_schedules.py",
            "tests/test_schedule_endpoints.py",
            "tests/test_sde.py",
            "tests/test_adapters.py",
            "tests/test_losses.py",
            "tests/test_mutants_schedules.py",
        ],
    ),
    # the sampling machinery every solver runs through
    "solvers-core": (
        ["solvers.sampling.*", "solvers.resolve.*", "solvers.registry.*", "solvers.protocol.*"],
        # every test runs sample(): without the per-solver accuracy tests a surviving mutant
        # costs ~10 s instead of ~30 s; the order tests still run every solver
        SOLVER_TESTS + ["-k", f"not ({NOT_SDE_ADAPTIVE}) and not gaussian_target and not mixture"],
    ),
    "solvers-ode": (
        ["solvers.ode_solvers.*", "solvers.exponential.*", "solvers.multistep.*"],
        SOLVER_TESTS + ["-k", f"not ({NOT_SDE_ADAPTIVE})"],
    ),
    "solvers-sde": (
        ["solvers.sde_solvers.*", "solvers.torchsde_solvers.*"],
        SOLVER_TESTS + ["-k", f"not ({NOT_SDE_ADAPTIVE})"],
    ),
    "solvers-sde2": (["solvers.exponential_sde.*", "solvers.restart.*"], SOLVER_TESTS),
    # sde_adaptive's accuracy cases take 35 s of test_solvers.py: its group runs its own tests
    # (every registry-driven case carries the solver's name in its id)
    "solvers-sde-adaptive": (
        ["solvers.sde_adaptive.*"],
        [
            "tests/test_sde_solvers.py",
            "tests/test_solver_orders.py",
            "tests/test_architecture.py",
            "tests/test_hardening.py",
            "tests/test_mutants_solvers.py",
            "-k",
            "sde_adaptive and not torchsde_adaptive",
        ],
    ),
}

DECORATORS = {"register", "_register"}
EXIT_STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    None: "not checked",
}


def undecorate(source: str) -> str:
    """Rewrite module-level ``@register(...)`` / ``@_register(...)`` decorators as calls after the
    function (``f = register(...)(f)``), which registers the same function the same way."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.decorator_list:
            continue
        decs = node.decorator_list
        if not all(
            isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id in DECORATORS
            for d in decs
        ):
            continue
        call = node.name
        for d in reversed(decs):
            call = f"{ast.get_source_segment(source, d)}({call})"
        edits.append((decs[0].lineno, node.lineno, node.end_lineno, f"{node.name} = {call}\n"))
    for first, def_line, end, stmt in reversed(edits):
        lines.insert(end, stmt)
        del lines[first - 1 : def_line - 1]
    return "".join(lines)


def sync_copy(workdir: Path, selection: list[str]) -> None:
    """Copy the tracked and untracked non-ignored files into ``workdir`` (unchanged files keep
    their mtime, so mutmut's cache stays valid), undecorate solvers/, set the test selection."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    workdir.mkdir(parents=True, exist_ok=True)
    for rel in files:
        src = ROOT / rel
        if not src.is_file():
            continue
        data = src.read_bytes()
        if rel.startswith("solvers/") and rel.endswith(".py"):
            data = undecorate(data.decode()).encode()
        if rel == "pyproject.toml":
            data = set_selection(data.decode(), selection).encode()
        dst = workdir / rel
        if dst.is_file() and dst.read_bytes() == data:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)


def set_selection(pyproject: str, selection: list[str]) -> str:
    out, skipping = [], False
    for line in pyproject.splitlines(keepends=True):
        if line.startswith("pytest_add_cli_args_test_selection"):
            out.append(f"pytest_add_cli_args_test_selection = {json.dumps(selection)}\n")
            skipping = not line.rstrip().endswith("]")
            continue
        if skipping:
            skipping = not line.strip().startswith("]")
            continue
        out.append(line)
    return "".join(out)


def results(
    workdir: Path, patterns: list[str], sampled: set[str] | None = None
) -> dict[str, Counter]:
    """``{source file: Counter(status)}`` from mutmut's ``.meta`` files in ``workdir`` (with
    ``sampled``: of the sampled mutants only, plus ``"generated"``, every mutant of the file)."""
    from fnmatch import fnmatch

    per_file: dict[str, Counter] = {}
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        rel = str(meta.relative_to(workdir / "mutants"))[: -len(".meta")]
        module = rel[: -len(".py")].replace("/", ".")
        if not any(fnmatch(module + ".x", p) for p in patterns):
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        c = Counter(
            EXIT_STATUS.get(v, "suspicious")
            for k, v in codes.items()
            if sampled is None or k in sampled
        )
        if sampled is not None:
            c["generated"] = len(codes)
        per_file[rel] = c
    return per_file


def survivors(workdir: Path, patterns: list[str], sampled: bool = False) -> list[tuple[str, str]]:
    """Mutants not killed (of the sample, if ``sampled``: unsampled ones stay "not checked")."""
    from fnmatch import fnmatch

    chosen = None
    if sampled and (workdir / "sampled.json").is_file():
        chosen = set(json.loads((workdir / "sampled.json").read_text()))

    out = []
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = EXIT_STATUS.get(code, "suspicious")
            if chosen is not None and name not in chosen:
                continue
            if status not in ("killed", "timeout") and any(fnmatch(name, p) for p in patterns):
                out.append((name, status))
    return out


def statuses(workdir: Path) -> dict[str, str]:
    out = {}
    for meta in (workdir / "mutants").rglob("*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = EXIT_STATUS.get(code, "suspicious")
    return out


def generate(workdir: Path, mutmut: str) -> None:
    """Write the mutants (mutmut's first phase) without running anything."""
    code = (
        "import os; from mutmut.__main__ import copy_src_dir, create_mutants; "
        "os.makedirs('mutants', exist_ok=True); copy_src_dir(); create_mutants(1)"
    )
    python = str(Path(mutmut).parent / "python")
    subprocess.run([python, "-c", code], cwd=workdir, check=True, capture_output=True)


def sample_names(workdir: Path, patterns: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded random ``fraction`` of each file's mutants (at least one per file)."""
    import math
    import random
    from fnmatch import fnmatch

    rng = random.Random(seed)
    names = []
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        mine = sorted(
            n
            for n in json.loads(meta.read_text())["exit_code_by_key"]
            if any(fnmatch(n, p) for p in patterns)
        )
        if mine:
            names += rng.sample(mine, max(1, math.ceil(fraction * len(mine))))
    return names


def diff(workdir: Path, name: str) -> str:
    """The unified diff of mutant ``name`` (what ``mutmut show`` prints), in-process."""
    from mutmut.__main__ import find_mutant, get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return get_diff_for_mutant(name, path=find_mutant(name).path)
    finally:
        os.chdir(cwd)


def table(per_file: dict[str, Counter], sampled: set[str] | None = None) -> str:
    """Markdown table per file. With a sample: the counts are of the sampled mutants, the score
    is theirs with a 95% Wilson interval, and the total weights each file by its mutant count."""
    cols = ["killed", "timeout", "survived", "no tests", "not checked", "other"]
    head = "| file | mutants | " + ("sampled | " if sampled is not None else "")
    rows = [
        head + " | ".join(cols) + " | score |",
        "|---" * (len(cols) + 3 + (sampled is not None)) + "|",
    ]
    total: Counter = Counter()
    weighted = [0.0, 0]
    for rel, c in sorted(per_file.items()):
        c = Counter(c)
        c["other"] = sum(v for k, v in c.items() if k not in cols and k != "generated")
        total.update({k: c[k] for k in [*cols, "generated"]})
        rows.append(_row(rel, c, cols, sampled is not None))
        n = sum(c[k] for k in cols) - c["not checked"]
        if sampled is not None and n:
            weighted[0] += c["generated"] * (c["killed"] + c["timeout"]) / n
            weighted[1] += c["generated"]
    rows.append(_row("**total**", total, cols, sampled is not None))
    if sampled is not None and weighted[1]:
        rows.append(
            f"\nestimated score over all {weighted[1]} mutants: {weighted[0] / weighted[1]:.1%}"
        )
    return "\n".join(rows)


def _row(name: str, c: Counter, cols: list[str], sampled: bool = False) -> str:
    n = sum(c[k] for k in cols)
    if not sampled:
        score = (c["killed"] + c["timeout"]) / n if n else float("nan")
        return f"| {name} | {n} | " + " | ".join(str(c[k]) for k in cols) + f" | {score:.1%} |"
    m = n - c["not checked"]
    p = (c["killed"] + c["timeout"]) / m if m else float("nan")
    lo, hi = _wilson(c["killed"] + c["timeout"], m)
    return (
        f"| {name} | {c['generated']} | {n} | "
        + " | ".join(str(c[k]) for k in cols)
        + f" | {p:.1%} ({lo:.0%}-{hi:.0%}) |"
    )


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / d
    return mid - half, mid + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", choices=sorted(GROUPS))
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the per-group copies")
    parser.add_argument("--summary", action="store_true", help="print the tables, run nothing")
    parser.add_argument(
        "--rerun", action="store_true", help="run again only the mutants not killed last time"
    )
    parser.add_argument("--survivors", action="store_true", help="list non-killed mutants")
    parser.add_argument("--diffs", action="store_true", help="with --survivors: print their diffs")
    parser.add_argument(
        "--sample",
        type=float,
        default=None,
        help="run a random fraction of each file's mutants (seeded, stratified by file); the "
        "table then estimates the score from the sample",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    args = parser.parse_args()
    base = args.workdir or Path(tempfile.gettempdir()) / "scoresde-mutation"
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for group in args.groups:
        patterns, selection = GROUPS[group]
        workdir = base / group
        if not args.summary:
            sync_copy(workdir, selection)
            if args.rerun:
                names = [
                    n for n, _ in survivors(workdir, patterns, sampled=args.sample is not None)
                ]
            elif args.sample is not None:
                generate(workdir, mutmut)
                names = sample_names(workdir, patterns, args.sample, args.seed)
                (workdir / "sampled.json").write_text(json.dumps(names))
                done = {n for n, st in statuses(workdir).items() if st in ("killed", "timeout")}
                names = [n for n in names if n not in done]  # a kill stands when tests are added
            else:
                names = patterns
            cmd = [mutmut, "run", f"--max-children={args.max_children}", *names]
            print(f"== {group}: {' '.join(cmd[:4])} ... ({len(names)}) in {workdir}", flush=True)
            if names:
                subprocess.run(cmd, cwd=workdir, env=env, check=False)
        sampled = None
        if (workdir / "sampled.json").is_file() and (args.sample is not None or args.summary):
            sampled = set(json.loads((workdir / "sampled.json").read_text()))
        print(
            f"\n## {group}\n\n{table(results(workdir, patterns, sampled), sampled)}\n", flush=True
        )
        if args.survivors:
            for name, status in survivors(workdir, patterns, sampled=sampled is not None):
                print(f"{status}: {name}")
                if args.diffs:
                    print(diff(workdir, name), flush=True)


if __name__ == "__main__":
    main()
