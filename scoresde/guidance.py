"""Conditional generation: guided score functions and inpainting by replacement.

Every guided score here is an ordinary ``score_fn(x, t)``, so it works with every registered
sampler through :func:`solvers.sample` and the wrappers compose (classifier-free guidance inside
classifier guidance, say).

* Classifier guidance (Bayes' rule on the score, Song et al. 2021 sec. 5; Dhariwal & Nichol 2021):
  ``grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)``, and with a guidance scale
  ``w``: ``score(x, t) + w grad_x log p(y | x, t)`` (``w = 1`` is the exact conditional score).
* Classifier-free guidance (Ho & Salimans 2022) for a class-conditional score ``s(x, t, y)``
  trained with label dropout: ``(1 + w) s(x, t, y) - w s(x, t, null)`` (``w = 0`` is the plain
  conditional model).
* Inpainting / imputation with a known mask by the replacement method of score-SDE (Song et al.
  2021, app. I.2): before every solver step at time ``t`` (a ``before_step`` hook of
  :func:`solvers.sample`) the known coordinates are overwritten by a fresh forward-diffused
  sample ``alpha(t) y + sigma(t) z`` of the known values. This is an
  approximation of the conditional ``p(x_unknown | x_known = y)``, exact only when the two
  blocks are independent; :func:`linear_gaussian_log_likelihood` gives the exact alternative for
  linear-Gaussian observations.

Exact oracles for the linear-Gaussian case are included (:func:`linear_gaussian_posterior`,
:func:`gaussian_conditional`, :func:`linear_gaussian_log_likelihood`): with a Gaussian prior
``N(m, C)`` and ``y = A x + n``, ``n ~ N(0, R)``, ``p(y | x_t)`` is Gaussian in closed form.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from schedules.parametrization import tweedie_denoise
from solvers import Resolved, SampleResult, SampleStats, get, resolve, sample
from solvers.protocol import ScoreFn

CondScoreFn = Callable[[Tensor, Tensor, Any], Tensor]
LogLikFn = Callable[[Tensor, Tensor], Tensor]


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} must be a finite number")
    return float(scale)


# -- classifier guidance ----------------------------------------------------------------------
def classifier_guidance(score_fn: ScoreFn, log_prob_y_fn: LogLikFn, scale: float = 1.0) -> ScoreFn:
    """``s_w(x, t) = score(x, t) + w grad_x log p(y | x, t)``.

    Args:
        score_fn: the unconditional ``(x, t) -> score``.
        log_prob_y_fn: ``(x, t) -> log p(y | x_t = x)`` of shape ``(B,)`` for the (fixed, closed
            over) condition ``y``: any differentiable classifier or likelihood on noisy inputs.
        scale: the guidance weight ``w`` (1 for the exact conditional score; > 1 sharpens).

    The gradient is taken with autograd inside ``torch.enable_grad()`` (samplers run under
    ``no_grad``); the returned score carries no graph. One call evaluates ``score_fn`` once and
    ``log_prob_y_fn`` once plus one backward pass.
    """
    w = _check_scale(scale)

    def guided_score(x: Tensor, t: Tensor) -> Tensor:
        score = score_fn(x, t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = log_prob_y_fn(xg, t)
            if not isinstance(logp, Tensor) or logp.shape != (x.shape[0],):
                got = tuple(logp.shape) if isinstance(logp, Tensor) else type(logp).__name__
                raise ValueError(f"log_prob_y_fn returned {got}; expected shape ({x.shape[0]},)")
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        return score + w * grad.detach().to(score.dtype)

    return guided_score


def classifier_log_prob(classifier: Callable[..., Tensor], y: Tensor | int) -> LogLikFn:
    """``(x, t) -> log softmax(classifier(x, t))[y]``: a noise-conditional classifier as a likelihood.

    ``classifier(x, t)`` returns logits ``(B, num_classes)``; ``y`` is an int or a ``(B,)`` tensor
    of labels.
    """

    def log_prob(x: Tensor, t: Tensor) -> Tensor:
        logits = classifier(x, t)
        labels = _labels_like(y, x.shape[0], logits.device)
        return torch.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0]

    return log_prob


# -- classifier-free guidance -----------------------------------------------------------------
def _labels_like(y: Tensor | int, batch: int, device: torch.device | str) -> Tensor:
    """``y`` as a ``(B, ...)`` tensor: a scalar is repeated over the batch."""
    lab = torch.as_tensor(y, device=device)
    if lab.dim() == 0:
        return lab.expand(batch)
    if lab.shape[0] != batch:
        raise ValueError(f"labels have batch size {lab.shape[0]}; expected a scalar or {batch}")
    return lab


def classifier_free_guidance(
    cond_score_fn: CondScoreFn,
    y: Tensor | int,
    scale: float,
    null_label: Tensor | int,
    batched: bool = True,
) -> ScoreFn:
    """``s_w(x, t) = (1 + w) s(x, t, y) - w s(x, t, null)`` (Ho & Salimans 2022).

    Args:
        cond_score_fn: ``(x, t, y) -> score`` of a class-conditional model trained with label
            dropout, where ``y = null_label`` means "unconditional".
        y: the class: an int, or a ``(B, ...)`` tensor of per-sample conditions.
        scale: ``w`` (0: the conditional model; > 0: stronger guidance; -1: unconditional).
        null_label: the label of the unconditional model (an int or a tensor like ``y``).
        batched: evaluate both scores in one call on a ``2B`` batch (one network forward) rather
            than two calls of ``B``.

    For an eps- or x0-predicting network the same combination in eps / x0 space is identical:
    the conversions are affine with coefficients that do not depend on ``y``.
    """
    w = _check_scale(scale)

    def guided_score(x: Tensor, t: Tensor) -> Tensor:
        batch = x.shape[0]
        yc = _labels_like(y, batch, x.device)
        yn = _labels_like(null_label, batch, x.device)
        if yn.shape[1:] != yc.shape[1:]:
            yn = yn.reshape(batch, *([1] * (yc.dim() - 1))).expand_as(yc)
        if batched:
            both = cond_score_fn(
                torch.cat([x, x]), torch.cat([t, t]), torch.cat([yc, yn.to(yc.dtype)])
            )
            s_c, s_u = both[:batch], both[batch:]
        else:
            s_c, s_u = cond_score_fn(x, t, yc), cond_score_fn(x, t, yn)
        return (1.0 + w) * s_c - w * s_u

    return guided_score


# -- inpainting by replacement ----------------------------------------------------------------
def _check_mask(mask: Tensor, known: Tensor) -> Tensor:
    mask = torch.as_tensor(mask, device=known.device)
    ms, ks = tuple(mask.shape), tuple(known.shape)
    fits = len(ms) <= len(ks) and all(m in (1, k) for m, k in zip(ms[::-1], ks[::-1], strict=False))
    if not fits:
        raise ValueError(f"mask has shape {ms}; expected a shape that broadcasts to known {ks}")
    m = mask.to(known.dtype)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must contain only 0 (unknown) and 1 (known) entries")
    return m


def inpaint(
    sde: Any,
    score_fn: ScoreFn,
    known: Tensor,
    mask: Tensor,
    solver: str = "euler_maruyama",
    steps: int = 500,
    grid: str | Tensor | Sequence[float] | None = None,
    t_end: float | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    resample: int = 1,
    **options: Any,
) -> SampleResult:
    """Fill in the unknown entries of ``known`` by the replacement method of score-SDE.

    One :func:`solvers.sample` run whose ``before_step`` hook replaces the known entries at the
    start of every step ``t_i -> t_{i+1}`` (and before the denoising step at ``t_end``):

        x <- m * (alpha(t_i) y + sigma(t_i) z) + (1 - m) * x,   z ~ N(0, I)   (replacement)
        x <- one step of the registered ``solver`` from t_i to t_{i+1}

    then ``x <- m * y + (1 - m) * x``. Every fixed-step solver works, multistep ones keeping
    their history across steps. With no known entry (``mask`` all 0) this is exactly
    :func:`solvers.sample` with the same arguments.

    Args:
        sde: the diffusion.
        score_fn: the unconditional ``(x, t) -> score``.
        known: ``(B, ...)``: the known values (entries where ``mask == 0`` are ignored).
        mask: 1 where the value is known, 0 where it is to be generated; broadcastable to
            ``known`` (``(d,)`` for vectors, ``(1, C, H, W)`` or ``(B, C, H, W)`` for images).
        solver, steps, grid, t_end, options: as in :func:`solvers.sample`.
        denoise: finish with Tweedie's step at ``t_end``.
        generator: all randomness (prior, solver noise, replacement noise).
        x_T: optional start (default: a prior draw).
        resample: RePaint's ``U`` (Lugmayr et al. 2022): each step is repeated ``resample``
            times, the state diffused back from ``t_{i+1}`` to ``t_i`` by the forward kernel
            ``x <- alpha_{t_i|t_{i+1}} x + sigma_{t_i|t_{i+1}} z`` in between, which lets the
            unknown block harmonise with the known one (``resample`` times the cost; 1 is the
            plain replacement method). Going back in time, each repetition is one
            :func:`solvers.sample` run over its grid interval (a multistep solver restarts).

    Returns:
        ``(samples, stats)``; ``samples`` equals ``known`` wherever ``mask == 1``.
    """
    spec = get(solver)
    if spec.adaptive:
        raise ValueError(
            f"solver={solver!r} is adaptive; replacement needs an explicit grid: choose one of "
            + ", ".join(n for n in _non_adaptive())
        )
    if not isinstance(known, Tensor) or known.dim() < 2:
        raise ValueError("known must be a (B, ...) tensor with a batch dimension")
    is_known = _check_mask(mask, known).bool()
    y = known.detach()
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample={resample!r} must be a positive integer")
    if x_T is None:
        x = sde.prior_sample(tuple(y.shape), generator=generator, device=y.device, dtype=y.dtype)
    else:
        if x_T.shape != y.shape:
            raise ValueError(f"x_T shape {tuple(x_T.shape)} != known shape {tuple(y.shape)}")
        x = x_T

    def noise() -> Tensor:
        dev = generator.device if generator is not None else y.device
        return torch.randn(y.shape, generator=generator, device=dev, dtype=y.dtype).to(y.device)

    def replace(x: Tensor, t: float) -> Tensor:
        alpha, sigma = (float(v) for v in sde.marginal(t))
        return torch.where(is_known, alpha * y + sigma * noise(), x)

    # replacing nothing is the identity (and must not draw noise): then inpaint == sample
    hook = replace if bool(is_known.any()) else None
    if resample == 1:
        x, stats = sample(
            sde,
            score_fn,
            x_T=x,
            solver=solver,
            steps=steps,
            grid=grid,
            t_end=t_end,
            denoise=denoise,
            generator=generator,
            before_step=hook,
            **options,
        )
    else:
        plan = resolve(sde, solver, steps, grid, t_end, options)
        x, stats = _repaint(sde, score_fn, x, plan, denoise, generator, hook, noise, resample)
    return SampleResult(torch.where(is_known, y, x), stats)


def _repaint(
    sde: Any,
    score_fn: ScoreFn,
    x: Tensor,
    plan: Resolved,
    denoise: bool,
    generator: torch.Generator | None,
    hook: Callable[[Tensor, float], Tensor] | None,
    noise: Callable[[], Tensor],
    resample: int,
) -> SampleResult:
    """RePaint's loop: every grid interval ``resample`` times, diffused back in between."""
    times = plan.grid.tolist()
    opts = dict(solver=plan.spec.name, generator=generator, before_step=hook, **plan.options)
    nfe = 0
    start = time.perf_counter()
    for t, s in zip(times[:-1], times[1:], strict=True):
        for u in range(resample):
            if u > 0:  # back from s to t by the forward kernel
                a_ts, s_ts = (float(v) for v in sde.transition(s, t))
                x = a_ts * x + s_ts * noise()
            out = sample(sde, score_fn, x_T=x, grid=[t, s], denoise=False, **opts)
            x, nfe = out.samples, nfe + out.stats.nfe
    if denoise:  # the last replacement, then Tweedie's step at t_end (as in sample)
        x = x if hook is None else hook(x, plan.t_end)
        alpha, sigma = (float(v) for v in sde.marginal(plan.t_end))
        tvec = torch.full((x.shape[0],), plan.t_end, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            x = tweedie_denoise(x, score_fn(x, tvec), alpha, sigma)
        nfe += 1
    stats = SampleStats(
        nfe=nfe,
        steps=len(times) - 1,
        wall_time=time.perf_counter() - start,
        solver=plan.spec.name,
        grid=plan.grid,
        t_end=plan.t_end,
    )
    return SampleResult(x, stats)


impute = inpaint
"""Alias of :func:`inpaint` for vector data (imputation of missing coordinates)."""


def _non_adaptive() -> list[str]:
    from solvers import available

    return [n for n in available() if not get(n).adaptive]


# -- exact linear-Gaussian oracles ------------------------------------------------------------
def _f64(v: Any, name: str) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _check_linear(prior_mean: Tensor, prior_cov: Tensor, A: Tensor, noise_cov: Tensor) -> None:
    d = prior_mean.shape[0]
    if prior_cov.shape != (d, d):
        raise ValueError(
            f"prior covariance has shape {tuple(prior_cov.shape)}; expected ({d}, {d})"
        )
    if A.dim() != 2 or A.shape[1] != d:
        raise ValueError(f"A has shape {tuple(A.shape)}; expected (k, {d})")
    k = A.shape[0]
    if noise_cov.shape != (k, k):
        raise ValueError(f"noise_cov has shape {tuple(noise_cov.shape)}; expected ({k}, {k})")
    if bool((torch.linalg.eigvalsh(noise_cov) <= 0).any()):
        raise ValueError("noise_cov must be positive definite")


def _as_cov(v: Any, k: int, name: str) -> Tensor:
    c = _f64(v, name)
    if c.dim() == 0:
        return c * torch.eye(k, dtype=torch.float64)
    if c.dim() == 1:
        return torch.diag(c)
    return c


def linear_gaussian_posterior(prior: Any, A: Any, noise_cov: Any, y: Any) -> tuple[Tensor, Tensor]:
    """The exact posterior of ``x ~ N(m, C)`` given ``y = A x + n``, ``n ~ N(0, R)``:

    ``C_post = C - C A^T (A C A^T + R)^{-1} A C``,
    ``m_post = m + C A^T (A C A^T + R)^{-1} (y - A m)`` (float64).

    ``prior`` is a :class:`~scoresde.targets.Gaussian` (``.mean``, ``.cov``); ``noise_cov`` a
    ``(k, k)`` matrix, a ``(k,)`` diagonal or a scalar variance; ``y`` has shape ``(k,)``.
    """
    m, C = prior.mean.to(torch.float64), prior.cov.to(torch.float64)
    A = _f64(A, "A")
    R = _as_cov(noise_cov, A.shape[0] if A.dim() == 2 else 1, "noise_cov")
    _check_linear(m, C, A, R)
    y = _f64(y, "y")
    if y.shape != (A.shape[0],):
        raise ValueError(f"y has shape {tuple(y.shape)}; expected ({A.shape[0]},)")
    S = A @ C @ A.T + R
    K = torch.linalg.solve(S, A @ C).T  # C A^T S^{-1}
    m_post = m + K @ (y - A @ m)
    C_post = C - K @ A @ C
    return m_post, 0.5 * (C_post + C_post.T)


def gaussian_conditional(prior: Any, known_index: Any, values: Any) -> tuple[Tensor, Tensor]:
    """``x_u | x_k = v`` for ``x ~ N(m, C)``: the noise-free imputation oracle.

    ``mean = m_u + C_uk C_kk^{-1} (v - m_k)``, ``cov = C_uu - C_uk C_kk^{-1} C_ku``; returns the
    mean and covariance of the unknown block (indices not in ``known_index``, in order).
    """
    m, C = prior.mean.to(torch.float64), prior.cov.to(torch.float64)
    d = m.shape[0]
    k = torch.as_tensor(known_index, dtype=torch.long).flatten()
    if k.numel() == 0 or bool(((k < 0) | (k >= d)).any()) or k.unique().numel() != k.numel():
        raise ValueError(f"known_index={k.tolist()} must be distinct indices in 0..{d - 1}")
    u = torch.tensor([i for i in range(d) if i not in set(k.tolist())], dtype=torch.long)
    if u.numel() == 0:
        raise ValueError("every coordinate is known; nothing to impute")
    v = _f64(values, "values")
    if v.shape != (k.numel(),):
        raise ValueError(f"values has shape {tuple(v.shape)}; expected ({k.numel()},)")
    gain = torch.linalg.solve(C[k][:, k], C[k][:, u]).T  # C_uk C_kk^{-1}
    mean = m[u] + gain @ (v - m[k])
    cov = C[u][:, u] - gain @ C[k][:, u]
    return mean, 0.5 * (cov + cov.T)


def linear_gaussian_log_likelihood(
    prior: Any, sde: Any, A: Any, noise_cov: Any, y: Any
) -> LogLikFn:
    """Exact ``log p(y | x_t)`` for ``x_0 ~ N(m, C)``, ``x_t = alpha x_0 + sigma eps``, ``y = A x_0 + n``.

    With ``Sigma_t = alpha^2 C + sigma^2 I``, ``x_0 | x_t`` is Gaussian with
    ``mu_t = m + alpha C Sigma_t^{-1} (x_t - alpha m)`` and ``S_t = C - alpha^2 C Sigma_t^{-1} C``,
    so ``y | x_t ~ N(A mu_t, A S_t A^T + R)``. Used as ``log_prob_y_fn`` in
    :func:`classifier_guidance` with ``scale=1``, the guided score is exactly the score of the
    diffused posterior ``N(alpha m_post, alpha^2 C_post + sigma^2 I)``.
    Returns ``(x, t) -> (B,)``, differentiable in ``x``; ``t`` is ``(B,)``.
    """
    m, C = prior.mean.to(torch.float64), prior.cov.to(torch.float64)
    A = _f64(A, "A")
    R = _as_cov(noise_cov, A.shape[0] if A.dim() == 2 else 1, "noise_cov")
    _check_linear(m, C, A, R)
    y = _f64(y, "y")
    if y.shape != (A.shape[0],):
        raise ValueError(f"y has shape {tuple(y.shape)}; expected ({A.shape[0]},)")
    d, k = m.shape[0], A.shape[0]
    eye = torch.eye(d, dtype=torch.float64)

    def log_prob(x: Tensor, t: Tensor) -> Tensor:
        dev = x.device
        x64 = x.reshape(x.shape[0], -1).to(torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64, device=dev).reshape(-1)
        if t64.numel() > 1 and bool((t64 == t64[0]).all()):
            t64 = t64[:1]  # one time for the whole batch (as in samplers): one set of matrices
        alpha, sigma = sde.marginal(t64)
        a = alpha.to(torch.float64).reshape(-1, 1, 1)  # (n, 1, 1), n = 1 or B
        s2 = (sigma.to(torch.float64) ** 2).reshape(-1, 1, 1)
        Cd, md, Ad, Rd, yd = C.to(dev), m.to(dev), A.to(dev), R.to(dev), y.to(dev)
        Sigma = a**2 * Cd + s2 * eye.to(dev)  # (n, d, d)
        G = a * torch.linalg.solve(Sigma, Cd.expand_as(Sigma)).transpose(-1, -2)  # alpha C Sigma^-1
        S = Cd - a * G @ Cd  # Cov[x_0 | x_t] = C - alpha^2 C Sigma^-1 C
        cov_y = Ad @ S @ Ad.T + Rd
        chol = torch.linalg.cholesky(0.5 * (cov_y + cov_y.transpose(-1, -2)))
        prec = torch.cholesky_inverse(chol)  # (n, k, k)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (n,)
        resid = x64 - a[:, :, 0] * md  # (B, d)
        if G.shape[0] == 1:
            mu = md + resid @ G[0].T  # E[x_0 | x_t]
            r = yd - mu @ Ad.T  # (B, k)
            quad = ((r @ prec[0]) * r).sum(1)
        else:
            mu = md + torch.einsum("bij,bj->bi", G, resid)
            r = yd - mu @ Ad.T
            quad = torch.einsum("bi,bij,bj->b", r, prec, r)
        out = -0.5 * (quad + logdet + k * math.log(2 * math.pi))
        return out.to(x.dtype)

    return log_prob


__all__ = [
    "classifier_free_guidance",
    "classifier_guidance",
    "classifier_log_prob",
    "gaussian_conditional",
    "impute",
    "inpaint",
    "linear_gaussian_log_likelihood",
    "linear_gaussian_posterior",
]
