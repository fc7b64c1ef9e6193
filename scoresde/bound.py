"""The discrete variational bound of the VP / DDPM model (Ho et al. 2020, eq. 5; the lecture).

Over the ``N``-step chain of :meth:`scoresde.sde.VPSDE.ddpm` (``t_i = i T / N``), the model's
reverse transitions are built from a score function by Tweedie's formula,

    x0_hat(x_i) = (x_i + sigma_i^2 score(x_i, t_i)) / alpha_i,     alpha_i^2 = abar_i = 1 - sigma_i^2,
    p(x_{i-1} | x_i) = N(mu_q(x_i, x0_hat(x_i)), v_i I),

with ``mu_q`` the mean of the tractable posterior ``q(x_{i-1} | x_i, x_0)`` and ``v_i`` one of Ho
et al.'s two fixed choices: ``beta_i`` (default; their "fixedlarge", used for their CIFAR-10
likelihoods) or the posterior variance ``beta-tilde_i = beta_i (1 - abar_{i-1}) / (1 - abar_i)``.
With the exact score ``mu_q(x_i, x0_hat)`` is exactly ``E[x_{i-1} | x_i]``. For data with a smooth
density the true reverse variance tends to ``beta_i`` as ``N`` grows, and the bound of the exact
model tends to ``log p(x_0)`` (gap ``O(1/N)``); ``beta-tilde_i`` is the right variance only when
``x_0`` is (near) deterministic given ``x_i``, and with it the gap stays large near ``t = 0``
(measured in ``tests/test_bound.py``). The bound on ``log p(x_0)`` is

    ELBO = L_0 - sum_{i=2}^N L_{i-1} - L_N,
    L_0     = E_{q(x_1 | x_0)} log p(x_0 | x_1)                           (reconstruction)
    L_{i-1} = E_{q(x_i | x_0)} KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i))
            = E [ D/2 (v_q / v_i - 1 - log(v_q / v_i)) + |mu_q - mu_p|^2 / (2 v_i) ]
    L_N     = KL(q(x_N | x_0) || p_T) = 1/2 [D (sigma_N^2 / s^2 - 1 - log(sigma_N^2 / s^2)) + alpha_N^2 |x_0|^2 / s^2]

with ``p_T = N(0, s^2 I)`` the prior. The expectations over ``x_i`` are one-sample Monte Carlo per
term and data point. The decoder ``p(x_0 | x_1)`` (step 1, where ``beta-tilde_1 = 0``) is

* ``"gaussian"``: ``N(x_0; x0_hat(x_1), beta_1 I)`` (Ho et al.'s ``sigma_1^2 = beta_1``), a
  density for continuous data: the bound is comparable with the exact ODE likelihood, and in
  bits/dim takes the dequantisation offset;
* ``"discretized"``: Ho et al.'s discretised Gaussian (eq. 13): the mass of
  ``N(x0_hat, beta_1)`` over the data bin of each coordinate (the edge bins extend to +-inf),
  for data on a ``num_bins``-level grid of ``data_range``; the bound is then on the discrete
  probability (no offset in bits/dim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from schedules.parametrization import broadcast_to
from solvers.protocol import ScoreFn

from .likelihood import dequantization_offset

DECODERS = ("gaussian", "discretized")
VARIANCES = ("beta", "posterior")


@dataclass
class VariationalBound:
    """Per-sample terms of the discrete bound (all in nats, shape ``(B,)``).

    Attributes:
        elbo: ``L_0 - sum L_{i-1} - L_N``, a lower bound on ``log p(x_0)`` (in expectation).
        reconstruction: ``L_0 = log p(x_0 | x_1)`` (one-sample estimate).
        diffusion: ``sum_{i=2}^N L_{i-1}`` (one-sample estimate of each term, or an unbiased
            estimate from ``num_terms`` random steps).
        prior: ``L_N`` (exact).
        terms: ``(B, N - 1)`` per-step KLs ``L_1 .. L_{N-1}`` when all were computed, else ``None``.
        num_steps: ``N``.
        dim: ``D``, elements per sample.
        nfe: score evaluations (each on the full batch).
        decoder: ``"gaussian"`` or ``"discretized"``.
    """

    elbo: Tensor
    reconstruction: Tensor
    diffusion: Tensor
    prior: Tensor
    terms: Tensor | None
    num_steps: int
    dim: int
    nfe: int
    decoder: str

    @property
    def nelbo(self) -> Tensor:
        """``-ELBO``, an upper bound on the NLL in nats."""
        return -self.elbo

    def bits_per_dim(
        self, data_range: tuple[float, float] | None = None, num_bins: int = 256
    ) -> Tensor:
        """``-ELBO / (D ln 2)``, plus ``log2(num_bins / (hi - lo))`` for the Gaussian decoder
        on dequantised data when ``data_range`` is given (the discretised decoder already
        bounds the discrete probability: no offset)."""
        bpd = -self.elbo / (self.dim * math.log(2.0))
        if data_range is not None and self.decoder == "gaussian":
            bpd = bpd + dequantization_offset(data_range, num_bins)
        return bpd


def gaussian_kl(
    mean_q: Tensor, var_q: Tensor | float, mean_p: Tensor, var_p: Tensor | float
) -> Tensor:
    """``KL(N(mean_q, var_q I) || N(mean_p, var_p I))`` per sample (summed over non-batch dims):

    ``1/2 sum_j [var_q / var_p - 1 - log(var_q / var_p) + (mean_q - mean_p)_j^2 / var_p]``.
    Variances are numbers or ``(B,)`` tensors.
    """
    B = mean_q.shape[0]
    D = mean_q[0].numel()
    vq = torch.as_tensor(var_q, dtype=mean_q.dtype, device=mean_q.device).expand(B)
    vp = torch.as_tensor(var_p, dtype=mean_q.dtype, device=mean_q.device).expand(B)
    sq = (mean_q - mean_p).reshape(B, -1).pow(2).sum(1)
    ratio = vq / vp
    return 0.5 * (D * (ratio - 1 - torch.log(ratio)) + sq / vp)


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def discretized_gaussian_log_likelihood(
    x: Tensor,
    mean: Tensor,
    var: Tensor | float,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
) -> Tensor:
    """``log prod_j P(bin(x_j))`` under ``N(mean, var)``, per sample (Ho et al. 2020, eq. 13).

    The bin of ``x_j`` on the grid ``lo + k (hi - lo) / (num_bins - 1)`` is
    ``[x_j - h, x_j + h]`` with ``h = (hi - lo) / (2 (num_bins - 1))``, extended to ``-inf`` at
    ``lo`` and ``+inf`` at ``hi``. Computed with ``log(Phi(b) - Phi(a))`` and the tails with
    ``log Phi`` / ``log(1 - Phi)`` for stability.
    """
    lo, hi = (float(v) for v in data_range)
    dequantization_offset((lo, hi), num_bins)  # validates
    h = (hi - lo) / (2 * (num_bins - 1))
    B = x.shape[0]
    std = torch.sqrt(torch.as_tensor(var, dtype=x.dtype, device=x.device).expand(B))
    std = broadcast_to(std, x)
    upper = (x + h - mean) / std
    lower = (x - h - mean) / std
    cdf_up = _std_normal_cdf(upper)
    cdf_lo = _std_normal_cdf(lower)
    tiny = torch.finfo(x.dtype).tiny
    log_cdf_up = torch.log(cdf_up.clamp_min(tiny))
    log_sf_lo = torch.log((1 - cdf_lo).clamp_min(tiny))
    log_mid = torch.log((cdf_up - cdf_lo).clamp_min(tiny))
    first = x <= lo + h / 2
    last = x >= hi - h / 2
    out = torch.where(first, log_cdf_up, torch.where(last, log_sf_lo, log_mid))
    return out.reshape(B, -1).sum(1)


def _gaussian_log_density(x: Tensor, mean: Tensor, var: Tensor | float) -> Tensor:
    B = x.shape[0]
    D = x[0].numel()
    v = torch.as_tensor(var, dtype=x.dtype, device=x.device).expand(B)
    sq = (x - mean).reshape(B, -1).pow(2).sum(1)
    return -0.5 * (sq / v + D * torch.log(2 * math.pi * v))


def variational_bound(
    sde: Any,
    score_fn: ScoreFn,
    x0: Tensor,
    num_steps: int = 1000,
    decoder: str = "gaussian",
    variance: str = "beta",
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
    num_terms: int | None = None,
    generator: torch.Generator | None = None,
) -> VariationalBound:
    """The DDPM variational bound ``L_0 - sum L_{i-1} - L_N`` of the score model on ``x0``.

    Args:
        sde: a VP SDE (anything with ``ddpm(N)``, ``prior_std`` and ``T``).
        score_fn: ``(x, t) -> score`` with ``t`` of shape ``(B,)``.
        x0: data ``(B, ...)``. Computation runs in its dtype and device.
        num_steps: ``N`` of the discrete chain.
        decoder: ``"gaussian"`` or ``"discretized"`` (see the module docstring).
        variance: the reverse variance, ``"beta"`` (``beta_i``) or ``"posterior"`` (beta-tilde).
        data_range, num_bins: the data grid of the discretised decoder.
        num_terms: ``None`` evaluates every ``L_{i-1}``, ``i = 2..N`` (``N`` score calls). An
            int ``K`` draws ``K`` step indices uniformly (shared by the batch) and returns the
            unbiased estimate ``(N - 1) / K sum_k L_{i_k - 1}``.
        generator: the randomness of ``x_i ~ q(x_i | x_0)`` and of the step indices.

    Returns:
        :class:`VariationalBound`, all terms in nats.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}; expected one of {', '.join(DECODERS)}")
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r}; expected one of {', '.join(VARIANCES)}")
    if not callable(getattr(sde, "ddpm", None)):
        raise ValueError(
            f"{type(sde).__name__} has no discrete DDPM view (ddpm(N)); the discrete bound "
            "is defined for variance-preserving SDEs"
        )
    if not isinstance(x0, Tensor) or x0.dim() < 2 or not x0.is_floating_point():
        raise ValueError("x0 must be a floating-point (B, ...) tensor")
    if num_terms is not None and (
        isinstance(num_terms, bool) or not isinstance(num_terms, int) or num_terms < 1
    ):
        raise ValueError(f"num_terms={num_terms!r} must be None or a positive integer")
    chain = sde.ddpm(num_steps)  # validates num_steps
    N = chain.num_steps
    B, D = x0.shape[0], x0[0].numel()
    dev, dtype = x0.device, x0.dtype
    x0 = x0.detach()
    abar = chain.alpha_bars  # float64, CPU
    times = chain.t
    nfe = 0

    def draw(i: int) -> Tensor:
        gdev = generator.device if generator is not None else dev
        z = torch.randn(x0.shape, generator=generator, device=gdev, dtype=dtype).to(dev)
        return math.sqrt(float(abar[i])) * x0 + math.sqrt(float(1 - abar[i])) * z

    def x0_hat(x: Tensor, i: int) -> Tensor:
        nonlocal nfe
        t = torch.full((B,), float(times[i]), dtype=dtype, device=dev)
        nfe += 1
        score = score_fn(x, t)
        a, s2 = math.sqrt(float(abar[i])), float(1 - abar[i])
        return (x + s2 * score) / a

    with torch.no_grad():
        # L_N: the prior term, exact.
        s2 = float(sde.prior_std) ** 2
        a_N, v_N = math.sqrt(float(abar[N])), float(1 - abar[N])
        sq = x0.reshape(B, -1).pow(2).sum(1)
        ratio = v_N / s2
        prior = 0.5 * (D * (ratio - 1 - math.log(ratio)) + a_N**2 * sq / s2)

        # L_{i-1}, i = 2..N.
        if num_terms is None:
            idx = list(range(2, N + 1))
            weight = 1.0
        else:
            gdev = generator.device if generator is not None else "cpu"
            draws = torch.randint(2, N + 1, (num_terms,), generator=generator, device=gdev)
            idx = [int(i) for i in draws.tolist()] if N >= 2 else []
            weight = (N - 1) / num_terms
        terms = []
        for i in idx:
            x_i = draw(i)
            mean_q, var_q = chain.posterior(x_i, x0, i)
            mean_p, _ = chain.posterior(x_i, x0_hat(x_i, i), i)
            var_p = var_q if variance == "posterior" else float(chain.betas[i])
            terms.append(gaussian_kl(mean_q, var_q, mean_p, var_p))
        if terms:
            stacked = torch.stack(terms, 1)
            diffusion = weight * stacked.sum(1)
        else:
            stacked = torch.zeros(B, 0, dtype=dtype, device=dev)
            diffusion = torch.zeros(B, dtype=dtype, device=dev)

        # L_0: the decoder at step 1 (x0_hat(x_1) is the reverse mean there: c_t = 0, c_0 = 1).
        x_1 = draw(1)
        mean_0 = x0_hat(x_1, 1)
        var_0 = float(chain.betas[1])
        if decoder == "gaussian":
            recon = _gaussian_log_density(x0, mean_0, var_0)
        else:
            recon = discretized_gaussian_log_likelihood(x0, mean_0, var_0, data_range, num_bins)

    return VariationalBound(
        elbo=recon - diffusion - prior,
        reconstruction=recon,
        diffusion=diffusion,
        prior=prior.to(dtype),
        terms=stacked if num_terms is None else None,
        num_steps=N,
        dim=D,
        nfe=nfe,
        decoder=decoder,
    )


@dataclass
class GaussianBoundTerms:
    """Closed-form expectations (over ``x_0 ~ N(m, C)``) of the bound's terms with the exact score.

    Attributes:
        reconstruction: ``E[L_0]``.
        terms: ``[E L_1, ..., E L_{N-1}]`` (the KL of step ``i = 2..N``).
        prior: ``E[L_N]``.
        elbo: ``E[ELBO] = E[L_0] - sum terms - E[L_N]``.
        entropy: ``E[log p(x_0)] = -1/2 (D log(2 pi e) + log det C)``.
        gap: ``entropy - elbo >= 0``.
    """

    reconstruction: float
    terms: list[float]
    prior: float
    elbo: float
    entropy: float
    gap: float


def gaussian_expected_bound(
    mean: Tensor, cov: Tensor, sde: Any, num_steps: int, variance: str = "beta"
) -> GaussianBoundTerms:
    """The expected bound for Gaussian data ``N(m, C)`` and the exact score, in closed form.

    With the exact score the reverse mean errs by ``c_0 (x_0 - E[x_0 | x_i])`` (``c_0`` the
    posterior coefficient of ``x_0``), so ``E |mu_q - mu_p|^2 = c_0^2 tr S_i`` with
    ``S_i = Cov[x_0 | x_i] = C - abar_i C (abar_i C + (1 - abar_i) I)^{-1} C``; then
    ``E L_{i-1} = 1/2 [D (v_q / v_p - 1 - log(v_q / v_p)) + c_0^2 tr S_i / v_p]``,
    ``E L_0 = -1/2 [tr S_1 / beta_1 + D log(2 pi beta_1)]`` and
    ``E L_N = 1/2 [D (s^2 - 1 - log s^2) + abar_N (tr C + |m|^2)]`` with ``s^2 = 1 - abar_N``
    (prior ``N(0, I)``). An oracle for tests and examples.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r}; expected one of {', '.join(VARIANCES)}")
    C = torch.as_tensor(cov, dtype=torch.float64)
    m = torch.as_tensor(mean, dtype=torch.float64)
    chain = sde.ddpm(num_steps)
    N, D = chain.num_steps, m.shape[0]
    eye = torch.eye(D, dtype=torch.float64)
    prior_var = float(sde.prior_std) ** 2

    def tr_S(i: int) -> float:
        ab = chain.alpha_bars[i]
        return float(torch.trace(C - ab * C @ torch.linalg.solve(ab * C + (1 - ab) * eye, C)))

    terms = []
    for i in range(2, N + 1):
        ab, abp, b = chain.alpha_bars[i], chain.alpha_bars[i - 1], float(chain.betas[i])
        vq = float(b * (1 - abp) / (1 - ab))
        c0 = float(abp.sqrt() * b / (1 - ab))
        vp = vq if variance == "posterior" else b
        terms.append(0.5 * (D * (vq / vp - 1 - math.log(vq / vp)) + c0**2 * tr_S(i) / vp))
    b1 = float(chain.betas[1])
    recon = -0.5 * (tr_S(1) / b1 + D * math.log(2 * math.pi * b1))
    aN, vN = float(chain.alpha_bars[N]), float(1 - chain.alpha_bars[N])
    ratio = vN / prior_var
    prior = 0.5 * (
        D * (ratio - 1 - math.log(ratio)) + aN * float(torch.trace(C) + m @ m) / prior_var
    )
    elbo = recon - sum(terms) - prior
    entropy = -0.5 * (D * math.log(2 * math.pi * math.e) + float(torch.logdet(C)))
    return GaussianBoundTerms(recon, terms, prior, elbo, entropy, entropy - elbo)


__all__ = [
    "DECODERS",
    "GaussianBoundTerms",
    "gaussian_expected_bound",
    "VARIANCES",
    "VariationalBound",
    "discretized_gaussian_log_likelihood",
    "gaussian_kl",
    "variational_bound",
]
