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


# -- 2 processes on half batches == 1 process on the combined batch ----------------------------

HALVES = textwrap.dedent(
    """
    import os, sys, torch
    torch.set_num_threads(1)
    from scoresde import VPSDE
    from scoresde.nets import MLP, ScoreModel
    from scoresde.training import Trainer

    out, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(int(os.environ["RANK"]))  # DDP must start rank 1 from rank 0's weights
    model = ScoreModel(MLP(2, hidden=32, depth=2, dropout=0.0), VPSDE())
    grads = []

    def record(tr, step, loss):  # the gradient the optimizer just used
        grads.append([p.grad.detach().clone() for p in tr.model.parameters()])

    tr = Trainer(model, "moons", steps=steps, **__KW__, callbacks=[record])
    tr.fit()
    torch.save({"model": tr.model.state_dict(), "ema": tr.ema.module.state_dict(),
                "grads": grads}, os.path.join(out, f"rank{tr.dist.rank}.pt"))
    tr.close()
    """
)
# no clipping: a clipped gradient would hide a summed (doubled) one
HALVES_KW = dict(batch_size=128, lr=1e-2, grad_clip=None, ema_decay=0.9, seed=0, progress=False)
HALVES_STEPS = 4


def _one_process_on_the_combined_batch(steps: int) -> dict:
    """One process, the batch of 128 = rank 0's 64 then rank 1's 64, and the same draws.

    The trainer draws each rank's batch from its ``DistributedSampler`` shard and its loss
    randomness (times, noise) from a generator seeded ``derive_seed(seed, step, rank, 0x1055)``;
    here the two ranks' streams are concatenated and each half's DSM loss uses its rank's
    generator. The loss is the mean over the 128 samples, summed as the mean of the two halves'
    means (equal halves): with that order of sums DDP's averaged gradient ``(g_0 + g_1) / 2``
    and autograd's ``g_0 / 2 + g_1 / 2`` agree bit for bit (halving is exact in floating point),
    so the comparison is exact rather than up to a tolerance.
    """
    from scoresde import VPSDE
    from scoresde.data import as_data, derive_seed
    from scoresde.losses import DSMLoss
    from scoresde.nets import MLP, ScoreModel
    from scoresde.training import Trainer

    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=32, depth=2, dropout=0.0), VPSDE())
    data = as_data("moons")
    streams = [data.stream(64, 0, rank, 2, "cpu") for rank in range(2)]
    dsm = DSMLoss(model.sde)

    class Combined:
        def batch(self, step):
            return torch.cat([s.batch(step)[0] for s in streams]), None

    def loss(net, x, y, generator=None):
        means = [
            dsm(net, half, None, generator=torch.Generator().manual_seed(
                derive_seed(0, tr.step, rank, 0x1055)))
            for rank, half in enumerate(x.chunk(2))
        ]  # fmt: skip
        return (means[0] + means[1]) / 2

    grads = []

    def record(tr, step, loss):
        grads.append([p.grad.detach().clone() for p in tr.model.parameters()])

    tr = Trainer(model, data, loss=loss, steps=steps, **HALVES_KW, callbacks=[record])
    tr.stream = Combined()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same kernels, the same sums
    try:
        tr.fit()
    finally:
        torch.set_num_threads(threads)
    return {"model": tr.model.state_dict(), "ema": tr.ema.module.state_dict(), "grads": grads}


def test_two_ranks_on_half_batches_equal_one_process_on_the_combined_batch(tmp_path):
    """DDP's rule: each rank's gradient of its own batch mean, averaged over ranks, is the
    gradient of the mean over the combined batch. So 2 ranks x 64 samples must train exactly
    as 1 process on those 128 samples with the same draws: the gradient of every step and the
    final weights and EMA bit for bit. A summed all-reduce (twice the gradient) or a rank whose
    data is lost fails here."""
    script = tmp_path / "halves.py"
    script.write_text(HALVES.replace("**__KW__", f"**{HALVES_KW!r}"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc-per-node=2", str(script), str(tmp_path), str(HALVES_STEPS)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    one = _one_process_on_the_combined_batch(HALVES_STEPS)
    assert len(one["grads"]) == len(ranks[0]["grads"]) == HALVES_STEPS
    for step, (g_one, g_ddp) in enumerate(zip(one["grads"], ranks[0]["grads"], strict=True)):
        for a, b in zip(g_one, g_ddp, strict=True):
            ratio = float(b.norm() / a.norm())
            assert torch.equal(a, b), f"step {step + 1}: DDP gradient / 1-process = {ratio:.4f}"
    for r in ranks:
        assert _equal(r["model"], one["model"]) and _equal(r["ema"], one["ema"])
