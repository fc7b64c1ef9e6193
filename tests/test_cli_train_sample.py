"""``scoresde train`` and ``scoresde sample`` end to end (tiny runs) and their error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoresde.cli import main
from scoresde.training import load_checkpoint

TINY_MLP = ["--hidden", "32", "--depth", "1", "--batch", "64", "--no-progress"]
TINY_UNET = [
    "--channels",
    "16",
    "--channel-mult",
    "1,2",
    "--num-res-blocks",
    "1",
    "--attn",
    "4",
    "--batch",
    "8",
    "--no-progress",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_train_then_sample_2d(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "moons",
                "--steps",
                "30",
                "--seed",
                "1",
                "--out",
                str(run),
                "--ckpt-every",
                "10",
                *TINY_MLP,
            ]
        )
        == 0
    )
    assert "trained 30 steps" in capsys.readouterr().out
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 30 and ckpt["config"]["data"]["name"] == "moons"
    assert (run / "metrics.jsonl").exists() and (run / "config.json").exists()
    out = tmp_path / "samples"
    args = [
        "sample",
        "--ckpt",
        str(run / "checkpoint.pt"),
        "--n",
        "300",
        "--solver",
        "euler_maruyama",
        "--steps",
        "20",
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    x = np.load(out / "samples.npy")
    assert x.shape == (300, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    assert main([*args[:-2], "--out", str(tmp_path / "again")]) == 0  # same seed, same samples
    assert np.array_equal(np.load(tmp_path / "again" / "samples.npy"), x)


def test_train_then_sample_conditional_images_with_guidance(tmp_path):
    run = tmp_path / "digits"
    assert (
        main(["train", "--data", "digits", "--cond", "--steps", "2", "--out", str(run), *TINY_UNET])
        == 0
    )
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert (
        ckpt["config"]["net"]["num_classes"] == 10
        and ckpt["config"]["loss"]["label_dropout"] == 0.1
    )
    out = tmp_path / "s"
    base = [
        "sample",
        "--ckpt",
        str(run / "checkpoint.pt"),
        "--n",
        "6",
        "--steps",
        "4",
        "--out",
        str(out),
    ]
    assert main([*base, "--label", "3", "--guidance", "1.5"]) == 0
    x = np.load(out / "samples.npy")
    assert x.shape == (6, 1, 8, 8) and np.isfinite(x).all()
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    assert main(base) == 0  # unconditional sampling through the null label


def test_resume_from_the_cli_equals_a_straight_run(tmp_path, capsys):
    common = ["--data", "moons", "--seed", "2", "--ckpt-every", "5", "--warmup", "3", *TINY_MLP]
    assert main(["train", *common, "--steps", "12", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", *common, "--steps", "7", "--out", str(tmp_path / "b")]) == 0
    assert main(["train", *common, "--steps", "12", "--out", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                *common,
                "--steps",
                "12",
                "--out",
                str(tmp_path / "b"),
                "--lr",
                "0.5",
                "--resume",
            ]
        )
        == 2
    )
    assert "lr: checkpoint 0.001 vs now 0.5" in capsys.readouterr().err
    assert main(["train", *common, "--steps", "12", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["ema"][k], b["ema"][k])


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    assert main(["train", "--data", "mnist", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'mnist'; available: moons, swiss_roll" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "moons", "--steps", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "'0' must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "moons", "--out", str(tmp_path), "--sde", "edm"])
    assert "invalid choice: 'edm'" in capsys.readouterr().err
    assert main(["train", "--data", "moons", "--out", str(tmp_path), "--net", "unet"]) == 2
    assert "needs square images" in capsys.readouterr().err
    assert main(["train", "--data", "moons", "--out", str(tmp_path), "--cond"]) == 2
    assert "--cond needs labelled data" in capsys.readouterr().err
    assert main(["train", "--data", "moons", "--out", str(tmp_path), "--device", "cuda:7"]) == 2
    assert "device='cuda:7'" in capsys.readouterr().err
    assert (
        main(["train", "--data", "moons", "--out", str(tmp_path), "--loss", "ddpm", "--sde", "ve"])
        == 2
    )
    assert "sde.ddpm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "digits", "--out", str(tmp_path), "--channel-mult", "1,x"])
    assert "'1,x' must be comma-separated integers" in capsys.readouterr().err

    missing = tmp_path / "none.pt"
    assert main(["sample", "--ckpt", str(missing), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    assert main(["sample", "--ckpt", str(garbage), "--out", str(tmp_path)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--data", "moons", "--steps", "1", "--out", str(run), *TINY_MLP]) == 0
    ckpt = str(run / "checkpoint.pt")
    assert main(["sample", "--ckpt", ckpt, "--out", str(tmp_path), "--solver", "rk99"]) == 2
    assert "unknown solver 'rk99'; available solvers:" in capsys.readouterr().err
    assert main(["sample", "--ckpt", ckpt, "--out", str(tmp_path), "--label", "1"]) == 2
    assert "not class-conditional" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", ckpt, "--out", str(tmp_path), "--n", "-3"])
    assert "'-3' must be a positive integer" in capsys.readouterr().err
