"""run_study(model=...) on a tiny trained model, and the digits feature distance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scoresde.data import digits
from scoresde.harness import run_study
from scoresde.harness.features import digits_features, frechet_distance


def test_run_study_on_a_model_has_the_study_surface(ckpt, tmp_path):
    result = run_study(
        ["ddim", "ode_heun", "euler_maruyama"], model=ckpt, nfes=(5, 9, 17), n_samples=64
    )
    assert list(result.targets) == ["pathwise", "sliced_w2"]  # 2-D data: no digits features
    ddim = [r.error for r in result.rows("pathwise", "ddim")]
    assert ddim[0] > ddim[1] > ddim[2] > 0
    assert not result.rows("pathwise", "euler_maruyama")  # no pathwise error for SDE solvers
    em = result.rows("sliced_w2", "euler_maruyama")
    assert all(r.floor > 0 and r.floor == em[0].floor for r in em)  # two SDE references apart
    orders = {(o["solver"], o["target"]): o["fitted"] for o in result.orders()}
    assert 0.5 < orders[("ddim", "pathwise")] < 1.6
    assert "pathwise RMSE" in result.table() and "ode_heun" in result.orders_table()
    assert result.to_json(tmp_path / "s.json") and result.to_csv(tmp_path / "s.csv")


def test_run_study_rejects_a_bad_model():
    with pytest.raises(ValueError, match="expected a checkpoint or export path"):
        run_study(["ddim"], model=42)


@pytest.fixture(scope="module")
def halves():
    x = digits("all").x
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    return x[perm[:800]], x[perm[800:1600]]


def test_frechet_distance_of_digits_features(halves):
    f = digits_features()
    assert f.accuracy > 0.9  # held-out digits: the features separate the classes
    a, b = halves
    fa, fb = f(a), f(b)
    assert fa.shape == (800, 32) and fa.dtype == torch.float64
    assert frechet_distance(fa, fa) < 1e-6  # exact samples vs themselves
    floor = frechet_distance(fa, fb)  # two halves of the data: the sampling floor
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    blurred = F.conv2d(b, kernel[None, None], padding=1)
    noised = b + 0.5 * torch.randn(b.shape, generator=torch.Generator().manual_seed(2))
    assert frechet_distance(fa, f(blurred)) > 20 * floor
    assert frechet_distance(fa, f(noised)) > 2 * floor
    assert math.isclose(frechet_distance(fa, fb), frechet_distance(fb, fa), rel_tol=1e-6)


def test_frechet_distance_is_the_squared_bures_w2():
    from scoresde.harness.metrics import _empirical_moments, gaussian_w2

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 3, generator=g), 2 * torch.randn(300, 3, generator=g) + 1
    (mx, cx), (my, cy) = _empirical_moments(x), _empirical_moments(y)
    assert math.isclose(frechet_distance(x, y), gaussian_w2(mx, cx, my, cy) ** 2, rel_tol=1e-12)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(x, y[:, :2])
    with pytest.raises(ValueError, match="expected \\(n, 1, 8, 8\\)"):
        digits_features()(torch.zeros(4, 2))


def test_image_models_get_the_digits_frechet_distance():
    """A (sde, score_fn, shape) tuple of 8x8 one-channel images: the Frechet row is reported and
    shrinks as the ODE solver converges to the reference."""
    from scoresde.sde import VPSDE

    sde = VPSDE()

    def score_fn(x, t):  # exact score of N(0, 0.25 I) data: -x / (alpha^2 / 4 + sigma^2)
        alpha, sigma = sde.marginal(t)
        return -x / (alpha**2 / 4 + sigma**2).view(-1, 1, 1, 1)

    result = run_study(["ddim"], model=(sde, score_fn, (1, 8, 8)), nfes=(3, 9), n_samples=48)
    assert list(result.targets) == ["pathwise", "sliced_w2", "frechet_digits"]
    fd = [r.error for r in result.rows("frechet_digits", "ddim")]
    assert fd[0] > 4 * fd[1] > 0
