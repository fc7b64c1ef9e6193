"""Faults found by probing the CLI and API (issue #13): each test reproduces one and checks that
it now gives a clear error or a correct result. README's reliability table lists them."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import solvers
from scoresde import VPSDE, Gaussian
from scoresde.likelihood import log_likelihood
from solvers import NonFiniteScoreError

F64 = torch.float64


def _unit_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact score of VP-diffused N(0, I) data: alpha^2 + sigma^2 = 1, so score = -x."""
    return -x


# -- likelihood ------------------------------------------------------------------------------
def _gaussian2() -> Gaussian:
    return Gaussian(
        torch.tensor([0.5, -0.3], dtype=F64), torch.tensor([[0.6, 0.1], [0.1, 0.3]], dtype=F64)
    )


def test_fixed_step_likelihood_never_takes_one_step_over_the_range(monkeypatch) -> None:
    """#13.1: torchdiffeq's fixed-step methods step on the output grid [t_eps, T] unless given a
    step size: one Euler step, off by many nats, exit 0. Now they take ``steps`` steps."""
    import scoresde.likelihood as L

    target, sde = _gaussian2(), VPSDE()
    x = target.sample(4, generator=torch.Generator().manual_seed(3), dtype=F64)
    exact = target.log_prob_t(x, 1e-5, sde)
    prior = lambda z: target.log_prob_t(z, 1.0, sde)  # noqa: E731  (isolates the ODE error)
    one = log_likelihood(
        sde, target.score_fn(sde), x, method="euler", prior_logp=prior, options={"step_size": 1.0}
    )
    monkeypatch.setattr(L, "DEFAULT_FIXED_STEPS", 40)
    default = log_likelihood(sde, target.score_fn(sde), x, method="euler", prior_logp=prior)
    assert one.nfe == 1 and default.nfe == 40
    err_one = float((one.logp - exact).abs().max())
    err_default = float((default.logp - exact).abs().max())
    assert err_one > 0.3 and err_default < err_one / 10, (err_one, err_default)
    res = log_likelihood(
        sde, target.score_fn(sde), x, method="midpoint", steps=10, prior_logp=prior
    )
    assert res.nfe == 20
    with pytest.raises(ValueError, match="steps=10 is for fixed-step methods"):
        log_likelihood(sde, target.score_fn(sde), x, method="dopri5", steps=10)
    with pytest.raises(ValueError, match="steps"):
        log_likelihood(sde, target.score_fn(sde), x, method="euler", steps=0)


def test_likelihood_reports_a_score_that_turns_nan_with_its_time() -> None:
    """#13.2: a NaN mid-solve gave NaN logp (or torchdiffeq's 'underflow in dt')."""
    target, sde = _gaussian2(), VPSDE()
    score = target.score_fn(sde)

    def nan_late(x, t):
        s = score(x, t)
        return s * float("nan") if float(t[0]) > 0.5 else s

    x = target.sample(3, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(NonFiniteScoreError, match=r"NaN or Inf at t=0\.[5-9]"):
        log_likelihood(sde, nan_late, x, rtol=1e-3, atol=1e-3)


# -- sample(): one dtype rule, empty batch, score shape, adaptive steps ---------------------
@pytest.mark.parametrize("name", solvers.available())
def test_every_solver_keeps_the_state_dtype(name: str) -> None:
    """#13.3: a float32 score on a float64 state returned float32 from some solvers."""

    def score32(x, t):
        return _unit_score(x.float(), t.float())

    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = solvers.sample(
            VPSDE(),
            score32,
            x_T=x_T.clone(),
            solver=name,
            steps=3,
            generator=torch.Generator().manual_seed(1),
        )
    assert out.dtype == F64 and torch.isfinite(out).all()
    x16 = x_T.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out32, _ = solvers.sample(
            VPSDE(),
            lambda x, t: _unit_score(x.double(), t.double()),
            x_T=x16,
            solver=name,
            steps=3,
            generator=torch.Generator().manual_seed(1),
        )
    assert out32.dtype == torch.float32


def test_float32_model_samples_a_float64_state() -> None:
    """#13.3: sample(..., dtype=torch.float64) with a float32 model failed in a matmul."""
    from scoresde.nets import MLP, ScoreModel

    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=8, depth=1), VPSDE())
    out, _ = solvers.sample(
        model.sde,
        model.score_fn(),
        shape=(4, 2),
        dtype=F64,
        solver="ode_heun",
        steps=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.dtype == F64
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.full((4,), 0.3, dtype=F64)
    torch.testing.assert_close(
        model.score(x, t), model.score(x.float(), t.float()).double(), rtol=1e-5, atol=1e-5
    )


def test_empty_batch_is_a_value_error() -> None:
    """#13.10: sample(x_T=zeros(0, 2)) raised IndexError from deep inside."""
    with pytest.raises(ValueError, match="empty"):
        solvers.sample(VPSDE(), _unit_score, x_T=torch.zeros(0, 2))
    with pytest.raises(ValueError, match="empty"):
        solvers.sample(VPSDE(), _unit_score, shape=(0, 2))
    with pytest.raises(ValueError, match="floating-point"):
        solvers.sample(VPSDE(), _unit_score, x_T=torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("name", solvers.available())
def test_every_solver_rejects_a_score_that_changes_shape_mid_run(name: str) -> None:
    """#13.11: edm_heun broadcast a (B, 1) score silently; others raised raw RuntimeErrors."""
    calls = {"n": 0}

    def shrinking(x, t):
        calls["n"] += 1
        s = _unit_score(x, t)
        return s if calls["n"] == 1 else s[:, :1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            ValueError, match=r"score_fn returned \(3, 1\).*expected the state's shape \(3, 2\)"
        ):
            solvers.sample(
                VPSDE(),
                shrinking,
                shape=(3, 2),
                solver=name,
                steps=3,
                generator=torch.Generator().manual_seed(0),
            )


def test_adaptive_solvers_say_that_steps_only_sets_the_first_step() -> None:
    """#13.14: ode_adaptive ignored steps silently."""
    with pytest.warns(UserWarning, match="chooses its own steps"):
        solvers.sample(
            VPSDE(),
            _unit_score,
            shape=(2, 2),
            solver="ode_adaptive",
            steps=7,
            generator=torch.Generator().manual_seed(0),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solvers.sample(
            VPSDE(),
            _unit_score,
            shape=(2, 2),
            solver="ode_adaptive",
            generator=torch.Generator().manual_seed(0),
        )
        solvers.sample(
            VPSDE(),
            _unit_score,
            shape=(2, 2),
            solver="ode_heun",
            steps=3,
            generator=torch.Generator().manual_seed(0),
        )


# -- checkpoints -----------------------------------------------------------------------------
def _flip_bytes_inside(path, tensor: torch.Tensor, count: int = 200) -> None:
    """Flip ``count`` bytes of ``tensor``'s storage where they sit in the file."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw[:64])
    assert at >= 0, "tensor bytes not found in the file"
    for i in range(at, at + min(count, len(raw))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_checkpoint_changed_on_disk_is_refused(tmp_path) -> None:
    """#13.4: 200 bytes flipped inside a tensor loaded without a word."""
    from scoresde.training import CheckpointError, load_checkpoint, save_checkpoint

    path = tmp_path / "ckpt.pt"
    w = torch.linspace(-1, 1, 1000)
    save_checkpoint({"step": 3, "w": w, "cfg": {"lr": 1e-3}}, path)
    assert torch.equal(load_checkpoint(path)["w"], w)
    _flip_bytes_inside(path, w)
    assert not torch.equal(torch.load(path, weights_only=True)["w"], w)  # torch reads it happily
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_code_in_a_checkpoint_is_refused_for_safety_without_torch_advice(tmp_path) -> None:
    """#13.12: an os.system pickle was called "truncated or corrupt", with torch's advice that
    weights_only=False "will likely succeed"."""
    from scoresde.training import CheckpointError, load_checkpoint
    from scoresde.training.checkpoint import FORMAT

    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "model": Payload()}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    msg = str(info.value)
    assert "refused" in msg and "for safety" in msg and "system" in msg
    assert "corrupt" not in msg and "weights_only" not in msg and "False" not in msg
    assert not sentinel.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02" + b"garbage" * 20)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(garbage)
    assert "weights_only" not in str(info.value)
