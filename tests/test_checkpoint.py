"""Checkpoint files: atomic writes, refusal of bad files, RNG capture, load_pretrained."""

from __future__ import annotations

import glob
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from scoresde import VESDE, VPSDE
from scoresde.nets import MLP, ScoreModel
from scoresde.training import (
    CheckpointError,
    Trainer,
    load_checkpoint,
    load_pretrained,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from scoresde.training.checkpoint import FORMAT

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_round_trip_and_only_plain_content(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    state = {"step": 3, "w": torch.arange(5.0), "cfg": {"a": [1, 2.5, None], "b": (True, "x")}}
    save_checkpoint(state, path)
    back = load_checkpoint(path)
    assert back["format"] == FORMAT and back["step"] == 3 and back["cfg"] == state["cfg"]
    assert torch.equal(back["w"], state["w"])
    assert not glob.glob(str(tmp_path / "sub" / ".*.tmp"))  # no temp file left behind
    with pytest.raises(TypeError, match=r"checkpoint\['cfg'\]\['f'\] is a function"):
        save_checkpoint({"cfg": {"f": lambda: 0}}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_truncated_foreign_garbage_and_newer_files_raise_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"w": torch.randn(1000)}, good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(trunc)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a scoresde checkpoint"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    torch.save({"format": FORMAT, "version": 99}, newer)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(newer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    """Unpickling this touches a file: a stand-in for arbitrary code execution."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "model": _Payload(sentinel)}, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_pretrained(evil)
    assert not sentinel.exists()
    # the payload is real: unrestricted unpickling does run it
    torch.load(evil, weights_only=False)
    assert sentinel.exists()


KILL_DURING_WRITE = textwrap.dedent(
    """
    import io, sys, time, torch
    from scoresde.training import checkpoint as ck
    path, ready = sys.argv[1], sys.argv[2]
    ck.save_checkpoint({"step": 1, "w": torch.ones(100_000)}, path)
    real_save = torch.save

    def half_then_hang(obj, f):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        open(ready, "w").close()
        time.sleep(120)

    torch.save = half_then_hang
    ck.save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path, ready = tmp_path / "ckpt.pt", tmp_path / "ready"
    script = tmp_path / "writer.py"
    script.write_text(KILL_DURING_WRITE)
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(ready)], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, "the writer exited before the second write"
            assert time.monotonic() < deadline, "the writer never reached the second write"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    temps = glob.glob(str(tmp_path / ".ckpt.pt.*.tmp"))
    assert len(temps) == 1 and os.path.getsize(temps[0]) > 0  # the half-written new checkpoint
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(100_000))
    with pytest.raises(CheckpointError):
        load_checkpoint(temps[0])
    assert remove_stale_temps(path) == temps and not glob.glob(str(tmp_path / ".*.tmp"))


def test_rng_state_round_trip_covers_torch_numpy_python():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_load_pretrained_rebuilds_model_and_sde(tmp_path, sde):
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=32, depth=1), sde, prediction="v", sigma_data=0.7)
    trainer = Trainer(
        model, "moons", out_dir=tmp_path, steps=5, batch_size=32, progress=False, ema_decay=0.5
    )
    trainer.fit()
    sde2, model2, score_fn, meta = load_pretrained(tmp_path / "checkpoint.pt", device="cpu")
    assert sde2.to_config() == sde.to_config() and meta["step"] == 5 and meta["ema"]
    assert (
        meta["data"]["name"] == "moons" and meta["data"]["shape"] == [2] and meta["data"]["is_2d"]
    )
    assert model2.config == model.config and not model2.training
    x, t = torch.randn(8, 2), torch.rand(8) * 0.9 + 0.05
    ema = trainer.ema_model().eval()
    torch.testing.assert_close(score_fn(x, t), ema.score(x, t), rtol=0, atol=0)
    _, raw, _, meta_raw = load_pretrained(tmp_path / "checkpoint.pt", ema=False)
    assert not meta_raw["ema"]
    torch.testing.assert_close(raw.score(x, t), model.eval().score(x, t), rtol=0, atol=0)
