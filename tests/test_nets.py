"""Score networks and the parametrisation wrapper, checked against exact scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scoresde import VESDE, VPSDE, Gaussian, SubVPSDE, sample
from scoresde.nets import MLP, ScoreModel, UNet, build_net
from scoresde.nets.unet import AttnBlock, ResBlock
from solvers.parametrization import convert

TARGET = Gaussian([0.5, -1.0], [[1.0, 0.3], [0.3, 0.5]])


class OracleNet(nn.Module):
    """Returns the exact ``kind`` prediction of TARGET, undoing the wrapper's c_in and c_noise."""

    def __init__(self, sde, kind: str, time_input: str, sigma_data: float) -> None:
        super().__init__()
        self.sde, self.kind, self.time_input, self.sigma_data = sde, kind, time_input, sigma_data

    def forward(self, x_in, c, y=None):
        if self.time_input == "t":
            t = c.double() * self.sde.T
        else:  # c = -lambda / 4
            t = self.sde.t_from_log_snr(-4.0 * c.double())
        alpha, sigma = self.sde.marginal(t)
        x = x_in.double() * torch.sqrt(alpha**2 * self.sigma_data**2 + sigma**2)[:, None]
        score = TARGET.score(x, t, self.sde)
        return convert(score, "score", self.kind, x, alpha, sigma).to(x_in.dtype)


def _perturb(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised output layers random weights (so outputs depend on inputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("kind", ["eps", "x0", "score", "v"])
@pytest.mark.parametrize("time_input", ["log_snr", "t"])
def test_wrapper_turns_every_parametrisation_into_the_exact_score(sde, kind, time_input):
    sd = 0.8
    model = ScoreModel(OracleNet(sde, kind, time_input, sd), sde, kind, time_input, sigma_data=sd)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(64, generator=g, dtype=torch.float64)
    got = model.score(x, t)
    want = TARGET.score(x, t, sde)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # and the other conversions are consistent with the score
    alpha, sigma = sde.marginal(t)
    torch.testing.assert_close(
        model.predict(x, t, "x0"),
        convert(want, "score", "x0", x, alpha, sigma),
        rtol=1e-9,
        atol=1e-9,
    )


def test_wrapper_score_fn_drives_a_sampler_like_the_exact_score():
    sde = VPSDE()
    model = ScoreModel(OracleNet(sde, "v", "log_snr", 1.0), sde, "v")
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample(sde, model.score_fn(), x_T=x_T, steps=20, generator=torch.Generator().manual_seed(3))
    b = sample(
        sde, TARGET.score_fn(sde), x_T=x_T, steps=20, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-8, atol=1e-8)


def test_wrapper_feeds_scaled_input_and_log_snr_feature():
    seen = {}

    class Recorder(nn.Module):
        def forward(self, x, c, y=None):
            seen["x"], seen["c"] = x, c
            return torch.zeros_like(x)

    sde = VESDE()
    model = ScoreModel(Recorder(), sde, sigma_data=0.5)
    x = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    model(x, t)
    _, sigma = sde.marginal(t)
    torch.testing.assert_close(seen["x"], x / torch.sqrt(0.25 + sigma**2)[:, None])
    torch.testing.assert_close(seen["c"], -sde.log_snr(t) / 4)


def test_wrapper_rejects_bad_settings():
    with pytest.raises(ValueError, match="prediction"):
        ScoreModel(MLP(2), VPSDE(), prediction="noise")
    with pytest.raises(ValueError, match="time_input"):
        ScoreModel(MLP(2), VPSDE(), time_input="sigma")
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(MLP(2), VPSDE(), sigma_data=0.0)
    model = ScoreModel(MLP(2), VPSDE())
    with pytest.raises(ValueError, match="t has shape"):
        model(torch.zeros(4, 2), torch.zeros(3))


def test_mlp_shapes_conditioning_and_labels():
    torch.manual_seed(0)
    net = MLP(4, hidden=32, depth=2, num_classes=3)
    x = torch.randn(5, 4)
    assert torch.equal(net(x, torch.zeros(5)), torch.zeros(5, 4))  # zero-initialised output
    _perturb(net)
    out = net(x, torch.zeros(5))
    assert out.shape == (5, 4)
    assert net(x.reshape(5, 1, 2, 2), torch.zeros(5)).shape == (5, 1, 2, 2)
    assert not torch.allclose(out, net(x, torch.ones(5)))  # depends on the noise level
    y = torch.tensor([0, 1, 2, 3, 0])  # 3 is the null label
    assert not torch.allclose(
        net(x, torch.zeros(5), y), net(x, torch.zeros(5), torch.zeros(5, dtype=torch.long))
    )
    with pytest.raises(ValueError, match="outside 0..3"):
        net(x, torch.zeros(5), torch.tensor([0, 1, 2, 4, 0]))
    with pytest.raises(ValueError, match="expected \\(B, 4\\)"):
        net(torch.randn(5, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="no class embedding"):
        MLP(4)(x, torch.zeros(5), y)
    with pytest.raises(ValueError, match="hidden"):
        MLP(4, hidden=0)


def _count(module: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in module.modules())


@pytest.mark.parametrize(
    "cfg, shape, n_attn",
    [
        (
            dict(
                in_channels=1,
                image_size=8,
                channels=16,
                channel_mult=(1, 2),
                num_res_blocks=1,
                attn_resolutions=(4,),
            ),
            (2, 1, 8, 8),
            1 + 2 + 1,
        ),
        (
            dict(
                in_channels=3,
                image_size=16,
                channels=32,
                channel_mult=(1, 2, 2),
                num_res_blocks=2,
                attn_resolutions=(16, 4),
                num_heads=2,
            ),
            (2, 3, 16, 16),
            2 * (2 + 3) + 1,
        ),
        (
            dict(
                in_channels=3,
                image_size=16,
                channels=16,
                channel_mult=(1, 1),
                num_res_blocks=1,
                attn_resolutions=(),
            ),
            (2, 3, 16, 16),
            1,
        ),
    ],
)
def test_unet_shapes_and_attention_placement(cfg, shape, n_attn):
    torch.manual_seed(0)
    net = UNet(**cfg)
    # attention after every block at the listed resolutions (down: n, up: n + 1), plus the middle
    assert _count(net, AttnBlock) == n_attn
    x = torch.randn(shape)
    out = net(x, torch.zeros(shape[0]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output convolution


def test_unet_noise_embedding_reaches_every_resblock_and_labels_work():
    torch.manual_seed(0)
    net = _perturb(
        UNet(
            1,
            8,
            channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            num_classes=10,
            dropout=0.0,
        )
    )
    x = torch.randn(3, 1, 8, 8)
    c = torch.tensor([-1.0, 0.0, 1.0])
    net(x, c, torch.tensor([0, 5, 10])).square().sum().backward()
    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * 1 + 2 + 2 * 2  # down, middle, up
    for blk in blocks:  # the embedding feeds every block: each projection gets a gradient
        assert blk.emb.weight.grad is not None and blk.emb.weight.grad.abs().sum() > 0
    with torch.no_grad():
        a = net(x, c, torch.tensor([1, 1, 1]))
        b = net(x, c, torch.tensor([2, 2, 2]))
        d = net(x, c + 0.5, torch.tensor([1, 1, 1]))
    assert not torch.allclose(a, b) and not torch.allclose(a, d)


def test_unet_rejects_bad_configurations():
    with pytest.raises(ValueError, match="not among the U-Net resolutions"):
        UNet(3, 32, channel_mult=(1, 2), attn_resolutions=(8,))
    with pytest.raises(ValueError, match="not divisible"):
        UNet(3, 12, channel_mult=(1, 2, 2, 2), attn_resolutions=())
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(3, 32, channel_mult=())
    net = UNet(1, 8, channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    with pytest.raises(ValueError, match="expected \\(B, 1, H, W\\)"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(2, 1, 7, 7), torch.zeros(2))


def test_build_net_round_trips_the_config():
    torch.manual_seed(0)
    for net in (
        MLP(3, hidden=16, depth=1, num_classes=2),
        UNet(1, 8, channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    ):
        _perturb(net).eval()
        clone = build_net(net.config).eval()
        clone.load_state_dict(net.state_dict())
        x = torch.randn(2, 3) if isinstance(net, MLP) else torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(clone(x, torch.ones(2)), net(x, torch.ones(2)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown net"):
        build_net({"name": "resnet"})
    with pytest.raises(ValueError, match="bad options"):
        build_net({"name": "mlp", "dim": 2, "width": 3})


def test_bf16_autocast_forward_returns_input_dtype():
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(
        _perturb(
            UNet(1, 8, channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
        ),
        sde,
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.full((2,), 0.5))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = model(x, torch.full((2,), 0.5))
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
