"""Sample trained diffusers and k-diffusion models with any solver of this library.

An adapter turns a model into ``(process, score function, grid)``:

* :func:`from_diffusers` -- a diffusers model (``model(x, timestep).sample``) and its scheduler.
  The scheduler's ``alphas_cumprod`` table becomes :class:`schedules.TabulatedVP` (timestep ``k``
  at ``t = (k + 1) / N``, exact at the table's times, log-SNR linear in ``t`` between them) under
  a :class:`~scoresde.VPSDE`. The prediction (``epsilon``, ``v_prediction`` or ``sample``, from
  ``scheduler.config.prediction_type``) is turned into the score:
  ``score = -eps / sigma``, ``eps = sigma x + alpha v``, ``eps = (x - alpha x0) / sigma``.
* :func:`from_k_diffusion` -- a k-diffusion denoiser ``D(x, sigma) -> x0`` (EDM form
  ``x = x0 + sigma eps``) under :class:`~scoresde.VESDE` with ``sigma(t) = t``
  (:class:`schedules.VELinear`): ``score = (D(x, sigma) - x) / sigma^2``.

``sample(m.sde, m.score_fn, x_T=x_T, solver=..., grid=m.grid(n))`` then runs any solver; the final
Tweedie step of :func:`solvers.sample` is the step to ``alpha_bar = 1`` (``sigma = 0``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from schedules import TabulatedVP, VELinear, karras_grid
from solvers import convert
from solvers.parametrization import broadcast_to

from .sde import VESDE, VPSDE, DiffusionSDE

# diffusers' prediction_type -> the name solvers.convert uses
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


@dataclass
class AdaptedModel:
    """A foreign model seen as a continuous-time diffusion.

    Attributes:
        sde: the process (a :class:`~scoresde.DiffusionSDE`; any solver accepts it).
        score_fn: ``(x, t) -> score`` with ``t`` of shape ``(B,)``.
        grid_fn: ``num_inference_steps -> decreasing float64 times`` (see :meth:`grid`).
        prediction: what the wrapped model predicts (``eps``, ``v``, ``x0``).
    """

    sde: DiffusionSDE
    score_fn: Callable[[Tensor, Tensor], Tensor]
    grid_fn: Callable[..., Tensor]
    prediction: str

    def grid(self, num_inference_steps: int, **options: Any) -> Tensor:
        """The continuous times of the model's own sampling schedule, descending (float64)."""
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 2
        ):
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer >= 2")
        return self.grid_fn(num_inference_steps, **options)


def _first_output(out: Any) -> Tensor:
    """The tensor of a diffusers output (``.sample``), a tuple's first entry, or the tensor."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise ValueError(f"the model returned {type(out).__name__}; expected a tensor or .sample")


def from_diffusers(
    model: nn.Module | Callable[..., Any], scheduler: Any, prediction_type: str | None = None
) -> AdaptedModel:
    """Wrap a diffusers model and its scheduler (DDPM, DDIM, ... anything with ``alphas_cumprod``,
    ``set_timesteps`` and ``config.prediction_type``).

    ``model(x, timestep)`` is called with the float timestep ``k = N t - 1`` (an integer at the
    table's times; times below the first table time reuse ``k = 0``). A model with learned
    variance (twice the input channels) contributes its first half, as in diffusers.
    ``grid(n)`` gives the times of ``scheduler.set_timesteps(n)`` on a copy of the scheduler.
    """
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod table")
    kind = prediction_type or getattr(getattr(scheduler, "config", None), "prediction_type", None)
    kind = kind or "epsilon"
    if kind not in DIFFUSERS_PREDICTIONS:
        raise ValueError(
            f"unknown prediction_type {kind!r}; expected one of {', '.join(DIFFUSERS_PREDICTIONS)}"
        )
    pred = DIFFUSERS_PREDICTIONS[kind]
    schedule = TabulatedVP(table)
    sde = VPSDE(schedule)
    sde.default_t_end = float(schedule.knots[0])

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        k = schedule.timestep_of(t.to(torch.float64))
        nearest = k.round()
        k = torch.where((k - nearest).abs() < 1e-6, nearest, k).clamp_min(0.0)
        out = _first_output(model(x, k.to(x.dtype)))
        if out.dim() == x.dim() and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        alpha, sigma = sde.marginal(t)
        return convert(out.to(x.dtype), pred, "score", x, alpha, sigma)

    def grid_fn(n: int) -> Tensor:
        sched = copy.deepcopy(scheduler)
        sched.set_timesteps(n)
        times = schedule.time_of(torch.as_tensor(sched.timesteps).cpu())
        if not bool((times[1:] < times[:-1]).all()):
            raise ValueError(f"{type(scheduler).__name__}'s timesteps are not strictly decreasing")
        return times

    return AdaptedModel(sde, score_fn, grid_fn, pred)


def from_k_diffusion(
    denoiser: nn.Module | Callable[..., Tensor], sigma_min: float, sigma_max: float
) -> AdaptedModel:
    """Wrap a k-diffusion denoiser ``D(x, sigma) -> x0`` (``sigma`` of shape ``(B,)``).

    The process is ``x_t = x0 + t eps`` on ``[0, sigma_max]`` (time = noise level), sampled down
    to ``sigma_min``. ``grid(n, rho=7)`` gives k-diffusion's ``get_sigmas_karras(n, sigma_min,
    sigma_max, rho)`` without its final zero (the final zero is the Tweedie step).
    """
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}: expected 0 < sigma_min < sigma_max"
        )
    sde = VESDE(VELinear(sigma_max))
    sde.default_t_end = sigma_min

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        x0 = _first_output(denoiser(x, t))
        return (x0.to(x.dtype) - x) / broadcast_to(t * t, x)

    def grid_fn(n: int, rho: float = 7.0) -> Tensor:
        return karras_grid(sde, n - 1, sigma_max, sigma_min, rho=rho)

    return AdaptedModel(sde, score_fn, grid_fn, "x0")


__all__ = ["DIFFUSERS_PREDICTIONS", "AdaptedModel", "from_diffusers", "from_k_diffusion"]
