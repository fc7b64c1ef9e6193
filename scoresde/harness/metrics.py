"""Distances between a sampler's output and the exact target, and the convergence-order fit.

* :func:`gaussian_w2`: the 2-Wasserstein distance between two Gaussians in closed form (Bures);
* :func:`sliced_w2`: the sliced 2-Wasserstein distance between two samples (POT);
* :func:`mode_errors`: mode weights, means and covariances of a sample against a mixture;
* :func:`fit_order`: the empirical order, ``-slope`` of log error against log NFE.

A new metric is one function here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..targets import GaussianMixture

ArrayLike = Tensor | np.ndarray


def _f64(a: ArrayLike | float, name: str) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    out = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or Inf; expected finite numbers")
    return out


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_w2(mean1: ArrayLike, cov1: ArrayLike, mean2: ArrayLike, cov2: ArrayLike) -> float:
    """The 2-Wasserstein distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)`` (Bures):

    ``W2^2 = |m1 - m2|^2 + tr(C1 + C2 - 2 (C2^{1/2} C1 C2^{1/2})^{1/2})``,

    in float64, with symmetric square roots by eigendecomposition (negative round-off
    eigenvalues clipped, so PSD-singular covariances work) and the trace of the cross term as
    the nuclear norm of ``C1^{1/2} C2^{1/2}``. Its round-off floor is about ``sqrt(1e-16 tr C)``
    (3e-8 for unit-scale covariances).
    """
    m1, m2 = _f64(mean1, "mean1").reshape(-1), _f64(mean2, "mean2").reshape(-1)
    c1, c2 = _f64(cov1, "cov1"), _f64(cov2, "cov2")
    d = m1.shape[0]
    if m2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(
            f"shapes mean1 {m1.shape}, cov1 {c1.shape}, mean2 {m2.shape}, cov2 {c2.shape}; "
            f"expected ({d},) and ({d}, {d})"
        )
    # tr (C2^1/2 C1 C2^1/2)^1/2 = sum of the singular values of C1^1/2 C2^1/2: no square root
    # of a squared matrix, so the round-off floor is sqrt(eps tr C), not sqrt(eps cond tr C)
    cross = np.linalg.svd(_psd_sqrt(c1) @ _psd_sqrt(c2), compute_uv=False).sum()
    bures = np.trace(c1) + np.trace(c2) - 2.0 * cross
    return float(np.sqrt(max(float(np.sum((m1 - m2) ** 2)) + bures, 0.0)))


def _require_ot() -> Any:
    try:
        import ot
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sample-based optimal-transport metrics need POT, the optional 'ot' extra: "
            "pip install 'scoresde[ot]' (or pip install pot)"
        ) from err
    return ot


def sliced_w2(x: Tensor, y: Tensor, n_projections: int = 64, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (POT), ``SW2^2 = E_theta W2^2(theta#x, theta#y)``.

    ``theta`` uniform on the sphere, ``n_projections`` Monte-Carlo directions drawn from ``seed``
    (fix it to compare several samples against one reference with the same directions).
    """
    ot = _require_ot()
    a = x.detach().to("cpu", torch.float64).numpy()
    b = y.detach().to("cpu", torch.float64).numpy()
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, seed=seed))


def _mode_moments(samples: Tensor, target: GaussianMixture) -> tuple[Tensor, Tensor, Tensor] | None:
    """Responsibility-weighted ``(w_hat, m_hat, C_hat)`` of the finite rows of ``samples``.

    With ``r_ik = p(k | x_i)`` under the target: ``w_hat_k = mean_i r_ik``,
    ``m_hat_k = sum_i r_ik x_i / sum_i r_ik``,
    ``C_hat_k = sum_i r_ik (x_i - m_hat_k)(x_i - m_hat_k)^T / sum_i r_ik``. For exact samples of
    the mixture these converge to ``(w_k, m_k, C_k)`` (``E_p[r_k(x) f(x)] = w_k E_{N_k}[f]``),
    however much the components overlap, which hard assignments would not. ``None`` when no
    row is finite; a mode no sample reached has ``w_hat_k = 0`` and NaN moments.
    """
    x = samples.detach().reshape(samples.shape[0], -1).to("cpu", torch.float64)
    x = x[torch.isfinite(x).all(1)]
    if x.shape[0] == 0:
        return None
    r = target.responsibilities(x)  # (B, K)
    mass = r.sum(0)  # (K,)
    empty = mass < 1e-9  # a mode no sample reached: its moments are undefined
    safe = mass.clamp_min(1e-300)
    m_hat = (r.T @ x) / safe[:, None]
    centred = x[None, :, :] - m_hat[:, None, :]  # (K, B, d)
    c_hat = torch.einsum("bk,kbi,kbj->kij", r, centred, centred) / safe[:, None, None]
    m_hat[empty] = math.nan
    c_hat[empty] = math.nan
    return mass / x.shape[0], m_hat, c_hat


def per_mode_w2(samples: Tensor, target: GaussianMixture) -> float:
    """Per-mode 2-Wasserstein error of ``samples`` against a Gaussian mixture.

    ``sum_k w_k W2(N(m_hat_k, C_hat_k), N(m_k, C_k))`` with the responsibility-weighted moments
    of :func:`_mode_moments` and the Bures W2 of :func:`gaussian_w2`, averaged with the true
    weights ``w_k``. It measures each mode's location and shape; the mode weights are measured
    apart (``mode_weight_err``). Its noise floor for ``n`` exact samples falls like ``n^(-1/2)``,
    unlike the sliced W2 of a multimodal target (``n^(-1/4)``). ``inf`` if a mode is empty or no
    sample is finite.
    """
    moments = _mode_moments(samples, target)
    return math.inf if moments is None else _weighted_mode_w2(moments[1], moments[2], target)


def _weighted_mode_w2(m_hat: Tensor, c_hat: Tensor, target: GaussianMixture) -> float:
    if not bool(torch.isfinite(m_hat).all()):
        return math.inf
    w = target.weights.tolist()
    return sum(
        w[k] * gaussian_w2(m_hat[k], c_hat[k], target.means[k], target.covs[k])
        for k in range(target.num_components)
    )


def mode_errors(samples: Tensor, target: GaussianMixture) -> dict[str, float]:
    """Mode statistics of ``samples`` against a mixture, by soft assignment (:func:`_mode_moments`).

    Returns

    * ``mode_weight_err = 1/2 sum_k |w_hat_k - w_k|`` (total variation between weight vectors),
    * ``mode_mean_err = max_k |m_hat_k - m_k|``,
    * ``mode_cov_err = max_k ||C_hat_k - C_k||_F / ||C_k||_F``,
    * ``per_mode_w2`` (:func:`per_mode_w2`).

    A mode no sample reached makes the mean, covariance and per-mode W2 errors ``inf``.
    """
    moments = _mode_moments(samples, target)
    if moments is None:
        return {
            "mode_weight_err": 1.0,
            "mode_mean_err": math.inf,
            "mode_cov_err": math.inf,
            "per_mode_w2": math.inf,
        }
    w_hat, m_hat, c_hat = moments
    mean_err = (m_hat - target.means).norm(dim=1).nan_to_num(nan=math.inf)
    cov_err = (c_hat - target.covs).flatten(1).norm(dim=1) / target.covs.flatten(1).norm(dim=1)
    return {
        "mode_weight_err": 0.5 * float((w_hat - target.weights).abs().sum()),
        "mode_mean_err": float(mean_err.max()),
        "mode_cov_err": float(cov_err.nan_to_num(nan=math.inf).max()),
        "per_mode_w2": _weighted_mode_w2(m_hat, c_hat, target),
    }


def _empirical_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
    mean = x.mean(0)
    c = x - mean
    return mean, c.T @ c / (x.shape[0] - 1)


def fit_order(nfe: Sequence[float], error: Sequence[float], last: int | None = 3) -> float:
    """Empirical convergence order: ``-slope`` of the least-squares line of log error on log NFE.

    Non-finite or non-positive errors are dropped. Only the ``last`` points with the largest NFE
    are used (the asymptotic regime; ``None`` uses all). ``nan`` with fewer than two points.
    """
    pts = sorted(
        (math.log(n), math.log(e))
        for n, e in zip(nfe, error, strict=True)
        if n and n > 0 and e is not None and math.isfinite(e) and e > 0
    )
    if last is not None:
        pts = pts[-last:]
    if len({p[0] for p in pts}) < 2:
        return math.nan
    xs, ys = np.array(pts).T
    slope = np.polyfit(xs, ys, 1)[0]
    return float(-slope)
