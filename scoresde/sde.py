"""Diffusion SDEs (Song et al. 2021): VP, sub-VP and VE over a noise schedule.

Each process is linear, ``dx = f(t) x dt + g(t) dw``, with Gaussian kernel
``x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I)``. The objects

* satisfy :class:`solvers.DiffusionProcess`, so every sampler works on every SDE;
* are torchsde SDEs (``f``, ``g``, ``sde_type``, ``noise_type``): ``torchsde.sdeint(sde, x0, ts)``
  simulates the forward process on a ``(batch, d)`` state;
* build the reverse-time SDE (:meth:`DiffusionSDE.reverse`, for torchsde) and the
  probability-flow ODE (:meth:`DiffusionSDE.probability_flow`, for torchdiffeq).

Coefficients are computed in float64 and returned in the dtype of the time argument.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

import schedules as S
from schedules.base import TimeLike, as_float64, check_time
from schedules.parametrization import broadcast_to
from solvers.protocol import ScoreFn, pf_velocity
from solvers.torchsde_solvers import ReverseSDE


def _clamp_time(t: Tensor, T: float) -> Tensor:
    """Clamp an integrator's time into ``[0, T]``.

    torchdiffeq's adaptive solvers step past the end time and interpolate back, and torchsde's
    float32 time grid can land a hair outside; the vector fields are extended continuously by
    their boundary values there (for VP, t < 0 would give a negative variance).
    """
    return t.clamp(0.0, T)


def _per_sample_time(t: Tensor, batch: int, like: Tensor) -> Tensor:
    """Expand a scalar time to the ``(B,)`` vector score functions take."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(batch) if t.dim() == 0 else t


class DiffusionSDE(abc.ABC):
    """Base class: the generic math of a linear diffusion with Gaussian kernel.

    Subclasses give the float64 primitives ``_log_alpha``, ``_sigma``, ``_drift_coef``,
    ``_diffusion_sq``, ``_log_snr``, ``_t_from_log_snr`` and ``prior_std``.
    """

    sde_type = "ito"
    noise_type = "diagonal"
    default_t_end: float = 1e-3
    vp_schedule: bool = True
    """Whether the process runs on a variance-preserving schedule (else a variance-exploding one)."""

    def __init__(self, schedule: S.Schedule) -> None:
        if not isinstance(schedule, S.Schedule):
            raise ValueError(f"schedule={schedule!r} must be a schedules.Schedule")
        if schedule.variance_preserving != self.vp_schedule:
            kind = "variance-preserving" if self.vp_schedule else "variance-exploding"
            raise ValueError(f"{type(self).__name__} needs a {kind} schedule, got {schedule!r}")
        self.schedule = schedule

    # -- primitives ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _sigma(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _drift_coef(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _diffusion_sq(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _log_snr(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _t_from_log_snr(self, lam: Tensor) -> Tensor: ...

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior ``p_T = N(0, prior_std^2 I)``."""

    # -- coefficients -------------------------------------------------------------------------
    @property
    def T(self) -> float:
        return self.schedule.T

    def _eval(self, fn, t: TimeLike) -> Tensor:
        t64, dtype = as_float64(t)
        check_time(t64, self.T)
        return fn(t64).to(dtype)

    def marginal(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))``: mean coefficient and std of ``x_t | x_0``."""
        t64, dtype = as_float64(t)
        check_time(t64, self.T)
        return torch.exp(self._log_alpha(t64)).to(dtype), self._sigma(t64).to(dtype)

    def log_snr(self, t: TimeLike) -> Tensor:
        """``lambda(t) = log(alpha(t) / sigma(t))``."""
        return self._eval(self._log_snr, t)

    def t_from_log_snr(self, lam: TimeLike) -> Tensor:
        """The time whose log-SNR is ``lam`` (inverse of :meth:`log_snr`)."""
        lam64, dtype = as_float64(lam)
        return self._t_from_log_snr(lam64).to(dtype)

    def drift_coef(self, t: TimeLike) -> Tensor:
        """``f(t)`` in the drift ``f(x, t) = f(t) x``."""
        return self._eval(self._drift_coef, t)

    def diffusion(self, t: TimeLike) -> Tensor:
        """``g(t)``."""
        return self._eval(lambda s: torch.sqrt(self._diffusion_sq(s)), t)

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """The forward drift ``f(t) x``; ``t`` is a number, a 0-dim tensor or ``(B,)``."""
        return broadcast_to(self.drift_coef(t), x) * x

    def transition(self, s: TimeLike, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(alpha_{t|s}, sigma_{t|s})`` of ``x_t | x_s`` for ``s <= t``.

        ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``
        (both kernels solve the same linear moment ODE ``dv/dt = 2 f v + g^2``).
        """
        s64, dtype = as_float64(s)
        t64, _ = as_float64(t)
        check_time(s64, self.T, "s")
        check_time(t64, self.T)
        a = torch.exp(self._log_alpha(t64) - self._log_alpha(s64))
        var = self._sigma(t64) ** 2 - a**2 * self._sigma(s64) ** 2
        return a.to(dtype), torch.sqrt(var.clamp_min(0.0)).to(dtype)

    def posterior(self, s: TimeLike, t: TimeLike) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients of ``q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, var I)`` for ``s < t``.

        ``c_t = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``c_0 = alpha_s sigma_{t|s}^2 / sigma_t^2``,
        ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (Bayes' rule for Gaussians).
        """
        a_ts, sig_ts = self.transition(s, t)
        alpha_s, sigma_s = self.marginal(s)
        _, sigma_t = self.marginal(t)
        c_t = a_ts * sigma_s**2 / sigma_t**2
        c_0 = alpha_s * sig_ts**2 / sigma_t**2
        var = sig_ts**2 * sigma_s**2 / sigma_t**2
        return c_t, c_0, var

    # -- sampling the forward process ---------------------------------------------------------
    def sample_marginal(
        self, x0: Tensor, t: TimeLike, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``x_t = alpha(t) x0 + sigma(t) eps``; returns ``(x_t, eps)``.

        ``t`` is a number or a per-sample tensor of shape ``(B,)`` with ``B = x0.shape[0]``.
        """
        if isinstance(t, Tensor) and t.dim() > 0 and (t.dim() != 1 or t.shape[0] != x0.shape[0]):
            raise ValueError(
                f"t has shape {tuple(t.shape)} but x0 has batch size {x0.shape[0]}; "
                "expected a number or a (B,) tensor"
            )
        alpha, sigma = self.marginal(t)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xt = broadcast_to(alpha, x0) * x0 + broadcast_to(sigma, x0) * noise
        return xt, noise

    def prior_sample(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """``x_T ~ N(0, prior_std^2 I)`` of the given shape (batch first)."""
        shape = tuple(int(n) for n in shape)
        if len(shape) == 0 or any(n <= 0 for n in shape):
            raise ValueError(f"shape={shape!r} must be a non-empty tuple of positive sizes")
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std * z

    def prior_logp(self, x: Tensor) -> Tensor:
        """``log N(x; 0, prior_std^2 I)`` summed over every non-batch dimension: shape ``(B,)``."""
        d = x[0].numel()
        var = self.prior_std**2
        sq = x.reshape(x.shape[0], -1).pow(2).sum(1)
        return -0.5 * sq / var - 0.5 * d * math.log(2 * math.pi * var)

    # -- torchsde interface (forward time, state (batch, d)) ------------------------------------
    def f(self, t: Tensor, y: Tensor) -> Tensor:
        """torchsde drift: ``f(t) y``."""
        return self.drift(y, t)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        """torchsde diagonal diffusion: ``g(t)`` expanded to ``y``'s shape."""
        return self.diffusion(t).to(y.dtype).expand_as(y)

    # -- derived processes --------------------------------------------------------------------
    def reverse(self, score_fn: ScoreFn, event_shape: Sequence[int] | None = None) -> ReverseSDE:
        """The reverse-time SDE in ``s = T - t``, integrable by ``torchsde.sdeint``: with
        ``t = T - s``, ``dx = -[f(x, t) - g(t)^2 score(x, t)] ds + g(t) dw_s`` on a
        ``(batch, d)`` state (unflattened to ``event_shape`` for the score when given)."""
        return ReverseSDE.from_score_fn(self, score_fn, event_shape)

    def probability_flow(self, score_fn: ScoreFn) -> ProbabilityFlowODE:
        """The probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` (torchdiffeq)."""
        return ProbabilityFlowODE(self, score_fn)

    # -- serialisation ------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "schedule": self.schedule.to_config()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r})"


class _VPDrift(DiffusionSDE):
    """What VP and sub-VP share: a VP schedule (default :class:`LinearVP`), the drift
    ``-beta(t) x / 2``, ``alpha = exp(-I/2)``, the prior ``N(0, I)`` and ``t_end = 1e-3``."""

    default_t_end = 1e-3

    def __init__(self, schedule: S.Schedule | None = None) -> None:
        super().__init__(S.LinearVP() if schedule is None else schedule)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return self.schedule._log_alpha(t)

    def _drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.schedule._beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class VPSDE(_VPDrift):
    """Variance preserving: ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw``.

    ``alpha = exp(-I/2)``, ``sigma = sqrt(-expm1(-I))`` with ``I = int_0^t beta``; prior ``N(0, I)``.
    """

    def _sigma(self, t: Tensor) -> Tensor:
        return self.schedule._sigma(t)

    def _diffusion_sq(self, t: Tensor) -> Tensor:
        return self.schedule._beta(t)

    def _log_snr(self, t: Tensor) -> Tensor:
        return self.schedule._log_snr(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return self.schedule._t_from_log_snr(lam)

    def transition(self, s: TimeLike, t: TimeLike) -> tuple[Tensor, Tensor]:
        """VP: ``alpha_{t|s} = exp(-(I_t - I_s)/2)``, ``sigma_{t|s} = sqrt(-expm1(-(I_t - I_s)))``."""
        s64, dtype = as_float64(s)
        t64, _ = as_float64(t)
        check_time(s64, self.T, "s")
        check_time(t64, self.T)
        dI = self.schedule._integral_beta(t64) - self.schedule._integral_beta(s64)
        return torch.exp(-0.5 * dI).to(dtype), torch.sqrt(-torch.expm1(-dI)).to(dtype)

    def ddpm(self, num_steps: int = 1000):
        """The discrete DDPM view over ``num_steps`` steps (:class:`scoresde.ddpm.DiscreteDDPM`)."""
        from .ddpm import DiscreteDDPM

        return DiscreteDDPM(self, num_steps)


class SubVPSDE(_VPDrift):
    """Sub-VP: ``dx = -beta x / 2 dt + sqrt(beta (1 - exp(-2 I))) dw``.

    ``alpha = exp(-I/2)`` and ``sigma = 1 - alpha^2 = -expm1(-I)`` (no square root); prior ``N(0, I)``.
    """

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.schedule._integral_beta(t))

    def _diffusion_sq(self, t: Tensor) -> Tensor:
        return self.schedule._beta(t) * -torch.expm1(-2.0 * self.schedule._integral_beta(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        integral = self.schedule._integral_beta(t)
        return -0.5 * integral - torch.log(-torch.expm1(-integral))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^(2 lam)))
        #                                         = 2 / (e^-lam + sqrt(e^(-2 lam) + 4)),
        # the second form for lam > 0 so that lam = +inf (t = 0) gives alpha = 1, not inf - inf.
        small = lam + math.log(2.0) - torch.log1p(torch.sqrt(1.0 + 4.0 * torch.exp(2.0 * lam)))
        e = torch.exp(-lam.clamp_min(0.0))
        large = math.log(2.0) - torch.log(e + torch.sqrt(e * e + 4.0))
        log_alpha = torch.where(lam > 0, large, small)
        return self.schedule._t_from_integral(-2.0 * log_alpha)


class VESDE(DiffusionSDE):
    """Variance exploding: ``dx = sqrt(d sigma^2/dt) dw``; ``alpha = 1``; prior ``N(0, sigma(T)^2 I)``."""

    default_t_end = 1e-5
    vp_schedule = False

    def __init__(self, schedule: S.Schedule | None = None) -> None:
        super().__init__(S.VEGeometric() if schedule is None else schedule)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return self.schedule._log_alpha(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.schedule._sigma(t)

    def _drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _diffusion_sq(self, t: Tensor) -> Tensor:
        return self.schedule._beta(t)

    def _log_snr(self, t: Tensor) -> Tensor:
        return self.schedule._log_snr(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return self.schedule._t_from_log_snr(lam)

    @property
    def prior_std(self) -> float:
        return float(self.schedule.sigma(self.T))


class ProbabilityFlowODE(nn.Module):
    """``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` as a torchdiffeq vector field ``(t, x)``.

    ``t`` arrives from torchdiffeq as a 0-dim tensor and is expanded to ``(B,)`` for the score.
    Any state shape works. ``nfe`` counts the score evaluations.
    """

    def __init__(self, sde: DiffusionSDE, score_fn: ScoreFn) -> None:
        super().__init__()
        self.sde = sde
        self.score_fn = score_fn
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.velocity_and_score(t, x)[0]

    def velocity_and_score(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The field and the score it used (the likelihood checks the score's graph)."""
        t = _clamp_time(t, self.sde.T)
        self.nfe += 1
        score = self.score_fn(x, _per_sample_time(t, x.shape[0], x))
        f = broadcast_to(self.sde.drift_coef(t), x)
        g2 = self.sde.diffusion(t).to(x.dtype) ** 2
        return pf_velocity(x, score, f, g2), score


SDES: dict[str, type[DiffusionSDE]] = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}


def sde_from_config(config: dict[str, Any]) -> DiffusionSDE:
    """Rebuild an SDE from :meth:`DiffusionSDE.to_config`."""
    name = config.get("name")
    if name not in SDES:
        raise ValueError(f"unknown SDE {name!r}; available: {', '.join(SDES)}")
    return SDES[name](S.from_config(config["schedule"]))
