"""DDP under torchrun: 2 gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from scoresde.training import load_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)

SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    torch.set_num_threads(1)
    from scoresde import VPSDE
    from scoresde.nets import MLP, ScoreModel
    from scoresde.training import Trainer

    out, steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    # a different initialisation on each rank: DDP must start every rank from rank 0's weights
    torch.manual_seed(int(os.environ["RANK"]))
    model = ScoreModel(MLP(2, hidden=32, depth=2, dropout=0.1), VPSDE())
    first, local = {}, []

    def record(tr, step, loss):
        first.setdefault("batch", tr.stream.batch(step - 1)[0])
        local.append(float(loss))  # this rank's own loss at this step

    tr = Trainer(model, "moons", out_dir=out, steps=steps, batch_size=64, lr=1e-2, ema_decay=0.9,
                 ckpt_every=10, log_every=5, progress=False, callbacks=[record])
    res = tr.fit(resume=resume)
    torch.save({"model": tr.model.state_dict(), "ema": tr.ema.module.state_dict(),
                "batch": first.get("batch"), "world": tr.dist.world_size, "loss": res["loss"],
                "local": torch.tensor(local, dtype=torch.float64),
                "ddp": type(tr.ddp_model).__name__},
               os.path.join(out, f"rank{tr.dist.rank}.pt"))
    tr.close()
    """
)


def _torchrun(tmp_path, out, steps, mode="fresh"):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=2",
        str(script),
        str(out),
        str(steps),
        mode,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "broadcast_buffers" not in proc.stderr, proc.stderr[-3000:]  # no deprecated API
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_gloo_ranks_train_in_lockstep(tmp_path):
    out = tmp_path / "run"
    r0, r1 = _torchrun(tmp_path, out, 20)
    assert r0["world"] == r1["world"] == 2 and r0["ddp"] == "DistributedDataParallel"
    assert not torch.equal(r0["batch"], r1["batch"])  # each rank sees its own shard
    assert _equal(r0["model"], r1["model"]) and _equal(r0["ema"], r1["ema"])
    assert r0["loss"] == r1["loss"]
    # the logged loss is the mean over ranks of each rank's mean over the last log window
    # (steps 16..20); a sum over ranks would be twice that
    window = [r["local"][15:20].mean().item() for r in (r0, r1)]
    assert r0["loss"] == pytest.approx(sum(window) / 2, rel=1e-5), (r0["loss"], window)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 20 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert _equal(ckpt["model"], r0["model"])
    steps = [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]  # written once, by rank 0


@pytest.mark.slow
def test_ddp_resume_is_exact(tmp_path):
    straight = _torchrun(tmp_path, tmp_path / "a", 20)
    _torchrun(tmp_path, tmp_path / "b", 10)
    resumed = _torchrun(tmp_path, tmp_path / "b", 20, "resume")
    for r in range(2):
        assert _equal(straight[r]["model"], resumed[r]["model"])
        assert _equal(straight[r]["ema"], resumed[r]["ema"])
