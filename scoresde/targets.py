"""Analytic targets with exact diffused densities and scores: the oracle of every test.

A mixture ``p_0 = sum_k w_k N(m_k, C_k)`` diffused by any linear SDE with kernel
``x_t = alpha x_0 + sigma eps`` stays a mixture,

    p_t = sum_k w_k N(alpha m_k, alpha^2 C_k + sigma^2 I),
    score(x, t) = sum_k r_k(x) * -(alpha^2 C_k + sigma^2 I)^{-1} (x - alpha m_k),

with responsibilities ``r_k`` (softmax of ``log w_k + log N_k``). Each covariance is
eigendecomposed once, ``C_k = U_k diag(d_k) U_k^T``, so ``alpha^2 C_k + sigma^2 I`` is inverted in
closed form for every sample's own ``t``. Everything is computed in float64 and returned in the
dtype of ``x``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.protocol import DiffusionProcess, ScoreFn


def _as_f64(value, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; expected finite numbers")
    return t


class GaussianMixture:
    """``sum_k w_k N(m_k, C_k)`` in ``d`` dimensions with full covariances.

    Args:
        weights: ``(K,)`` non-negative, normalised here (must not all be 0).
        means: ``(K, d)``.
        covs: ``(K, d, d)`` symmetric positive definite, or ``(K,)`` / ``(K, d)`` for isotropic /
            diagonal covariances.
    """

    def __init__(self, weights, means, covs) -> None:
        w = _as_f64(weights, "weights")
        m = _as_f64(means, "means")
        c = _as_f64(covs, "covs")
        if w.dim() != 1 or w.numel() == 0:
            raise ValueError(f"weights has shape {tuple(w.shape)}; expected (K,) with K >= 1")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights={w.tolist()} must be non-negative with a positive sum")
        if m.dim() != 2 or m.shape[0] != w.shape[0]:
            raise ValueError(
                f"means has shape {tuple(m.shape)}; expected (K, d) with K = {w.shape[0]}"
            )
        K, d = m.shape
        if c.shape == (K,):
            c = c[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif c.shape == (K, d):
            c = torch.diag_embed(c)
        if c.shape != (K, d, d):
            raise ValueError(
                f"covs has shape {tuple(c.shape)}; expected (K, d, d) = ({K}, {d}, {d}), "
                f"(K,) or (K, d)"
            )
        if not torch.allclose(c, c.transpose(-1, -2), rtol=1e-10, atol=1e-12):
            raise ValueError("covs must be symmetric")
        evals, evecs = torch.linalg.eigh(c)
        if bool((evals <= 0).any()):
            raise ValueError(
                f"covs must be positive definite; smallest eigenvalue {evals.min().item():.3g}"
            )
        self.weights = w / w.sum()
        self.means = m
        self.covs = c
        self._evals = evals  # (K, d)
        self._evecs = evecs  # (K, d, d), columns are eigenvectors
        self._chol = torch.linalg.cholesky(c)
        # the same eigenbases stacked for a batch sharing one time (what samplers ask for):
        # W[:, k d + e] = U_k[:, e], mU = U_k^T m_k flattened, S sums each block of d columns
        self._W = evecs.permute(1, 0, 2).reshape(d, K * d)
        self._mU = torch.einsum("kd,kde->ke", m, evecs).reshape(K * d)
        self._S = torch.kron(
            torch.eye(K, dtype=torch.float64), torch.ones(d, 1, dtype=torch.float64)
        )
        self._stacked_cache: dict[tuple, tuple[Tensor, ...]] = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # -- sampling -----------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Draw ``n`` samples (shape ``(n, d)``); with ``return_labels`` also the components."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer")
        dtype = dtype or torch.get_default_dtype()
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self._chol[labels], z)
        return (x.to(dtype), labels) if return_labels else x.to(dtype)

    # -- densities ----------------------------------------------------------------------------
    def _flatten(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else None
        if flat is None or flat.shape[1] != self.dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected (B, {self.dim}) or (B, ...) with "
                f"{self.dim} elements per sample"
            )
        return flat.to(torch.float64)

    def _coefficients(self, t, sde: DiffusionProcess | None, batch: int, device) -> tuple:
        """``alpha`` and ``sigma^2`` as float64 ``(B or 1, 1, 1)`` tensors (0 noise when no SDE)."""
        if sde is None:
            one = torch.ones((), dtype=torch.float64, device=device)
            return one.view(1, 1, 1), (0 * one).view(1, 1, 1)
        if isinstance(t, Tensor) and t.dim() > 0 and t.shape != (batch,):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected a number or ({batch},)")
        t64 = torch.as_tensor(t, dtype=torch.float64, device=device)
        alpha, sigma = sde.marginal(t64)
        alpha, sigma = alpha.to(torch.float64), sigma.to(torch.float64)
        return alpha.reshape(-1, 1, 1), (sigma**2).reshape(-1, 1, 1)

    def _components(self, x: Tensor, t, sde) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per component: log N_k(x) ``(B, K)``, the whitened residual and variances, evecs."""
        flat = self._flatten(x)
        dev = flat.device
        evals, evecs, means = self._evals.to(dev), self._evecs.to(dev), self.means.to(dev)
        alpha, sig2 = self._coefficients(t, sde, flat.shape[0], dev)
        var = alpha**2 * evals + sig2  # (B|1, K, d): eigenvalues of alpha^2 C_k + sigma^2 I
        resid = flat[:, None, :] - alpha * means  # (B, K, d)
        y = torch.einsum("bkd,kde->bke", resid, evecs)  # coordinates in each eigenbasis
        log_n = -0.5 * (
            (y**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi)
        )
        return log_n, y, var, evecs

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p_0(x)`` (shape ``(B,)``)."""
        log_n, *_ = self._components(x, None, None)
        return torch.logsumexp(log_n + torch.log(self.weights).to(log_n.device), -1).to(x.dtype)

    def log_prob_t(self, x: Tensor, t, sde: DiffusionProcess) -> Tensor:
        """``log p_t(x)`` of the target diffused by ``sde`` to time ``t``."""
        log_n, *_ = self._components(x, t, sde)
        return torch.logsumexp(log_n + torch.log(self.weights).to(log_n.device), -1).to(x.dtype)

    @staticmethod
    def _shared_time(t) -> float | None:
        """The one time of a batch, or ``None`` when samples have their own times."""
        if not isinstance(t, Tensor) or t.dim() == 0:
            return float(t)
        flat = t.reshape(-1)
        return float(flat[0]) if bool((flat == flat[0]).all()) else None

    def _stacked(self, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``W``, ``S`` and ``mU`` on ``device`` in ``dtype`` (cached: the hot path of samplers)."""
        key = (device, dtype)
        if key not in self._stacked_cache:
            self._stacked_cache[key] = tuple(
                v.to(device=device, dtype=dtype) for v in (self._W, self._S, self._mU)
            )
        return self._stacked_cache[key]

    def _score_shared_time(self, x: Tensor, t: float, sde: DiffusionProcess) -> Tensor:
        """:meth:`score` for a batch at one time: the components stacked into one ``(d, K d)``
        matrix, so a batch costs three matrix products instead of many small reductions.

        Computed in ``x``'s dtype (float64 inputs stay exact to round-off; float32 samplers do
        not pay for float64 matrix products); the coefficients are float64 numbers.
        """
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim or not flat.is_floating_point():
            flat = self._flatten(x)
        dev, dtype = flat.device, flat.dtype
        alpha, sigma = (float(v) for v in sde.marginal(t))
        var64 = alpha * alpha * self._evals.reshape(-1) + sigma * sigma  # (K d,)
        log_norm = torch.log(self.weights) - 0.5 * (
            torch.log(var64).reshape(self.num_components, self.dim).sum(1)
            + self.dim * math.log(2 * math.pi)
        )
        W, S, mU = self._stacked(dev, dtype)
        y = flat @ W - alpha * mU
        z = y * (1.0 / var64).to(device=dev, dtype=dtype)
        resp = torch.softmax(log_norm.to(device=dev, dtype=dtype) - 0.5 * ((y * z) @ S), 1)
        return (-((resp @ S.T) * z) @ W.T).reshape(x.shape)

    def score(self, x: Tensor, t, sde: DiffusionProcess) -> Tensor:
        """``grad_x log p_t(x)``, same shape and dtype as ``x``."""
        if isinstance(t, Tensor) and t.dim() > 0 and t.shape != (x.shape[0],):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected a number or ({x.shape[0]},)")
        shared = self._shared_time(t)
        if shared is not None:
            return self._score_shared_time(x, shared, sde)
        log_n, y, var, evecs = self._components(x, t, sde)
        resp = torch.softmax(log_n + torch.log(self.weights).to(log_n.device), -1)  # (B, K)
        comp = torch.einsum("bke,kde->bkd", -y / var, evecs)  # per-component scores
        return (resp[..., None] * comp).sum(1).reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: DiffusionProcess) -> ScoreFn:
        """The exact ``(x, t) -> score`` callable for samplers."""

        def exact_score(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, t, sde)

        return exact_score

    def marginal_moments(self, t, sde: DiffusionProcess) -> tuple[Tensor, Tensor]:
        """Overall mean and covariance of ``p_t`` (float64): law of total variance."""
        alpha, sigma = (float(v) for v in sde.marginal(float(t)))
        mean = alpha * (self.weights @ self.means)
        centred = alpha * self.means - mean
        cov = (
            alpha**2 * torch.einsum("k,kij->ij", self.weights, self.covs)
            + torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
            + sigma**2 * torch.eye(self.dim, dtype=torch.float64)
        )
        return mean, cov

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        centred = self.means - self.mean
        return torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum(
            "k,ki,kj->ij", self.weights, centred, centred
        )

    def responsibilities(self, x: Tensor) -> Tensor:
        """``p(component k | x)`` under ``p_0``: shape ``(B, K)``."""
        log_n, *_ = self._components(x, None, None)
        return torch.softmax(log_n + torch.log(self.weights).to(log_n.device), -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.num_components}, d={self.dim})"


class Gaussian(GaussianMixture):
    """``N(mean, cov)`` with full covariance: the one-component mixture.

    Its diffused score is linear in x: ``score = -(alpha^2 C + sigma^2 I)^{-1} (x - alpha m)``.
    """

    def __init__(self, mean, cov) -> None:
        m = _as_f64(mean, "mean")
        c = _as_f64(cov, "cov")
        if m.dim() != 1:
            raise ValueError(f"mean has shape {tuple(m.shape)}; expected (d,)")
        d = m.shape[0]
        if c.dim() == 0:
            c = c * torch.eye(d, dtype=torch.float64)
        elif c.shape == (d,):
            c = torch.diag(c)
        if c.shape != (d, d):
            raise ValueError(f"cov has shape {tuple(c.shape)}; expected ({d}, {d}) to match mean")
        super().__init__(torch.ones(1, dtype=torch.float64), m[None], c[None])

    @property
    def mean(self) -> Tensor:
        return self.means[0]

    @property
    def cov(self) -> Tensor:
        return self.covs[0]

    def __repr__(self) -> str:
        return f"Gaussian(d={self.dim})"
