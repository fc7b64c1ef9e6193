"""The discrete DDPM view of a VP SDE (Ho et al. 2020).

Over ``N`` steps the chain lives at ``t_i = i T / N``, ``i = 0..N``, with
``alpha-bar_i = alpha(t_i)^2`` taken from the continuous schedule (so the discrete and the
continuous marginals agree exactly), ``alpha_i = alpha-bar_i / alpha-bar_{i-1}`` and
``beta_i = 1 - alpha_i``. (The score-SDE reference code instead uses
``beta_i = linspace(beta_min / N, beta_max / N)``, which matches only to first order.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from schedules.parametrization import broadcast_to


class DiscreteDDPM:
    """``q(x_i | x_{i-1}) = N(sqrt(alpha_i) x_{i-1}, beta_i I)``, ``i = 1..N``.

    Attributes (float64, index ``i`` at position ``i``; position 0 is ``t = 0``):
        t: the times ``t_i``.
        alpha_bars: ``alpha-bar_i`` (``alpha-bar_0 = 1``).
        alphas, betas: ``alpha_i`` and ``beta_i`` (position 0 unused, set to 1 and 0).
    """

    def __init__(self, sde, num_steps: int = 1000) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r} must be a positive integer")
        self.sde = sde
        self.num_steps = num_steps
        self.t = torch.linspace(0.0, sde.T, num_steps + 1, dtype=torch.float64)
        log_alpha = sde._log_alpha(self.t)
        self.alpha_bars = torch.exp(2.0 * log_alpha)
        step = torch.zeros_like(log_alpha)
        step[1:] = 2.0 * (log_alpha[1:] - log_alpha[:-1])  # log alpha_i
        self.alphas = torch.exp(step)
        self.betas = -torch.expm1(step)  # 1 - alpha_i without cancellation

    def _index(self, i: int | Tensor) -> Tensor:
        i = torch.as_tensor(i, dtype=torch.long)
        if bool(((i < 1) | (i > self.num_steps)).any()):
            bad = i[(i < 1) | (i > self.num_steps)].flatten()[0].item()
            raise ValueError(f"step index i={bad} is outside 1..{self.num_steps}")
        return i

    def posterior(self, x_t: Tensor, x_0: Tensor, i: int | Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_{i-1} | x_i = x_t, x_0)``:

        ``mu = sqrt(alpha_i)(1 - abar_{i-1})/(1 - abar_i) x_t + sqrt(abar_{i-1}) beta_i/(1 - abar_i) x_0``,
        ``var = beta_i (1 - abar_{i-1}) / (1 - abar_i)``. ``i`` is an int or a ``(B,)`` tensor;
        the variance has shape ``()`` or ``(B,)``.
        """
        if x_t.shape != x_0.shape:
            raise ValueError(f"x_t shape {tuple(x_t.shape)} != x_0 shape {tuple(x_0.shape)}")
        i = self._index(i)
        abar, abar_prev = self.alpha_bars[i], self.alpha_bars[i - 1]
        beta, alpha = self.betas[i], self.alphas[i]
        c_t = torch.sqrt(alpha) * (1 - abar_prev) / (1 - abar)
        c_0 = torch.sqrt(abar_prev) * beta / (1 - abar)
        var = beta * (1 - abar_prev) / (1 - abar)
        dev = x_t.device
        mean = broadcast_to(c_t.to(dev), x_t) * x_t + broadcast_to(c_0.to(dev), x_0) * x_0
        return mean, var.to(device=dev, dtype=x_t.dtype)
