"""Classifier / classifier-free guidance and inpainting, checked against closed-form posteriors."""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from scoresde import VESDE, VPSDE, Gaussian, GaussianMixture, sample
from scoresde.guidance import (
    classifier_free_guidance,
    classifier_guidance,
    classifier_log_prob,
    gaussian_conditional,
    inpaint,
    linear_gaussian_log_likelihood,
    linear_gaussian_posterior,
)

F64 = torch.float64

PRIOR = Gaussian(
    torch.tensor([0.5, -1.0, 0.3], dtype=F64),
    torch.tensor([[1.0, 0.5, 0.2], [0.5, 0.8, -0.3], [0.2, -0.3, 0.6]], dtype=F64),
)
A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=F64)
Y = torch.tensor([1.0, 0.2], dtype=F64)


def _moment_errors(
    x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor
) -> tuple[float, float, float]:
    """Max |mean error| in standard errors, max |cov error|, and the Bures-Wasserstein W2
    between N(sample moments) and N(mean, cov)."""
    n = x.shape[0]
    m_hat, c_hat = x.mean(0), torch.cov(x.T)
    z = ((m_hat - mean).abs() / torch.sqrt(torch.diagonal(cov) / n)).max()
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root @ c_hat @ root).clamp_min(0).sqrt().sum()
    w2sq = (m_hat - mean).pow(2).sum() + torch.trace(c_hat + cov) - 2 * cross
    return float(z), float((c_hat - cov).abs().max()), math.sqrt(max(float(w2sq), 0.0))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_exact_likelihood_guidance_is_the_posterior_score(sde) -> None:
    """score_prior + grad log p(y | x_t) is exactly the score of N(alpha m_post, alpha^2 C_post +
    sigma^2 I), the diffused posterior, at every x and t."""
    R = 0.05
    m_post, C_post = linear_gaussian_posterior(PRIOR, A, R, Y)
    post = Gaussian(m_post, C_post)
    guided = classifier_guidance(
        PRIOR.score_fn(sde), linear_gaussian_log_likelihood(PRIOR, sde, A, R, Y), scale=1.0
    )
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(64, 3, generator=g, dtype=F64)
    t = 1e-3 + 0.999 * torch.rand(64, generator=g, dtype=F64)
    torch.testing.assert_close(guided(x, t), post.score(x, t, sde), rtol=1e-9, atol=1e-9)
    # the same with one shared time (the samplers' case)
    t1 = torch.full((64,), 0.37, dtype=F64)
    torch.testing.assert_close(guided(x, t1), post.score(x, t1, sde), rtol=1e-9, atol=1e-9)
    # under no_grad, as inside solvers.sample
    with torch.no_grad():
        torch.testing.assert_close(guided(x, t1), post.score(x, t1, sde), rtol=1e-9, atol=1e-9)


def test_linear_gaussian_posterior_formulas() -> None:
    """Against conditioning the joint Gaussian of (x, y) directly, and the noise-free limit."""
    R = torch.diag(torch.tensor([0.05, 0.2], dtype=F64))
    m_post, C_post = linear_gaussian_posterior(PRIOR, A, R, Y)
    C = PRIOR.cov
    joint_cov = torch.cat([torch.cat([C, C @ A.T], 1), torch.cat([A @ C, A @ C @ A.T + R], 1)], 0)
    joint = Gaussian(torch.cat([PRIOR.mean, A @ PRIOR.mean]), joint_cov)
    mean_c, cov_c = gaussian_conditional(joint, [3, 4], Y)
    torch.testing.assert_close(m_post, mean_c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(C_post, cov_c, rtol=1e-10, atol=1e-12)
    # selection A with R -> 0 recovers the conditional of the missing coordinates
    sel = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    m0, C0 = linear_gaussian_posterior(PRIOR, sel, 1e-12, torch.tensor([1.5], dtype=F64))
    mc, cc = gaussian_conditional(PRIOR, [0], torch.tensor([1.5], dtype=F64))
    torch.testing.assert_close(m0[1:], mc, rtol=0, atol=1e-9)
    torch.testing.assert_close(C0[1:, 1:], cc, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="noise_cov"):
        linear_gaussian_posterior(PRIOR, A, torch.zeros(2, 2), Y)
    with pytest.raises(ValueError, match="A has shape"):
        linear_gaussian_posterior(PRIOR, torch.ones(2, 4), 0.1, Y)


@pytest.mark.parametrize("solver", solvers.available("sde"))
def test_guided_sampling_recovers_posterior_with_every_sde_solver(solver: str) -> None:
    """Sampling with the exactly guided score gives N(m_post, C_post); the tolerance covers the
    Monte-Carlo error of 2,000 samples and the discretisation error of 200 steps."""
    R = 0.2
    sde = VPSDE()
    m_post, C_post = linear_gaussian_posterior(PRIOR, A, R, Y)
    guided = classifier_guidance(
        PRIOR.score_fn(sde), linear_gaussian_log_likelihood(PRIOR, sde, A, R, Y)
    )
    x, stats = sample(
        sde,
        guided,
        shape=(2000, 3),
        solver=solver,
        steps=200,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    z, cov_err, w2 = _moment_errors(x, m_post, C_post)
    assert z < 4.5, f"mean off by {z:.1f} standard errors"
    assert cov_err < 0.03 and w2 < 0.05, (cov_err, w2)


def test_scale_zero_is_the_prior_and_scale_sharpens() -> None:
    sde = VPSDE()
    ll = linear_gaussian_log_likelihood(PRIOR, sde, A, 0.2, Y)
    x = torch.randn(16, 3, dtype=F64)
    t = torch.full((16,), 0.3, dtype=F64)
    torch.testing.assert_close(
        classifier_guidance(PRIOR.score_fn(sde), ll, 0.0)(x, t), PRIOR.score(x, t, sde)
    )
    s1 = classifier_guidance(PRIOR.score_fn(sde), ll, 1.0)(x, t)
    s3 = classifier_guidance(PRIOR.score_fn(sde), ll, 3.0)(x, t)
    torch.testing.assert_close(s3 - PRIOR.score(x, t, sde), 3 * (s1 - PRIOR.score(x, t, sde)))
    with pytest.raises(ValueError, match="scale"):
        classifier_guidance(PRIOR.score_fn(sde), ll, float("nan"))
    bad = classifier_guidance(PRIOR.score_fn(sde), lambda x, t: x.sum(), 1.0)
    with pytest.raises(ValueError, match="log_prob_y_fn"):
        bad(x, t)


MIX = GaussianMixture([0.3, 0.7], [[-1.5, 0.5], [1.0, -1.0]], [[0.2, 0.5], [0.4, 0.1]])


def _component_score(sde):
    """The exact class-conditional score s(x, t, y) of the mixture: component y, diffused;
    label 2 (the null label) is the whole mixture."""
    comps = [Gaussian(MIX.means[k], MIX.covs[k]) for k in range(2)]

    def score(x, t, y):
        out = MIX.score(x, t, sde)
        for k in range(2):
            sel = y == k
            if bool(sel.any()):
                out[sel] = comps[k].score(x[sel], t[sel], sde)
        return out

    return score, comps


def test_bayes_classifier_guidance_gives_the_class_score() -> None:
    """The exact noisy classifier p(y | x_t) = softmax(log w_k + log N_k(x_t)) turns the mixture
    score into the score of component y (Bayes' rule), exactly."""
    sde = VPSDE()
    _, comps = _component_score(sde)

    def logits(x, t):
        return torch.stack(
            [math.log(float(MIX.weights[k])) + comps[k].log_prob_t(x, t, sde) for k in range(2)], 1
        )

    x = torch.randn(32, 2, dtype=F64)
    t = 1e-3 + torch.rand(32, dtype=F64) * 0.99
    for label in (0, 1):
        guided = classifier_guidance(MIX.score_fn(sde), classifier_log_prob(logits, label))
        torch.testing.assert_close(
            guided(x, t), comps[label].score(x, t, sde), rtol=1e-8, atol=1e-8
        )


def test_classifier_free_guidance_formula() -> None:
    sde = VPSDE()
    cond, comps = _component_score(sde)
    x = torch.randn(24, 2, dtype=F64)
    t = torch.full((24,), 0.2, dtype=F64)
    y = torch.randint(0, 2, (24,), generator=torch.Generator().manual_seed(0))
    s_c, s_u = cond(x, t, y), MIX.score(x, t, sde)
    for w in (0.0, 1.0, 3.5):
        fused = classifier_free_guidance(cond, y, w, null_label=2)(x, t)
        split = classifier_free_guidance(cond, y, w, null_label=2, batched=False)(x, t)
        torch.testing.assert_close(fused, (1 + w) * s_c - w * s_u)
        torch.testing.assert_close(split, fused)
    # a scalar class is broadcast over the batch; w = -1 is the unconditional model
    torch.testing.assert_close(
        classifier_free_guidance(cond, 1, 0.0, 2)(x, t), comps[1].score(x, t, sde)
    )
    torch.testing.assert_close(classifier_free_guidance(cond, 1, -1.0, 2)(x, t), s_u)
    with pytest.raises(ValueError, match="batch size"):
        classifier_free_guidance(cond, y[:5], 1.0, 2)(x, t)


def test_classifier_free_guidance_samples_the_class() -> None:
    """w = 0 with the exact conditional score samples component y of the mixture."""
    sde = VPSDE()
    cond, comps = _component_score(sde)
    x, _ = sample(
        sde,
        classifier_free_guidance(cond, 0, 0.0, 2),
        shape=(2000, 2),
        steps=100,
        solver="euler_maruyama",
        dtype=F64,
        generator=torch.Generator().manual_seed(1),
    )
    z, cov_err, _ = _moment_errors(x, comps[0].mean, comps[0].cov)
    assert z < 4.5 and cov_err < 0.05


def test_classifier_free_guidance_with_a_class_conditional_net() -> None:
    """The wrapper drives the library's class-conditional ScoreModel (null label = num_classes)."""
    nets = pytest.importorskip("scoresde.nets")
    sde = VPSDE()
    torch.manual_seed(0)
    model = nets.ScoreModel(nets.MLP(2, hidden=32, depth=1, embed_dim=16, num_classes=3), sde)
    guided = classifier_free_guidance(model.score, 1, 2.0, model.null_label)
    x = torch.randn(8, 2)
    t = torch.full((8,), 0.5)
    with torch.no_grad():
        expect = 3.0 * model.score(x, t, torch.ones(8, dtype=torch.long)) - 2.0 * model.score(
            x, t, torch.full((8,), 3, dtype=torch.long)
        )
        torch.testing.assert_close(guided(x, t), expect, rtol=1e-5, atol=1e-5)
    out, stats = sample(
        sde, guided, shape=(8, 2), steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (8, 2) and bool(torch.isfinite(out).all())


# -- inpainting ---------------------------------------------------------------------------------
def _known(n: int, value: float) -> tuple[torch.Tensor, torch.Tensor]:
    known = torch.zeros(n, 3, dtype=F64)
    known[:, 0] = value
    return known, torch.tensor([1.0, 0.0, 0.0], dtype=F64)


def test_inpaint_is_exact_for_independent_blocks() -> None:
    """When the known block is independent of the unknown one, replacement is exact."""
    prior = Gaussian(
        torch.tensor([0.5, -1.0, 0.3], dtype=F64),
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.8, -0.3], [0.0, -0.3, 0.6]], dtype=F64),
    )
    sde = VPSDE()
    known, mask = _known(3000, 1.5)
    x, stats = inpaint(
        sde, prior.score_fn(sde), known, mask, steps=100, generator=torch.Generator().manual_seed(0)
    )
    assert bool((x[:, 0] == 1.5).all())
    mean, cov = gaussian_conditional(prior, [0], torch.tensor([1.5], dtype=F64))
    z, cov_err, _ = _moment_errors(x[:, 1:], mean, cov)
    assert z < 4.5 and cov_err < 0.05
    assert stats.nfe == 101 and stats.steps == 100


def test_inpaint_replacement_error_and_repaint_resampling() -> None:
    """Replacement is biased for correlated blocks (measured here: the conditional mean of the
    missing coordinates is off by ~0.3 for correlation 0.8); RePaint resampling cuts the error,
    and exact-likelihood guidance (noise 1e-3) recovers the conditional."""
    prior = Gaussian(
        torch.tensor([0.5, -1.0, 0.3], dtype=F64),
        torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=F64),
    )
    sde = VPSDE()
    value = torch.tensor([1.5], dtype=F64)
    mean, cov = gaussian_conditional(prior, [0], value)
    known, mask = _known(2000, 1.5)
    plain, _ = inpaint(
        sde, prior.score_fn(sde), known, mask, steps=50, generator=torch.Generator().manual_seed(0)
    )
    repaint, st = inpaint(
        sde,
        prior.score_fn(sde),
        known,
        mask,
        steps=50,
        resample=10,
        generator=torch.Generator().manual_seed(0),
    )
    err_plain = float((plain[:, 1:].mean(0) - mean).abs().max())
    err_repaint = float((repaint[:, 1:].mean(0) - mean).abs().max())
    assert err_plain > 0.2  # the documented bias of the replacement method
    assert err_repaint < 0.5 * err_plain
    assert st.nfe == 50 * 10 + 1

    sel = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    guided = classifier_guidance(
        prior.score_fn(sde), linear_gaussian_log_likelihood(prior, sde, sel, 1e-3, value)
    )
    x, _ = sample(
        sde,
        guided,
        shape=(2000, 3),
        steps=200,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    z, cov_err, _ = _moment_errors(x[:, 1:], mean, cov)
    assert z < 4.5 and cov_err < 0.05


@pytest.mark.parametrize("solver", ["predictor_corrector", "ancestral", "ddim", "dpm_solver_pp_2m"])
def test_inpaint_images_with_other_solvers(solver: str) -> None:
    """Image-shaped state, a (1, 1, H, W) mask, any non-adaptive solver: known pixels are kept
    exactly and the rest is finite."""
    d = 16
    g = torch.Generator().manual_seed(0)
    L = torch.randn(d, d, generator=g, dtype=F64) / 4
    prior = Gaussian(torch.zeros(d, dtype=F64), L @ L.T + 0.2 * torch.eye(d, dtype=F64))
    sde = VPSDE()

    def score(x, t):
        return prior.score(x.reshape(x.shape[0], d), t, sde).reshape(x.shape)

    known = prior.sample(6, generator=g, dtype=F64).reshape(6, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=F64)
    mask[..., :2, :] = 1.0
    x, _ = inpaint(
        sde, score, known, mask, solver=solver, steps=10, generator=torch.Generator().manual_seed(1)
    )
    assert x.shape == known.shape and bool(torch.isfinite(x).all())
    torch.testing.assert_close(x[..., :2, :], known[..., :2, :], rtol=0, atol=0)


def test_inpaint_bad_arguments() -> None:
    sde = VPSDE()
    known, mask = _known(4, 1.0)
    score = PRIOR.score_fn(sde)
    with pytest.raises(ValueError, match="adaptive"):
        inpaint(sde, score, known, mask, solver="ode_adaptive")
    with pytest.raises(ValueError, match="only 0"):
        inpaint(sde, score, known, 0.5 * mask)
    with pytest.raises(ValueError, match="broadcast"):
        inpaint(sde, score, known, torch.ones(2))
    with pytest.raises(ValueError, match="resample"):
        inpaint(sde, score, known, mask, resample=0)
    with pytest.raises(ValueError, match="unknown solver"):
        inpaint(sde, score, known, mask, solver="nope")


@pytest.mark.slow
def test_guided_posterior_precise() -> None:
    """20,000 samples, 1,000 Euler-Maruyama steps: mean and covariance of the exactly guided
    sampler match N(m_post, C_post) to Monte-Carlo precision."""
    R = 0.05
    sde = VPSDE()
    m_post, C_post = linear_gaussian_posterior(PRIOR, A, R, Y)
    guided = classifier_guidance(
        PRIOR.score_fn(sde), linear_gaussian_log_likelihood(PRIOR, sde, A, R, Y)
    )
    x, _ = sample(
        sde,
        guided,
        shape=(20000, 3),
        steps=1000,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    z, cov_err, w2 = _moment_errors(x, m_post, C_post)
    assert z < 4.0 and cov_err < 0.005 and w2 < 0.01


def _load_example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guided_sampling_example_quick(tmp_path, capsys) -> None:
    png = tmp_path / "guided.png"
    res = _load_example("guided_sampling").main(["--quick", "--out", str(png)])
    capsys.readouterr()
    assert png.exists()
    for solver, r in res["inverse"].items():
        assert r["mean_err_se"] < 4.5 and r["w2"] < 0.05, (solver, r)
    cls = res["class"]
    assert abs(cls["unguided"]["share"] - 0.2) < 0.04
    assert cls["classifier w=1"]["w2"] < 0.1 and cls["classifier-free w=0"]["w2"] < 0.1
    assert cls["classifier w=4"]["share"] > cls["classifier w=1"]["share"]


def test_inpainting_example_quick(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    png = tmp_path / "inpaint.png"
    res = _load_example("inpainting").main(["--quick", "--out", str(png)])
    capsys.readouterr()
    assert png.exists()
    vec = res["vector"]
    assert vec["replacement (euler_maruyama)"]["mean_err"] > 0.2
    assert (
        vec["RePaint, 20 resamplings"]["mean_err"]
        < vec["replacement (euler_maruyama)"]["mean_err"] / 3
    )
    assert vec["exact-likelihood guidance"]["mean_err"] < 0.05
    img = res["images"]
    assert img["RePaint x10"] < img["replacement"]
