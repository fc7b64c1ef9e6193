"""Faults found by probing the CLI and API (issue #13): each test reproduces one and checks that
it now gives a clear error or a correct result. README's reliability table lists them."""

from __future__ import annotations

import json
import os
import re
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

    def run(solver: str, **steps: int) -> None:
        gen = torch.Generator().manual_seed(0)
        solvers.sample(VPSDE(), _unit_score, shape=(2, 2), solver=solver, generator=gen, **steps)

    with pytest.warns(UserWarning, match="chooses its own steps"):
        run("ode_adaptive", steps=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run("ode_adaptive")
        run("ode_heun", steps=3)


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


# -- the command line: train, likelihood -----------------------------------------------------
TINY = ["--data", "moons", "--hidden", "16", "--depth", "1", "--batch", "32", "--no-progress"]


def _train(out, *extra: str) -> int:
    from scoresde.cli import main

    return main(["train", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert _train(out, "--steps", "4", "--log-every", "2") == 0
    return out / "checkpoint.pt"


def test_a_fresh_run_starts_a_fresh_metrics_log(tmp_path) -> None:
    """#13.8: a run killed before its first checkpoint, restarted fresh, kept the old lines."""
    out = tmp_path / "run"
    out.mkdir()
    stale = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(50, 500, 50))
    (out / "metrics.jsonl").write_text(stale)
    assert _train(out, "--steps", "4", "--log-every", "2") == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_a_diverging_run_names_no_checkpoint_it_never_wrote(tmp_path, capsys) -> None:
    """#13.9: --lr 1e6 --grad-clip 0 ended in a traceback naming an unwritten checkpoint."""
    out = tmp_path / "run"
    code = _train(out, "--steps", "20", "--log-every", "1", "--lr", "1e6", "--grad-clip", "0")
    err = capsys.readouterr().err
    assert code == 1 and "loss became" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists()


def test_resume_below_the_checkpoint_step_says_so(tiny_ckpt, tmp_path, capsys) -> None:
    """#13.9: --resume with --steps below the checkpoint's step printed "trained None steps"."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(tiny_ckpt.read_bytes())
    capsys.readouterr()
    assert _train(out, "--steps", "2", "--log-every", "2", "--resume") == 2
    assert "past steps=2" in capsys.readouterr().err
    assert _train(out, "--steps", "4", "--log-every", "2", "--resume") == 0
    text = capsys.readouterr().out
    assert "already at step 4" in text and "None" not in text and "nan" not in text


def test_outputs_are_checked_before_the_work(tmp_path, capsys) -> None:
    """#13.7: a bad --out or --json threw a finished computation away with a traceback."""
    from scoresde.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert _train(a_file, "--steps", "4") == 2
    assert "is an existing file" in capsys.readouterr().err
    # checked before the checkpoint is even opened: the checkpoint here does not exist
    code = main(["likelihood", "--ckpt", "missing.pt", "--json", str(a_file / "r.json")])
    assert code == 2 and "cannot write --json" in capsys.readouterr().err
    assert main(["likelihood", "--ckpt", "missing.pt", "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_likelihood_cli_states_cost_data_and_steps(tiny_ckpt, tmp_path, capsys) -> None:
    """#13.1, #13.5, #13.13: fixed-step methods take --steps; the output names the data scored
    (held out, not training points) and the cost up front; --json may create its folder."""
    from scoresde.cli import main

    js = tmp_path / "new" / "ll.json"
    args = ["likelihood", "--ckpt", str(tiny_ckpt), "--n", "4", "--no-progress"]
    assert main([*args, "--method", "euler", "--steps", "6", "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("cost:") and "divergence=exact" in text and "6 evaluations" in text
    assert "fresh draws" in text and "euler, 6 steps" in text
    res = json.loads(js.read_text())
    assert res["nfe"] == [6] and res["steps"] == 6 and "fresh draws" in res["scored"]
    assert main([*args, "--method", "dopri5", "--steps", "6"]) == 2
    assert "--steps 6 is for fixed-step methods" in capsys.readouterr().err
    assert main([*args, "--method", "rk45", "--steps", "6"]) == 2
    assert "unknown --method 'rk45'; expected one of dopri8, dopri5" in capsys.readouterr().err
    assert main([*args, "--split", "train", "--method", "euler", "--steps", "2"]) == 0
    assert "training data" in capsys.readouterr().out


def test_likelihood_cli_reports_nan_and_a_changed_checkpoint(tiny_ckpt, tmp_path, capsys) -> None:
    """#13.2, #13.4 from the command line: no traceback, exit code 2."""
    from scoresde.cli import main
    from scoresde.training import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_ckpt)
    for state in (ckpt["model"], ckpt["ema"]):
        w = next(v for k, v in state.items() if k.endswith("weight"))
        w.fill_(float("nan"))
    nan_path = tmp_path / "nan.pt"
    save_checkpoint(
        {k: v for k, v in ckpt.items() if k not in ("format", "version", "checksum")}, nan_path
    )
    args = ["--n", "2", "--no-progress", "--method", "euler", "--steps", "2"]
    assert main(["likelihood", "--ckpt", str(nan_path), *args]) == 2
    assert "NaN or Inf at t=" in capsys.readouterr().err

    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(tiny_ckpt.read_bytes())
    ema = load_checkpoint(flipped)["ema"]
    _flip_bytes_inside(flipped, max(ema.values(), key=lambda v: v.numel()))
    assert main(["likelihood", "--ckpt", str(flipped), *args]) == 2
    assert "checksum" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(flipped), "--out", str(tmp_path / "s"), "--n", "2"]) == 2
    assert "checksum" in capsys.readouterr().err


def test_digits_likelihood_scores_the_held_out_split() -> None:
    """#13.5: `likelihood` scored training images of digits without saying so."""
    pytest.importorskip("sklearn")
    from scoresde.data import get_dataset

    data = get_dataset("digits")
    x, what = data.heldout(50, seed=0)
    train_rows = {tuple(r.tolist()) for r in data.x.flatten(1)}
    assert "held-out" in what and not any(tuple(r.tolist()) in train_rows for r in x.flatten(1))


# -- packaging and help ----------------------------------------------------------------------
REPO = os.path.join(os.path.dirname(__file__), os.pardir)


def _read(name: str) -> str:
    with open(os.path.join(REPO, name), encoding="utf-8") as fh:
        return fh.read()


def test_version_license_typing_and_changelog(capsys) -> None:
    """#13.15-16: `scoresde --version`, LICENSE (MIT), py.typed, a CHANGELOG with the version,
    one source of truth for the version."""
    import tomllib

    import scoresde
    from scoresde.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert (
        info.value.code == 0
        and capsys.readouterr().out.strip() == f"scoresde {scoresde.__version__}"
    )
    project = tomllib.loads(_read("pyproject.toml"))
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "scoresde.__version__"}
    assert project["project"]["license"] == {"text": "MIT"} and _read("LICENSE").startswith(
        "MIT License"
    )
    for pkg in ("scoresde", "solvers", "schedules"):
        assert os.path.isfile(os.path.join(REPO, pkg, "py.typed"))
        assert project["tool"]["setuptools"]["package-data"][pkg] == ["py.typed"]
    assert f"## {scoresde.__version__}" in _read("CHANGELOG.md")


def test_help_shows_defaults_without_rst_markup(capsys) -> None:
    """#13.15: subcommand help shows defaults; the top-level help has no reST markup."""
    from scoresde.cli import main

    for argv in ([], ["train"], ["likelihood"], ["check"]):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text, argv
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: 10000)" in text and "(default: vp)" in text and "(default: 0)" in text


def _bash_commands(text: str) -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)
    return [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_commands_run_as_written_and_state_their_cost() -> None:
    """#13.15: a bare `torchrun` line (fails without an activated venv), `guided.png` written to
    the repository root, no CPU times for the long commands."""
    text = _read("README.md")
    for line in _bash_commands(text):
        first = line.split()[0]
        assert first.startswith(".venv/bin/") or first == "python3", line
        for out in re.findall(r"--out (\S+)", line):
            assert out.startswith("runs/"), line
    assert "10,000 moons steps take about 5 minutes" in text
    assert "digits U-Net take hours on a CPU" in text


def test_scatter_title_counts_points_outside_the_frame(tmp_path, monkeypatch) -> None:
    """#13.15: the title read "2 of 4000 of points outside the frame"."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from scoresde.plotting import save_scatter

    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, t, **kw: titles.append(t))
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(4000, 2, generator=g) * 2 - 1
    pts[:2] = 100.0
    save_scatter(pts, tmp_path / "s.png", reference=torch.rand(4000, 2, generator=g) * 6 - 3)
    assert titles == ["2 of 4000 points outside the frame"]


def test_the_reliability_table_names_tests_that_exist() -> None:
    """README's reliability table points at the tests that reproduce each fault."""
    text = _read("README.md")
    section = text.split("## Reliability: faults tried and what happens", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", section))
    here = set(re.findall(r"^def (test_\w+)", _read("tests/test_hardening.py"), re.M))
    assert len(named) >= 15 and named <= here, sorted(named - here)


# -- scoresde check --------------------------------------------------------------------------
def test_check_skips_budgets_that_pay_for_no_step(tmp_path, capsys) -> None:
    """#13.6: `scoresde check --solvers ode_rk4 --nfe 2` crashed with a TypeError."""
    from scoresde.cli import main
    from scoresde.harness import run_study

    with pytest.raises(ValueError, match="ode_rk4 needs NFE >= 5"):
        run_study(["ode_rk4"], ["gaussian_iso_2d"], nfes=[2])
    res = run_study(["ode_rk4", "ddim"], ["gaussian_iso_2d"], nfes=[2, 4])
    assert res.settings["skipped"] == [
        {"solver": "ode_rk4", "nfe": 2, "min_nfe": 5},
        {"solver": "ode_rk4", "nfe": 4, "min_nfe": 5},
    ]
    assert "ddim" in res.orders_table() and "ode_rk4" not in res.table()
    out = str(tmp_path / "check")
    assert main(["check", "--solvers", "ode_rk4", "--nfe", "2", "--out", out, "--quiet"]) == 2
    assert "ode_rk4 needs NFE >= 5" in capsys.readouterr().err
    args = ["check", "--solvers", "ode_rk4", "ddim", "--nfe", "2", "4"]
    args += ["--target", "gaussian_iso_2d", "--quiet", "--no-plot", "--out", out]
    assert main(args) == 0
    assert "note: ode_rk4 skipped at NFE 2" in capsys.readouterr().out
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["check", "--out", str(a_file), "--quiet"]) == 2
    assert "is an existing file" in capsys.readouterr().err
