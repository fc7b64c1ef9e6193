"""Adaptive reverse-SDE integration with error control (Jolicoeur-Martineau et al. 2021).

"Gotta go fast when generating data with score-based models" (arXiv:2105.14080), Algorithm 1:
an embedded pair sharing one Brownian path, a mixed absolute/relative tolerance, accept/reject.
By default the pair is an exponential Euler / Heun pair in log-SNR (the paper's Euler-Maruyama /
improved-Euler pair is ``method="em"``) with one step size for the batch (the paper's per-sample
steps are ``control="sample"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .parametrization import tweedie_denoise
from .registry import register
from .resolve import check_choice_option, check_positive_option
from .sampling import SolverContext

MAX_ITERATIONS = 100_000


def _j1(a: Tensor) -> Tensor:
    """``int_0^1 e^{-a (1 - v)} v dv = (a - 1 + e^{-a}) / a^2``, by its series for small ``a``."""
    ac = a.clamp_min(1e-3)
    return torch.where(a < 1e-3, 0.5 - a / 6 + a * a / 24, (ac + torch.expm1(-ac)) / (ac * ac))


def _c1(h: Tensor) -> Tensor:
    """``int_0^h e^{-u} (u / h) du = (1 - e^{-h} (1 + h)) / h``, by its series for small ``h``."""
    hc = h.clamp_min(1e-4)
    return torch.where(h < 1e-4, h / 2 - h * h / 3, (-torch.expm1(-hc) - hc * torch.exp(-hc)) / hc)


def _exp_pair(
    ctx: SolverContext,
    x: Tensor,
    score_t: Tensor,
    t: Tensor,
    s: Tensor,
    lam_t: Tensor,
    h: Tensor,
    low: Tensor,
    active: Tensor,
    path: BrownianStack,
    dev: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """One attempt of the exponential pair (see :func:`sde_adaptive`): ``(x', x'')``, the
    data-prediction form in rows ``low``, the noise-prediction form in the others."""
    f64 = torch.float64
    a_t, sig_t = (v.to(f64) for v in ctx.sde.marginal(t))
    a_s, sig_s = (v.to(f64) for v in ctx.sde.marginal(s))
    lowd = dev(low) > 0
    # Brownian clocks: e^{2 lambda} (data form, noise alpha_s e^{-2 lambda_s} dM) and
    # -e^{-2 lambda} (noise form, noise alpha_s dM)
    length = torch.where(
        low, torch.exp(2 * lam_t) * torch.expm1(2 * h), torch.exp(-2 * lam_t) * -torch.expm1(-2 * h)
    )
    dm = path.increment(torch.where(active, length, 0.0), active, ctx.noise_like(x))
    noise = dev(torch.where(low, a_s * torch.exp(-2 * (lam_t + h)), a_s)) * dm
    # data form: x' = (sig_s / sig_t) e^{-h} x + alpha_s (1 - e^{-2h}) D_t + noise
    d_t = tweedie_denoise(x, score_t, dev(a_t), dev(sig_t))
    x1_d = dev(sig_s / sig_t * torch.exp(-h)) * x + dev(-a_s * torch.expm1(-2 * h)) * d_t
    # noise form: x' = (alpha_s / alpha_t) x - 2 alpha_s (sig_t / alpha_t) (1 - e^{-h}) eps_t + noise
    eps_t = -dev(sig_t) * score_t
    k = 2 * a_s * sig_t / a_t
    x1_e = dev(a_s / a_t) * x - dev(-k * torch.expm1(-h)) * eps_t
    x1 = torch.where(lowd, x1_d, x1_e) + noise
    score_s = ctx.score(x1, s.to(x.device))
    d_s = tweedie_denoise(x1, score_s, dev(a_s), dev(sig_s))
    x2_d = x1 + dev(a_s * 2 * h * _j1(2 * h)) * (d_s - d_t)
    x2_e = x1 - dev(k * _c1(h)) * (-dev(sig_s) * score_s - eps_t)
    return x1, torch.where(lowd, x2_d, x2_e)


class BrownianStack:
    """Per sample, the Brownian path already drawn ahead of ``t``: consecutive segments of
    lengths ``lens[i, :n[i]]`` with increments ``incs[i, :n[i]]`` (rejection sampling with
    memory, Rackauckas & Nie 2017).

    :meth:`increment` returns ``W_h``, the increment over the next ``h``, consistent with the
    stored path: the segment holding ``h`` (start ``c``, length ``L``, increment ``W``, ``u = h -
    c``) is split by the Brownian bridge ``W_u = (u / L) W + sqrt(u (L - u) / L) z'`` into ``W_u``
    and ``W - W_u``; past the stored path a fresh ``sqrt(h - total) z'`` extends it. A rejected
    step keeps the refined path, so the retry reuses exactly the noise it was rejected on;
    :meth:`accept` drops the segments the accepted step consumed.
    """

    def __init__(self, x: Tensor) -> None:
        b = x.shape[0]
        self.view = (b, 1) + (1,) * (x.dim() - 1)
        self.lens = torch.zeros(b, 1, dtype=torch.float64)
        self.incs = torch.zeros((b, 1) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        self.n = torch.zeros(b, dtype=torch.long)
        self.used = torch.zeros(b, dtype=torch.long)

    def _gather(self, src: Tensor, keep: Tensor) -> None:
        """Columns ``src`` (b, K), zeroed where ``~keep``."""
        k = src.clamp(0, self.lens.shape[1] - 1)
        self.lens = torch.where(keep, self.lens.gather(1, k), 0.0)
        incs = self.incs.gather(1, self._idx(k))
        self.incs = torch.where(keep.to(incs.device).view(keep.shape + self.view[2:]), incs, 0.0)

    def increment(self, h: Tensor, active: Tensor, z: Tensor) -> Tensor:
        """``W_h`` per sample (``h`` float64 (b,)); refines the stored path of ``active`` rows."""
        b = h.shape[0]
        self._gather_pad()
        K = self.lens.shape[1]
        cols = torch.arange(K).expand(b, K)
        valid = cols < self.n[:, None]
        lens = torch.where(valid, self.lens, 0.0)
        end = lens.cumsum(1)
        total = end[:, -1]
        j = ((end < h[:, None]) & valid).sum(1)  # the segment holding h (n: past the path)
        inside = j < self.n
        jc = j.clamp(max=K - 1)[:, None]
        L = lens.gather(1, jc)[:, 0]
        start = end.gather(1, jc)[:, 0] - L
        u = torch.where(inside, (h - start).clamp(min=0.0), h - total)
        u = torch.minimum(u, L).where(inside, u)
        W = self.incs.gather(1, self._idx(jc))[:, 0]
        frac = torch.where(inside, u / L.clamp_min(1e-300), 0.0)
        std = torch.where(inside, (u * (L - u) / L.clamp_min(1e-300)).clamp_min(0.0), u).sqrt()
        fv = self.view[:1] + self.view[2:]
        part = (
            frac.to(z.dtype).to(z.device).view(fv) * W + std.to(z.dtype).to(z.device).view(fv) * z
        )
        rest = torch.where(inside.to(z.device).view(fv), W - part, torch.zeros_like(W))
        # new columns: 0..j-1 old, j part, j+1 rest, j+2.. old j+1..
        cols1 = torch.arange(K + 1).expand(b, K + 1)
        src = torch.where(cols1 <= j[:, None], cols1, cols1 - 1)
        keep = cols1 < (self.n + 1)[:, None]
        old_lens, old_incs, old_n = self.lens, self.incs, self.n
        self.lens = torch.cat([self.lens, torch.zeros(b, 1, dtype=torch.float64)], 1)
        self.incs = torch.cat([self.incs, torch.zeros_like(self.incs[:, :1])], 1)
        self._gather(src, keep)
        at_j, at_j1 = cols1 == j[:, None], cols1 == (j + 1)[:, None]
        self.lens = torch.where(at_j, u[:, None], self.lens)
        self.lens = torch.where(at_j1, torch.where(inside, L - u, 0.0)[:, None], self.lens)
        dev = z.device
        self.incs = torch.where(
            at_j.to(dev).view(at_j.shape + self.view[2:]), part[:, None], self.incs
        )
        self.incs = torch.where(
            at_j1.to(dev).view(at_j.shape + self.view[2:]), rest[:, None], self.incs
        )
        self.n = self.n + 1
        # rows not stepping keep their path
        a2 = active[:, None]
        self.lens = torch.where(
            a2, self.lens, torch.cat([old_lens, torch.zeros(b, 1, dtype=torch.float64)], 1)
        )
        self.incs = torch.where(
            a2.to(dev).view(a2.shape + self.view[2:]),
            self.incs,
            torch.cat([old_incs, torch.zeros_like(old_incs[:, :1])], 1),
        )
        self.n = torch.where(active, self.n, old_n)
        self.used = torch.where(active, j + 1, 0)
        mask = (cols1 <= j[:, None]).to(dev).view(at_j.shape + self.view[2:])
        return (self.incs * mask).sum(1)

    def accept(self, ok: Tensor) -> None:
        """Drop the segments the accepted step of rows ``ok`` consumed."""
        d = torch.where(ok, self.used, 0)
        K = self.lens.shape[1]
        cols = torch.arange(K).expand(ok.shape[0], K)
        self.n = self.n - d
        self._gather(cols + d[:, None], cols < self.n[:, None])
        self._gather_pad()

    def _idx(self, k: Tensor) -> Tensor:
        idx = k.to(self.incs.device).view(k.shape + (1,) * (self.incs.dim() - 2))
        return idx.expand((-1, -1) + tuple(self.incs.shape[2:]))

    def _gather_pad(self) -> None:
        """Trim columns no row uses (keep at least one)."""
        K = max(int(self.n.max()), 1)
        self.lens, self.incs = self.lens[:, :K], self.incs[:, :K]


CONTROLS = ("batch", "sample")
METHODS = ("exp", "em")
# step-size factor bounds of the standard controller (Hairer, Norsett & Wanner, Solving ODEs I,
# II.4): never grow by more than 5x or shrink by more than 5x in one attempt. The growth bound
# matters when the estimate is tiny: an unbounded factor lets the next trial step jump across
# the region it has not looked at yet.
FAC_MIN, FAC_MAX = 0.2, 5.0


@register(
    "sde_adaptive",
    kind="sde",
    order=2.0,
    evals_per_step=None,
    adaptive=True,
    options={
        "rtol": 0.05,
        "atol": 0.0078,
        "safety": 0.9,
        "exponent": 2 / 3,
        "control": "batch",
        "method": "exp",
    },
    reference="Jolicoeur-Martineau et al. 2021 (Gotta go fast), Alg. 1; exp pair: Lu et al. 2022",
)
def sde_adaptive(
    ctx: SolverContext,
    x: Tensor,
    rtol: float = 0.05,
    atol: float = 0.0078,
    safety: float = 0.9,
    exponent: float = 2 / 3,
    control: str = "batch",
    method: str = "exp",
) -> Tensor:
    """Adaptive reverse SDE: a weak-order-1 / weak-order-2 pair sharing one Brownian path.

    ``method="exp"`` (default), exponential Euler ``x'`` / exponential Heun ``x''`` in log-SNR
    ``lambda = log(alpha / sigma)``, step ``h = lambda_s - lambda_t > 0``, the linear part exact
    and the noise of exact variance (``solvers/exponential_sde.py``, ``eta = 1``). Below SNR 1
    (``lambda < 0``), in the data prediction ``D = (x + sigma^2 score) / alpha``:

        x'  = (sigma_s / sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) D(x, t) + N,
        x'' = x' + alpha_s 2h J(2h) (D(x', s) - D(x, t)),   J(a) = (a - 1 + e^{-a}) / a^2,
        N   = alpha_s e^{-2 lambda_s} (M(e^{2 lambda_s}) - M(e^{2 lambda_t}));

    above it, in the noise prediction ``eps = -sigma score``:

        x'  = (alpha_s / alpha_t) x - 2 alpha_s (sigma_t / alpha_t) (1 - e^{-h}) eps(x, t) + N,
        x'' = x' - 2 alpha_s (sigma_t / alpha_t) c(h) (eps(x', s) - eps(x, t)),
        c(h) = (1 - e^{-h} (1 + h)) / h,   N = alpha_s (M(-e^{-2 lambda_s}) - M(-e^{-2 lambda_t})),

    with ``M`` a standard Brownian motion in the clock shown (``N`` is the exact noise of the
    step, variance ``sigma_s^2 (1 - e^{-2h})``), ``x''`` integrating the linear interpolant of
    ``D`` (resp. ``eps``) in ``lambda`` exactly. Each form is exact where its prediction is
    constant: ``D`` at low SNR (where it is the data mean), ``eps`` at high SNR (where ``D ~
    x / alpha``, whose noise the data form would push through the estimate); steps stop at
    SNR 1 and never cross it. ``method="em"``, the paper's pair in ``t`` with ``b(x, t) = f(t) x
    - g(t)^2 score(x, t)`` and ``W`` the Brownian increment over the step ``h = t - s``:

        x'  = x - h b(x, t) + g(t) W                       (Euler-Maruyama)
        x'' = (x' + x - h b(x', s) + g(s) W) / 2           (improved Euler)

    Error ``E_i = ||(x'_i - x''_i) / delta_i||_2 / sqrt(n)`` per sample (``n`` elements),
    ``delta = max(atol, rtol max(|x'|, |x'_prev|))`` elementwise (``x'_prev`` the last accepted
    ``x'``). ``control="batch"`` (default): one step for the whole batch, ``E = sqrt(mean_i
    E_i^2)``, the root-mean-square local error relative to the tolerance over every element;
    ``control="sample"``: each sample its own step from its own ``E_i`` (the paper's Algorithm
    1). A step with ``E <= 1`` is accepted (``x <- x''``, local extrapolation); in either case
    ``h <- h clamp(safety E^(-exponent), 0.2, 5)``, cut to end at ``t_end`` (and, exp, at SNR
    1). ``exponent`` 2/3: ``x' - x''`` is the local error of a strong-order-1 step with additive
    noise, ``O(h^1.5)`` (measured slopes 1.35-1.77 for both pairs on three mixtures,
    BENCHMARKS.md). The accepted ``x''`` has local weak error ``O(h^3)`` (weak order 2; tested
    for the exp pair on Gaussian data).

    A rejected increment is never redrawn: the retry takes its part of the path by the Brownian
    bridge and keeps the rest for the steps after (:class:`BrownianStack`), so rejection neither
    selects easy noise nor makes the accepted law depend on it. The score at the current state
    is kept across a rejection: an accepted attempt costs two evaluations, a rejected one one.
    First trial step: exp, the whole way to SNR 1 (or ``t_end``) -- a rejection costs one
    evaluation and the controller shrinks it; em, ``T - t_1`` of the grid (``steps`` is a hint;
    exp ignores it). The whole batch is evaluated at every attempt (that is what NFE counts),
    hence the batch control: per sample, the slowest sample's attempts set the NFE, and the
    estimate of a single low-dimensional sample is dominated by its own noise (many random
    rejections). ``stats.accepted`` / ``stats.rejected`` are per-sample means; ``stats.steps``
    counts accepted batch steps (batch) or batch attempts (sample).
    """
    for name, v in (("rtol", rtol), ("atol", atol), ("safety", safety), ("exponent", exponent)):
        check_positive_option(name, v)
    check_choice_option("control", control, CONTROLS)
    check_choice_option("method", method, METHODS)
    batch = control == "batch"
    in_log_snr = method == "exp"
    sde = ctx.sde
    times = ctx.times
    t_end = times[-1]
    b = x.shape[0]
    view = (b,) + (1,) * (x.dim() - 1)
    f64 = torch.float64

    def lam(tt: Tensor | float) -> Tensor:
        return sde.log_snr(torch.as_tensor(tt, dtype=f64)).to(f64)

    # the position p the step h advances: log-SNR (exp) or -t (em), from p0 to p_end; exp
    # steps stop at the switch p = 0 (SNR 1) between its two forms and never cross it
    p0, p_end = (float(lam(times[0])), float(lam(t_end))) if in_log_snr else (-times[0], -t_end)
    switch = 0.0 if in_log_snr and p0 < 0.0 < p_end else math.inf
    # first trial step: exp, the whole first segment (a rejection costs one evaluation);
    # em, the grid's first interval (``steps`` is a hint)
    first = min(switch, p_end) - p0 if in_log_snr else times[0] - times[1]
    p = torch.full((b,), p0, dtype=f64)
    t = torch.full((b,), times[0], dtype=f64)
    h = torch.full((b,), first, dtype=f64)
    accepted = torch.zeros(b, dtype=f64)
    rejected = torch.zeros(b, dtype=f64)
    x_prev = x.abs()
    path = BrownianStack(x)
    n = x[0].numel()
    score_t: Tensor | None = None  # score(x, t) at the current state
    stale = torch.ones(b, dtype=torch.bool)  # rows whose state moved since score_t

    def dev(v: Tensor) -> Tensor:
        return v.to(x.dtype).to(x.device).view(view)

    for _ in range(MAX_ITERATIONS):
        active = p < p_end
        if not bool(active.any()):
            break
        low = p < switch  # exp: data-prediction form below SNR 1
        h = torch.where(low, torch.minimum(h, switch - p), h)
        h = torch.where(active, torch.minimum(h, p_end - p), torch.zeros_like(h))
        p_s = torch.where(h >= p_end - p, torch.full_like(p, p_end), p + h)
        p_s = torch.where(low & (h >= switch - p), torch.full_like(p, switch), p_s)
        end = p_s >= p_end
        if in_log_snr:
            s = torch.where(end, torch.full_like(t, t_end), sde.t_from_log_snr(p_s).to(f64))
        else:
            s = torch.where(end, torch.full_like(t, t_end), -p_s)
        s = torch.where(active, s, t)
        if bool((stale & active).any()):
            fresh = ctx.score(x, t.to(x.device))
            score_t = fresh if score_t is None else torch.where(dev(stale) > 0, fresh, score_t)
            stale = torch.zeros_like(stale)
        assert score_t is not None
        if in_log_snr:
            x1, x2 = _exp_pair(ctx, x, score_t, t, s, p, h, low, active, path, dev)
        else:
            dw = path.increment(h, active, ctx.noise_like(x))
            hx = dev(h)
            g2_t, g2_s = (sde.diffusion(v).to(f64) ** 2 for v in (t, s))
            x1 = x - hx * (dev(sde.drift_coef(t).to(f64)) * x - dev(g2_t) * score_t)
            x1 = x1 + dev(g2_t.sqrt()) * dw
            score_s = ctx.score(x1, s.to(x.device))
            drift_s = dev(sde.drift_coef(s).to(f64)) * x1 - dev(g2_s) * score_s
            x2 = 0.5 * (x1 + x - hx * drift_s + dev(g2_s.sqrt()) * dw)
        delta = torch.clamp(rtol * torch.maximum(x1.abs(), x_prev), min=atol)
        err2 = ((x1 - x2) / delta).reshape(b, -1).pow(2).sum(1).div(n).to("cpu", f64)
        if batch:
            err = torch.full_like(err2, float(err2[active].mean().sqrt()))
        else:
            err = err2.sqrt()
        ok = active & (err <= 1.0)
        okd = dev(ok)
        x = torch.where(okd > 0, x2, x)
        x_prev = torch.where(okd > 0, x1.abs(), x_prev)
        t = torch.where(ok, s, t)
        p = torch.where(ok, p_s, p)
        stale = stale | ok
        accepted += ok
        rejected += active & ~ok
        h = h * (safety * err.clamp_min(1e-12).pow(-exponent)).clamp(FAC_MIN, FAC_MAX)
        path.accept(ok)
        if not batch or bool(ok.any()):
            ctx.done(x, float(t.max()))
    else:
        raise RuntimeError(
            f"sde_adaptive did not reach t_end={t_end} in {MAX_ITERATIONS} attempts "
            f"(rtol={rtol}, atol={atol}); loosen the tolerances"
        )
    ctx.accepted = float(accepted.mean())
    ctx.rejected = float(rejected.mean())
    return x
