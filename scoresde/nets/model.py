"""The parametrisation wrapper: a network that predicts eps, x0, score or v, turned into the
``(x, t) -> score`` function every sampler takes.

With ``x_t = alpha(t) x0 + sigma(t) eps`` (``alpha, sigma = sde.marginal(t)``) the wrapper computes

    pred  = net(c_in(t) x_t, c_noise(t), y)
    score = convert(pred, prediction, "score", x_t, alpha, sigma)      (schedules.parametrization)

* ``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` scales the input to unit variance when the
  data have per-coordinate std ``sigma_data`` (EDM's input preconditioning, Karras et al. 2022;
  it is 1 for VP with ``sigma_data = 1``, and tames VE inputs of std up to ``sigma_max``). The
  network's target is not rescaled: it predicts the plain eps / x0 / score / v.
* ``c_noise`` is the time feature the network is conditioned on:
  ``time_input="log_snr"`` (default): ``c = -lambda(t) / 4`` with ``lambda = log(alpha / sigma)``,
  EDM's ``log(sigma / alpha) / 4``: about ``[-1.7, 1.3]`` for the default VP SDE and
  ``[-1.2, 1.0]`` for the default VE SDE, and the same noise level gives the same feature
  whatever the SDE; ``time_input="t"``: ``c = t / T`` in ``[0, 1]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from schedules.parametrization import PREDICTIONS, broadcast_to, convert
from solvers.protocol import ScoreFn

TIME_INPUTS = ("log_snr", "t")


class ScoreModel(nn.Module):
    """``net`` plus the SDE and parametrisation that make it a score model.

    Args:
        net: a module ``net(x, c, y=None)`` returning a tensor shaped like ``x``
            (:class:`~scoresde.nets.MLP`, :class:`~scoresde.nets.UNet`, or your own).
        sde: the diffusion (anything with ``marginal(t) -> (alpha, sigma)`` and ``T``).
        prediction: what ``net`` predicts: ``"eps"`` (default), ``"x0"``, ``"score"`` or ``"v"``.
        time_input: ``"log_snr"`` (default) or ``"t"`` (see the module docstring).
        sigma_data: per-coordinate std of the data, for the input scaling ``c_in``.
    """

    def __init__(
        self,
        net: nn.Module,
        sde: Any,
        prediction: str = "eps",
        time_input: str = "log_snr",
        sigma_data: float = 1.0,
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input={time_input!r}; expected one of {', '.join(TIME_INPUTS)}")
        if not math.isfinite(float(sigma_data)) or float(sigma_data) <= 0:
            raise ValueError(f"sigma_data={sigma_data!r} must be a finite positive number")
        if not callable(getattr(sde, "marginal", None)):
            raise ValueError(f"sde={sde!r} has no marginal(t); expected a diffusion SDE")
        self.net = net
        self.sde = sde
        self.prediction = prediction
        self.time_input = time_input
        self.sigma_data = float(sigma_data)

    # -- configuration ------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The wrapper's settings as a plain dict (stored in checkpoints)."""
        return {
            "prediction": self.prediction,
            "time_input": self.time_input,
            "sigma_data": self.sigma_data,
        }

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a class-conditional net (``None`` if unconditional)."""
        return getattr(self.net, "num_classes", None)

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" (classifier-free guidance): ``num_classes``."""
        return self.num_classes

    # -- coefficients -------------------------------------------------------------------------
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` from ``sde.marginal`` (float64 inside, ``t``'s dtype out)."""
        return self.sde.marginal(t)

    def noise_feature(self, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``c_noise``: ``-lambda / 4 = (log sigma - log alpha) / 4`` or ``t / T``."""
        if self.time_input == "log_snr":
            return 0.25 * (torch.log(sigma) - torch.log(alpha))
        return t / float(self.sde.T)

    def _times(self, t: Tensor | float, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.to(x.dtype)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected a scalar or ({x.shape[0]},)")
        return t

    # -- evaluation ---------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        y: Tensor | int | None = None,
        *,
        alpha: Tensor | None = None,
        sigma: Tensor | None = None,
    ) -> Tensor:
        """The raw prediction (of kind ``self.prediction``) at ``x = x_t``, in ``x``'s dtype.

        The net is evaluated in its parameters' dtype (the input is cast to it), so a float32
        model scores a float64 state; outside autocast only.

        ``alpha`` and ``sigma`` (``(B,)``) may be passed when the caller has them already
        (the losses do), saving a second ``sde.marginal`` evaluation.
        """
        t = self._times(t, x)
        if alpha is None or sigma is None:
            alpha, sigma = self.coefficients(t)
        alpha = alpha.to(
            device=x.device,
            dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype,
        )
        sigma = sigma.to(alpha)
        c_in = torch.rsqrt(alpha**2 * self.sigma_data**2 + sigma**2)
        c_noise = self.noise_feature(t.to(alpha.dtype), alpha, sigma)
        x_in = x * broadcast_to(c_in, x)
        # the net runs in its parameters' precision whatever the state's (a float64 sampling
        # state with a float32 net); the prediction comes back in x's dtype below
        weight = next(self.net.parameters(), None)
        if weight is not None and weight.is_floating_point() and weight.dtype != x_in.dtype:
            if not torch.is_autocast_enabled(x.device.type):
                x_in, c_noise = x_in.to(weight.dtype), c_noise.to(weight.dtype)
        pred = self.net(x_in, c_noise, y)
        if pred.shape != x.shape:
            raise ValueError(
                f"the network returned shape {tuple(pred.shape)}; expected {tuple(x.shape)}"
            )
        return pred.to(x.dtype)

    def predict(
        self, x: Tensor, t: Tensor | float, kind: str = "eps", y: Tensor | int | None = None
    ) -> Tensor:
        """The prediction converted to ``kind`` (eps, x0, score or v) with the exact formulas of
        :func:`schedules.parametrization.convert`."""
        t = self._times(t, x)
        alpha, sigma = self.coefficients(t)
        pred = self.forward(x, t, y, alpha=alpha, sigma=sigma)
        return convert(pred, self.prediction, kind, x, alpha.to(x.dtype), sigma.to(x.dtype))

    def score(self, x: Tensor, t: Tensor | float, y: Tensor | int | None = None) -> Tensor:
        """``grad_x log p_t(x [| y])``."""
        return self.predict(x, t, "score", y)

    def score_fn(self, y: Tensor | int | None = None) -> ScoreFn:
        """The ``(x, t) -> score`` callable for samplers (conditional on ``y`` if given).

        For classifier-free guidance combine :meth:`score` (as ``cond_score_fn``) with
        ``scoresde.guidance.classifier_free_guidance(model.score, y, w, model.null_label)``.
        """

        def model_score(x: Tensor, t: Tensor) -> Tensor:
            return self.score(x, t, y)

        return model_score

    def extra_repr(self) -> str:
        return (
            f"sde={self.sde!r}, prediction={self.prediction!r}, time_input={self.time_input!r}, "
            f"sigma_data={self.sigma_data:g}"
        )
