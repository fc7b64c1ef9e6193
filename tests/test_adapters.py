"""Adapters: diffusers and k-diffusion models sampled by our solvers reproduce the peers' own loops.

diffusers is part of the dev install. k-diffusion is installed without its dependencies
(``pip install --no-deps -r requirements-nodeps.txt``, part of README's test command and so of
.ci/run); only its ``sampling.py`` is loaded. Without it the k-diffusion tests fail, never skip.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import diffusers
import pytest
import torch
from torch import nn

import schedules as S
from scoresde import VPSDE, from_diffusers, from_k_diffusion, sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny float64 convolutions: intra-op threads only contend (20x slower on a busy machine)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _unet() -> nn.Module:
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return net.double().eval()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_matches_diffusers_loop(prediction_type):
    """Our ddim on m.grid(20) = DDIMScheduler(eta=0, set_alpha_to_one) on the same x_T."""
    unet = _unet()
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=prediction_type,
    )
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    scheduler.set_timesteps(20)
    x, theirs_nfe = x_T.clone(), 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t).sample
            theirs_nfe += 1
            x = scheduler.step(out, t, x, eta=0.0).prev_sample
    theirs = x

    m = from_diffusers(unet, scheduler)
    ours, stats = sample(m.sde, m.score_fn, x_T=x_T, solver="ddim", grid=m.grid(20))
    assert stats.nfe == theirs_nfe == 20
    # measured 8.1e-9 (epsilon), 1.2e-7 (v), 5.2e-8 (sample): diffusers' float32 alpha-bar
    # table; bound 4x (the former 1e-4 was 800-12,000x the measured error)
    measured = {"epsilon": 8.07e-9, "v_prediction": 1.16e-7, "sample": 5.16e-8}[prediction_type]
    assert _rel_err(ours, theirs) < 4 * measured
    # the check has teeth: the same loop one step shorter is far away
    shorter, _ = sample(m.sde, m.score_fn, x_T=x_T, solver="ddim", grid=m.grid(19))
    assert _rel_err(shorter, theirs) > 1e-3


def test_tabulated_process_is_exact_at_table_times():
    """alpha(t_k)^2 = alpha_bar[k]; log-SNR linear between; the VP identities hold."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    sched = S.TabulatedVP(ab)
    sde = VPSDE(sched)
    t_k = sched.time_of(torch.arange(1000))
    alpha, sigma = sde.marginal(t_k)
    torch.testing.assert_close(alpha**2, ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(ab), rtol=1e-12, atol=0)
    mid = 0.5 * (t_k[10] + t_k[11])
    lam = sde.log_snr(torch.stack([t_k[10], mid, t_k[11]]))
    torch.testing.assert_close(lam[1], 0.5 * (lam[0] + lam[2]), rtol=1e-12, atol=0)
    t = torch.tensor([0.0, 3e-4, 0.0123, 0.5, 0.99, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t[1:])), t[1:], rtol=1e-10, atol=0)
    a0, s0 = sde.marginal(0.0)
    assert float(a0) == 1.0 and float(s0) == 0.0
    # g^2 = d sigma^2/dt - 2 f sigma^2 (the moment ODE) inside a segment, by finite differences
    h = 1e-7
    for tc in (2e-4, 0.2503, 0.7777):
        v = lambda s: sde.marginal(s)[1] ** 2  # noqa: E731
        dv = (v(tc + h) - v(tc - h)) / (2 * h)
        lhs = sde.diffusion(tc) ** 2
        rhs = dv - 2 * sde.drift_coef(tc) * v(tc)
        assert abs(float(lhs - rhs)) < 1e-5 * float(lhs)
    # the transition kernel composes
    a_ts, s_ts = sde.transition(0.3, 0.6)
    a3, s3 = sde.marginal(0.3)
    a6, s6 = sde.marginal(0.6)
    torch.testing.assert_close(a_ts * a3, a6)
    torch.testing.assert_close(s_ts**2 + a_ts**2 * s3**2, s6**2)


def test_tabulated_schedule_round_trips_config():
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 50, dtype=torch.float64), 0)
    sched = S.TabulatedVP(ab)
    assert S.from_config(sched.to_config()) == sched
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.TabulatedVP(ab.flip(0))
    with pytest.raises(ValueError, match="inside"):
        S.TabulatedVP(torch.tensor([1.0, 0.5]))


def test_from_diffusers_rejects_unknown_prediction():
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="epsilon, v_prediction, sample"):
        from_diffusers(_unet(), scheduler, prediction_type="mu")


# -- k-diffusion --------------------------------------------------------------------------------
def _k_sampling():
    if importlib.util.find_spec("k_diffusion") is None:  # a failure, never a skip
        pytest.fail(
            "k-diffusion is missing; install it as README's test command does: "
            ".venv/bin/pip install --no-deps -r requirements-nodeps.txt"
        )
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import peer_adapters
    finally:
        sys.path.pop(0)
    return peer_adapters.load_k_diffusion_sampling()


class _Denoiser(nn.Module):
    """EDM-preconditioned small conv net: ``D = c_skip x + c_out F(c_in x, log sigma / 4)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        c_skip, c_out, c_in = 1 / (s**2 + 1), s / (s**2 + 1).sqrt(), 1 / (s**2 + 1).sqrt()
        h = torch.cat([c_in * x, (s.log() / 4).expand_as(x)], 1)
        return c_skip * x + c_out * self.conv2(torch.tanh(self.conv1(h)))


@pytest.mark.parametrize(
    ("ours", "theirs", "options"),
    [
        ("ode_euler", "sample_euler", {}),
        ("dpm_solver_pp_2m", "sample_dpmpp_2m", {"lower_order_final": False}),
    ],
)
def test_k_diffusion_samplers_match(ours, theirs, options):
    K = _k_sampling()
    net = _Denoiser().double().eval()
    m = from_k_diffusion(net, sigma_min=0.002, sigma_max=80.0)
    times = m.grid(12)
    sigmas = torch.cat([times, times.new_zeros(1)])
    x_T = 80.0 * torch.randn(
        3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    with torch.no_grad():
        ref = getattr(K, theirs)(net, x_T.clone(), sigmas, disable=True)
    got, stats = sample(m.sde, m.score_fn, x_T=x_T, solver=ours, grid=times, **options)
    assert stats.nfe == 12
    # float64 round-off: measured 4.8e-16 (euler), 5.4e-16 (2m); 1e-13 leaves room for other
    # BLAS builds, while any float32 step (~1e-7) or formula difference fails (was 1e-4)
    assert _rel_err(got, ref) < 1e-13
    # same grid as k-diffusion's own sigma schedule
    their_sigmas = K.get_sigmas_karras(12, 0.002, 80.0).double()[:-1]
    torch.testing.assert_close(times, their_sigmas, rtol=1e-6, atol=0)


def test_check_model_runs_on_an_adapted_diffusers_model():
    """The own-reference check takes an adapted model like any other process + score."""
    from scoresde.model_check import check_model

    m = from_diffusers(_unet().float(), diffusers.DDIMScheduler(num_train_timesteps=1000))
    result = check_model(m.sde, m.score_fn, (1, 8, 8), ["ddim"], (3, 6), n=4, reference_tol=1e-4)
    errors = [r["pathwise"] for r in result["records"]]
    assert errors[0] > errors[1] > 0
