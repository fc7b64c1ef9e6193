"""Peak resident memory of ``scoresde sample`` against the number of samples.

    python benchmarks/sample_memory.py                        # n = 1e4, 1e5, 1e6 on moons and digits
    python benchmarks/sample_memory.py --sizes 10000 100000 --data moons

A tiny model is trained first (a few steps: the samples' quality is not what is measured). Each
``scoresde sample`` run then goes in its own fresh process, which prints its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``); the table gives it per ``n`` with the size of the
output file. Chunks of ``--batch`` samples stream to disk, so the peak should stay flat in ``n``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys
from scoresde.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def _run(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--data", nargs="+", default=["moons", "digits"])
    parser.add_argument("--batch", type=int, default=10_000, help="samples per chunk")
    parser.add_argument("--steps", type=int, default=4, help="ddim steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"scoresde sample --solver ddim --steps {args.steps} --batch {args.batch} (CPU)")
        print("| data | n | peak RSS (MiB) | samples.npy (MiB) | wall (s) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for data in args.data:
            run = os.path.join(tmp, f"train-{data}")
            net = ["--net", "mlp", "--hidden", "32", "--depth", "1"]
            _run(["train", "--data", data, "--steps", "5", "--out", run, *net, "--no-progress"])
            for n in args.sizes:
                out = os.path.join(tmp, f"{data}-{n}")
                start = time.perf_counter()
                stdout = _run(
                    [
                        "sample", "--ckpt", os.path.join(run, "checkpoint.pt"), "--n", str(n),
                        "--batch", str(args.batch), "--solver", "ddim", "--steps",
                        str(args.steps), "--out", out, "--device", "cpu",
                    ]
                )  # fmt: skip
                wall = time.perf_counter() - start
                rss = int(stdout.rsplit("MAXRSS_KB", 1)[1].split()[0]) / 1024
                size = os.path.getsize(os.path.join(out, "samples.npy")) / 2**20
                print(f"| {data} | {n:,} | {rss:.0f} | {size:.1f} | {wall:.1f} |", flush=True)
                for name in os.listdir(out):
                    os.remove(os.path.join(out, name))


if __name__ == "__main__":
    main()
