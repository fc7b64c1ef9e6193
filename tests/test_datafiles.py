"""Your own data: image folders and .npy/.npz files, for the API and ``scoresde train --data``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.cli import main
from scoresde.data import as_data
from scoresde.datafiles import load_path
from scoresde.training import load_checkpoint


def _png(path, value: int, size=(6, 6), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_class_folders_give_labels_scaled_pixels(tmp_path):
    _png(tmp_path / "cats" / "a.png", 0)
    _png(tmp_path / "cats" / "b.png", 255)
    _png(tmp_path / "dogs" / "c.jpg", 255)
    (tmp_path / "dogs" / "notes.txt").write_text("ignored: not an image")
    data = load_path(str(tmp_path))
    assert data.x.shape == (3, 1, 6, 6) and data.info.num_classes == 2
    assert data.y.tolist() == [0, 0, 1]
    assert float(data.x[0].max()) == -1.0 and float(data.x[1].min()) == 1.0
    assert data.info.value_range == (-1.0, 1.0) and data.info.is_image


def test_colour_and_resize(tmp_path):
    _png(tmp_path / "a.png", 10, (6, 6))
    _png(tmp_path / "b.png", 20, (10, 7), mode="RGB")
    with pytest.raises(ValueError, match=r"mixed image sizes.*6x6.*10x7.*--image-size"):
        load_path(str(tmp_path))
    data = load_path(str(tmp_path), image_size=4)
    assert data.x.shape == (2, 3, 4, 4) and data.y is None
    assert data.x.min() >= -1 and data.x.max() <= 1


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        load_path(str(tmp_path))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_path(str(tmp_path))
    (tmp_path / "broken.png").unlink()
    _png(tmp_path / "top.png", 3)
    _png(tmp_path / "cls" / "x.png", 3)
    with pytest.raises(ValueError, match="both at the top level"):
        load_path(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        load_path(str(tmp_path / "nowhere"))


def test_arrays(tmp_path):
    pts = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    data = as_data(str(tmp_path / "pts.npy"))
    assert torch.equal(data.x, torch.from_numpy(pts)) and data.info.value_range is None
    imgs = np.full((4, 5, 5, 3), 255, dtype=np.uint8)  # channels-last uint8 images
    np.savez(tmp_path / "imgs.npz", x=imgs, y=np.array([0, 1, 1, 2]))
    data = load_path(str(tmp_path / "imgs.npz"))
    assert data.x.shape == (4, 3, 5, 5) and float(data.x.min()) == 1.0
    assert data.info.num_classes == 3
    np.savez(tmp_path / "two.npz", a=pts, b=pts)
    with pytest.raises(ValueError, match=r"holds arrays \['a', 'b'\]"):
        load_path(str(tmp_path / "two.npz"))
    bad = pts.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        load_path(str(tmp_path / "nan.npy"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read .*junk.npy"):
        load_path(str(tmp_path / "junk.npy"))


def test_train_on_an_image_folder_from_the_cli(tmp_path, capsys):
    for k in range(4):
        _png(tmp_path / "imgs" / f"c{k % 2}" / f"{k}.png", 60 * k, (8, 8))
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "imgs"), "--cond", "--steps", "2", "--out", str(out)]
    tiny = ["--net", "mlp", "--hidden", "16", "--depth", "1"]  # the data path is under test
    assert main([*args, *tiny, "--batch", "4", "--no-progress"]) == 0
    cfg = load_checkpoint(out / "checkpoint.pt")["config"]
    assert cfg["data"]["shape"] == [1, 8, 8] and cfg["data"]["num_classes"] == 2
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset" in err and "moons" in err and "no such path" in err
