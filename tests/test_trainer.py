"""The trainer: it learns the exact score, its EMA is swa_utils', resume is bit-exact."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from scoresde import VPSDE
from scoresde.data import DatasetData, TensorData, from_target, get_dataset, mixture_target
from scoresde.losses import DSMLoss
from scoresde.nets import MLP, ScoreModel, UNet
from scoresde.training import CheckpointError, Trainer, load_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]


def relative_score_error(model, target, sde, n=4000, seed=1):
    """``E sigma^2 ||s_theta - s||^2 / E sigma^2 ||s||^2`` over ``t ~ U(1e-3, 1)``, ``x_t ~ p_t``:
    the sigma^2-weighted Fisher divergence (what DSM minimises, up to a constant), relative to
    that of the zero score."""
    g = torch.Generator().manual_seed(seed)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n, generator=g)
    x0 = target.sample(n, generator=g)
    alpha, sigma = sde.marginal(t)
    xt = alpha[:, None] * x0 + sigma[:, None] * torch.randn(n, 2, generator=g)
    with torch.no_grad():
        got = model.score(xt, t)
    want = target.score(xt, t, sde)
    num = (sigma[:, None] ** 2 * (got - want) ** 2).sum(1).mean()
    den = (sigma[:, None] ** 2 * want**2).sum(1).mean()
    return float(num / den)


def test_dsm_trained_mlp_learns_the_exact_mixture_score():
    """400 steps of DSM on the 3-mode 2-D mixture: the EMA model's relative sigma^2-weighted score
    error must fall below 0.03 (measured about 0.01; the untrained zero-output net scores 1)."""
    torch.manual_seed(0)
    sde, target = VPSDE(), mixture_target()
    model = ScoreModel(MLP(2, hidden=64, depth=2), sde, sigma_data=2.0)
    assert relative_score_error(model, target, sde) == pytest.approx(1.0)
    trainer = Trainer(
        model,
        from_target(target),
        steps=400,
        batch_size=256,
        lr=3e-3,
        warmup=20,
        ema_decay=0.98,
        progress=False,
        log_every=400,
    )
    trainer.fit()
    err = relative_score_error(trainer.ema_model().eval(), target, sde)
    print(f"relative score error after 400 steps: {err:.4f}")
    assert err < 0.03


def test_ema_update_equals_averaged_model_update_parameters():
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=16, depth=1), VPSDE())
    trainer = Trainer(
        model, "moons", steps=6, batch_size=16, ema_decay=0.8, ema_warmup=False, progress=False
    )
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)

    def also_reference(tr, step, loss):
        reference.update_parameters(tr.model)

    trainer.callbacks.append(also_reference)
    trainer.fit()
    ours, theirs = trainer.ema.module.state_dict(), reference.module.state_dict()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert int(trainer.ema.n_averaged) == int(reference.n_averaged) == 6
    assert not torch.equal(trainer.ema.module.net.inp.weight, model.net.inp.weight)


def test_ema_warmup_ramps_the_decay():
    """With warm-up the k-th update uses decay min(ema_decay, (1 + k) / (10 + k))."""
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=16, depth=1), VPSDE())
    trainer = Trainer(model, "moons", steps=8, batch_size=16, ema_decay=0.5, progress=False)

    def ramped(ema_list, model_list, n_averaged):
        k = int(n_averaged)
        get_ema_multi_avg_fn(min(0.5, (1 + k) / (10 + k)))(ema_list, model_list, n_averaged)

    reference = AveragedModel(model, multi_avg_fn=ramped, use_buffers=True)
    fixed = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)

    def also_references(tr, step, loss):
        reference.update_parameters(tr.model)
        fixed.update_parameters(tr.model)

    trainer.callbacks.append(also_references)
    trainer.fit()
    ours, theirs = trainer.ema.module.state_dict(), reference.module.state_dict()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # the ramp (decay 2/11 at the second update) is not the fixed-decay average
    key = "net.inp.weight"
    assert not torch.allclose(ours[key], fixed.module.state_dict()[key])


def test_warmup_clipping_and_metrics_log(tmp_path):
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=16, depth=1), VPSDE())
    seen = []

    def check(tr, step, loss):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.model.parameters()]))
        seen.append((step, tr.scheduler.get_last_lr()[0], float(norm)))

    trainer = Trainer(
        model,
        "moons",
        out_dir=tmp_path,
        steps=12,
        batch_size=32,
        lr=0.1,
        warmup=4,
        grad_clip=1e-3,
        log_every=5,
        progress=False,
        callbacks=[check],
    )
    trainer.fit()
    lrs = [lr for _, lr, _ in seen]
    assert lrs[:4] == pytest.approx([0.05, 0.075, 0.1, 0.1])  # lr min(1, (k + 1) / 4) after step k
    assert all(norm <= 1e-3 * (1 + 1e-5) for _, _, norm in seen)  # gradients were clipped
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [5, 10, 12]
    assert all(m["grad_norm"] > 1e-3 for m in lines)  # the logged norm is the pre-clip one
    assert set(lines[0]) >= {"loss", "lr", "grad_norm", "steps_per_sec", "samples_per_sec"}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["sde"]["name"] == "VPSDE" and cfg["net"]["name"] == "mlp"


def test_data_order_is_a_function_of_seed_step_and_rank():
    moons = get_dataset("moons")
    a, b = moons.stream(8, seed=3), moons.stream(8, seed=3)
    assert torch.equal(a.batch(5)[0], b.batch(5)[0])  # random access, same batch
    assert not torch.equal(a.batch(5)[0], a.batch(6)[0])
    assert not torch.equal(a.batch(5)[0], moons.stream(8, seed=4).batch(5)[0])
    assert not torch.equal(
        moons.stream(8, 3, rank=0, world_size=2).batch(5)[0],
        moons.stream(8, 3, rank=1, world_size=2).batch(5)[0],
    )
    # a finite set: every epoch is a permutation, split without overlap between ranks
    x = torch.arange(40.0)[:, None].expand(40, 2)
    data = TensorData(x, torch.arange(40) % 3)
    for epoch in range(2):
        seen = []
        for rank in range(2):
            s = data.stream(5, seed=1, rank=rank, world_size=2)
            seen += [s.batch(epoch * 4 + k)[0][:, 0] for k in range(4)]
        assert sorted(torch.cat(seen).tolist()) == list(range(40))
    one = data.stream(5, seed=1)
    assert not torch.equal(one.batch(0)[0], one.batch(8)[0])  # epochs are reshuffled
    xb, yb = one.batch(3)
    assert torch.equal(yb, xb[:, 0].long() % 3)  # labels stay with their samples


def test_builtin_datasets_have_the_documented_geometry():
    from scoresde.data import DATASETS

    for name in DATASETS:
        data = get_dataset(name)
        x, y = data.stream(512, seed=0).batch(0)
        assert x.shape == (512, *data.info.shape) and torch.isfinite(x).all(), name
        assert 0.3 < data.info.sigma_data < 2.5, name
    board = get_dataset("checkerboard").reference(2000)
    assert ((board.floor().sum(1) % 2) == 0).all() and board.abs().max() <= 2  # dark squares only
    moons = get_dataset("moons").reference(2000) * 0.7 + torch.tensor([0.5, 0.25])
    upper = (moons - torch.tensor([0.0, 0.0])).norm(dim=1)  # distance to the two unit arcs
    lower = (moons - torch.tensor([1.0, 0.5])).norm(dim=1)
    assert float(torch.minimum((upper - 1).abs(), (lower - 1).abs()).mean()) < 0.08
    gauss8 = get_dataset("8gaussians")
    assert gauss8.target.num_components == 8
    torch.testing.assert_close(gauss8.target.cov, torch.eye(2, dtype=torch.float64))
    digits = get_dataset("digits")
    x, y = digits.stream(64, seed=0).batch(0)
    assert digits.info.shape == (1, 8, 8) and digits.info.num_classes == 10
    assert x.min() >= -1 and x.max() <= 1 and y.min() >= 0 and y.max() <= 9
    assert len(digits.x) == 1500 and digits.info.is_image and not digits.info.is_2d
    # the 297 held-out images are disjoint from the 1,500 trained on (as rows of pixels)
    test, what = digits.heldout(10_000)
    assert len(test) == 297 and "held-out" in what
    train_rows = {tuple(r.tolist()) for r in digits.x.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in test.flatten(1))


class _Points(Dataset):
    def __init__(self):
        self.x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 2


def test_dataloader_input_resumes_mid_epoch_exactly():
    loader = DataLoader(_Points(), batch_size=7)
    data = DatasetData(loader.dataset)
    straight = data.stream(6, seed=2)
    batches = [straight.batch(k) for k in range(20)]  # 8 batches per epoch
    resumed = data.stream(6, seed=2)
    for k in range(11, 20):
        x, y = resumed.batch(k)
        assert torch.equal(x, batches[k][0]) and torch.equal(y, batches[k][1])


def _make(out, steps, callbacks=()):
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=32, depth=2, dropout=0.1), VPSDE())
    return Trainer(
        model,
        "moons",
        out_dir=out,
        steps=steps,
        batch_size=32,
        lr=1e-2,
        warmup=3,
        ema_decay=0.9,
        ckpt_every=4,
        log_every=4,
        progress=False,
        callbacks=callbacks,
    )


def _assert_same_state(a: dict, b: dict, where="state"):
    assert a.keys() == b.keys(), where
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_state(a[k], b[k], f"{where}.{k}")
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{where}.{k}"
        else:
            assert a[k] == b[k], f"{where}.{k}"


def test_resume_in_process_is_bit_exact(tmp_path):
    straight = _make(tmp_path / "a", 12)
    straight.fit()
    first = _make(tmp_path / "b", 8)
    first.fit()
    resumed = _make(tmp_path / "b", 12)
    assert resumed.resume() == 8
    resumed.fit()
    _assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    _assert_same_state(straight.ema.module.state_dict(), resumed.ema.module.state_dict())
    _assert_same_state(straight.optimizer.state_dict(), resumed.optimizer.state_dict())
    # and the logged losses agree step for step
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["loss"] for s in la] == [json.loads(s)["loss"] for s in lb]


def test_existing_checkpoint_is_never_overwritten_and_settings_must_match(tmp_path):
    _make(tmp_path, 4).fit()
    with pytest.raises(FileExistsError, match="already exists"):
        _make(tmp_path, 8).fit()
    torch.manual_seed(0)
    other = Trainer(
        ScoreModel(MLP(2, hidden=32, depth=2, dropout=0.1), VPSDE()),
        "moons",
        out_dir=tmp_path,
        steps=8,
        batch_size=64,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 32 vs now 64"):
        other.fit(resume=True)
    with pytest.raises(FileNotFoundError):
        _make(tmp_path, 8).fit(resume=tmp_path / "nope.pt")
    _make(tmp_path, 8).fit(resume=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 8


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from scoresde import VPSDE
    from scoresde.data import TensorData
    from scoresde.nets import MLP, ScoreModel
    from scoresde.training import Trainer

    def make(out, kill_at=None):
        torch.manual_seed(0)
        model = ScoreModel(MLP(2, hidden=32, depth=2, dropout=0.1), VPSDE(), prediction="v")
        data = TensorData(torch.randn(300, 2, generator=torch.Generator().manual_seed(1)))
        def kill(trainer, step, loss):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return Trainer(model, data, out_dir=out, steps=30, batch_size=64, lr=1e-2, warmup=5,
                       ema_decay=0.9, ckpt_every=10, log_every=5, progress=False, callbacks=[kill])

    def state(tr):
        return {"model": tr.model.state_dict(), "ema": tr.ema.module.state_dict(),
                "opt": tr.optimizer.state_dict(), "step": tr.step}

    mode, out = sys.argv[1], sys.argv[2]
    if mode == "killed":
        make(out, kill_at=25).fit()
        raise SystemExit("not killed")
    a = make(out)
    a.fit(resume=True)
    b = make(sys.argv[3])
    b.fit()
    torch.save({"resumed": state(a), "straight": state(b)}, sys.argv[4])
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A run SIGKILLed at step 25 (checkpoints every 10) and resumed from step 20 ends with
    parameters, EMA and optimizer state ``torch.equal`` to an uninterrupted 30-step run."""
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, str(script), "killed", str(tmp_path / "k")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(tmp_path / "k" / "checkpoint.pt")["step"] == 20
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "resume",
            str(tmp_path / "k"),
            str(tmp_path / "s"),
            str(tmp_path / "out.pt"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    res = torch.load(tmp_path / "out.pt", weights_only=True)
    assert res["resumed"]["step"] == res["straight"]["step"] == 30
    _assert_same_state(res["resumed"], res["straight"])
    steps = [
        json.loads(s)["step"] for s in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [5, 10, 15, 20, 25, 30]  # no duplicate lines from the killed run


class _NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, c, y=None):
        return self.w * x * float("nan")


def test_nonfinite_loss_raises_a_clear_error():
    trainer = Trainer(
        ScoreModel(_NaNNet(), VPSDE()), "moons", steps=3, batch_size=8, log_every=1, progress=False
    )
    with pytest.raises(FloatingPointError, match="loss became nan between steps 0 and 1"):
        trainer.fit()


def test_conditional_unet_on_digits_with_bf16_and_label_dropout():
    torch.manual_seed(0)
    sde = VPSDE()
    net = UNet(
        1,
        8,
        channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        num_classes=10,
    )
    model = ScoreModel(net, sde, sigma_data=0.6)
    trainer = Trainer(
        model,
        "digits",
        loss=DSMLoss(sde, label_dropout=0.2),
        steps=3,
        batch_size=16,
        bf16=True,
        log_every=1,
        progress=False,
    )
    out = trainer.fit()
    assert out["step"] == 3 and out["loss"] > 0
    with pytest.raises(ValueError, match="have no labels"):
        Trainer(ScoreModel(MLP(2, num_classes=3), sde), "moons", progress=False)
    with pytest.raises(ValueError, match="must be a scoresde.nets.ScoreModel"):
        Trainer(MLP(2), "moons")
    with pytest.raises(ValueError, match="batch_size=0"):
        Trainer(ScoreModel(MLP(2), sde), "moons", batch_size=0)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; available: moons"):
        Trainer(ScoreModel(MLP(2), sde), "mnist")
