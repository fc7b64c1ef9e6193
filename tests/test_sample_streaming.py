"""``scoresde sample`` streams chunks to disk: deterministic per chunk, resumable, shardable."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import solvers
from scoresde import streaming
from scoresde.cli import main
from scoresde.training import load_pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]


def _args(ckpt: str, out, n: int = 7, batch: int = 3, *extra: str) -> list[str]:
    return [
        "sample", "--ckpt", ckpt, "--n", str(n), "--batch", str(batch), "--solver", "euler_maruyama",
        "--steps", "5", "--seed", "4", "--out", str(out), *extra,
    ]  # fmt: skip


def test_chunks_follow_the_seed_rule_and_match_the_python_api(ckpt, tmp_path):
    assert main(_args(ckpt, tmp_path / "a")) == 0
    x = np.load(tmp_path / "a" / "samples.npy")
    assert x.shape == (7, 2) and not (tmp_path / "a" / "chunks").exists()
    assert json.loads((tmp_path / "a" / "run.json").read_text())["complete"] is True
    sde, _, score_fn, _ = load_pretrained(ckpt, "cpu")
    for i, (start, size) in enumerate([(0, 3), (3, 3), (6, 1)]):
        gen = streaming.chunk_generator(4, i)
        x_T = sde.prior_sample((size, 2), generator=gen)
        ref, _ = solvers.sample(
            sde, score_fn, x_T=x_T, solver="euler_maruyama", steps=5, generator=gen
        )
        np.testing.assert_array_equal(x[start : start + size], ref.float().numpy())
    assert streaming.chunk_generator(4, 0).initial_seed() == 4  # one chunk = manual_seed(seed)
    assert main(_args(ckpt, tmp_path / "a")) == 0  # a rerun replaces the run, same samples
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "samples.npy"), x)


def test_a_killed_run_resumes_to_the_same_samples(ckpt, tmp_path, monkeypatch):
    assert main(_args(ckpt, tmp_path / "straight")) == 0
    real = solvers.sample
    calls = []

    def dies_at_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(solvers, "sample", dies_at_third_chunk)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        main(_args(ckpt, out))
    assert sorted(os.listdir(out / "chunks")) == ["000000.npy", "000001.npy"]  # no partial file
    calls.clear()
    assert main(_args(ckpt, out, 7, 3, "--resume")) == 0
    assert len(calls) == 1  # only the missing chunk was drawn
    np.testing.assert_array_equal(
        np.load(out / "samples.npy"), np.load(tmp_path / "straight" / "samples.npy")
    )
    assert main(_args(ckpt, out, 7, 3, "--resume")) == 0  # finished: nothing to do
    assert len(calls) == 1


def test_out_is_checked_before_any_work(ckpt, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(_args(str(tmp_path / "missing.pt"), a_file)) == 2
    assert "is a file" in capsys.readouterr().err  # not the missing checkpoint: --out came first
    assert main(_args(ckpt, tmp_path / "r", 4, 2)) == 0
    assert main(_args(ckpt, tmp_path / "r", 5, 2, "--resume")) == 2
    assert "n: 4 -> 5" in capsys.readouterr().err


def test_chunk_sizes():
    assert streaming.chunk_sizes(7, 3) == [3, 3, 1]
    assert streaming.chunk_sizes(6, 3) == [3, 3]
    assert streaming.chunk_sizes(2, 10) == [2]
    with pytest.raises(ValueError):
        streaming.chunk_sizes(0, 3)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_gloo_ranks_merge_to_the_one_process_run(ckpt, tmp_path):
    """Rank r draws chunks r, r + 2, ...; the merged file equals a one-process run."""
    assert main(_args(ckpt, tmp_path / "one")) == 0
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        "--nproc-per-node=2", "-m", "scoresde.cli", "--", *_args(ckpt, tmp_path / "two"), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    np.testing.assert_array_equal(
        np.load(tmp_path / "two" / "samples.npy"), np.load(tmp_path / "one" / "samples.npy")
    )
