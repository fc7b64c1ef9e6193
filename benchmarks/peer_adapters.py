"""Drive our samplers and the peers' (k-diffusion, diffusers) with one exact score.

Every sampler here is a :class:`Method`: ``method.run(problem, x_T, size, noise) -> x_0`` with

* ``problem``: the VP SDE, the score ``score_fn(x, t)`` (``t`` a per-sample ``(B,)`` vector) and
  the truncation time ``t_end``;
* ``x_T``: the starting state *in our VP coordinates*, shared by every library (each adapter maps
  it into its own coordinates exactly);
* ``size``: the library's own size knob (``steps`` for us, the number of noise levels ``n`` for
  k-diffusion, ``num_inference_steps`` for diffusers); :func:`size_for_budget` picks the largest
  one whose *counted* score evaluations fit an NFE budget;
* ``noise``: the source of every Gaussian draw the sampler makes (a seeded generator, or
  :class:`BasisNoise` for exact moment propagation).

The exact conversions (VP: ``x_t = alpha_t x_0 + sigma_t eps``, ``alpha_t^2 + sigma_t^2 = 1``):

* k-diffusion (EDM / VE form): ``s = sigma_t / alpha_t = exp(-lambda_t)``, ``x_ve = x / alpha_t``,
  ``t = t_from_log_snr(-log s)``, denoiser ``D(x_ve, s) = (x + sigma_t^2 score(x, t)) / alpha_t``
  (Tweedie) evaluated at ``x = alpha_t x_ve``; with ``alpha_t = (1 + s^2)^(-1/2)``.
* diffusers (discrete DDPM time ``k = 0..N-1``): ``trained_betas`` from
  :meth:`VPSDE.ddpm` (``alpha-bar_k = alpha(t_{k+1})^2`` exactly, ``t_{k+1} = (k+1) T / N``); the
  model is called with a timestep ``k`` (fractional for the Euler schedulers) whose noise level
  is read from the scheduler's own table ``s_k = sqrt((1 - alpha-bar_k) / alpha-bar_k)``
  (linearly interpolated in ``k`` as the schedulers do), mapped to ``t = t_from_log_snr(-log s_k)``,
  and answers ``eps = -sigma_t score(x, t)``.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

import solvers
from scoresde import VPSDE
from solvers.protocol import ScoreFn

NoiseFn = Callable[[Tensor], Tensor]

BENCH_INSTALL = (
    ".venv/bin/pip install -r requirements-bench.txt && "
    '.venv/bin/pip install --no-deps "k-diffusion==0.1.1.post1"'
)


# -- counting and noise -----------------------------------------------------------------------
class CountingScore:
    """Wraps ``score_fn(x, t)`` and counts its calls (one call on the whole batch = one NFE)."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score_fn(x, t)


class GaussianNoise:
    """Standard normal draws shaped like ``like`` from a seeded CPU generator."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.draws = 0

    def __call__(self, like: Tensor) -> Tensor:
        self.draws += 1
        z = torch.randn(like.shape, generator=self.generator, dtype=like.dtype)
        return z.to(like.device)


class BasisNoise:
    """Exact output moments of a sampler that is affine in ``x_T`` and in its noise draws.

    With an affine score (a Gaussian target) such a sampler returns
    ``x_0 = b + A x_T + sum_j B_j z_j`` with ``x_T ~ N(0, I)`` and independent ``z_j ~ N(0, I)``,
    so ``x_0 ~ N(b, A A^T + sum_j B_j B_j^T)`` exactly. One batched run recovers ``b``, ``A`` and
    every ``B_j``: row 0 starts at ``x_T = 0`` with no noise, rows ``1..d`` at ``x_T = e_k``,
    and row ``1 + d + j d + k`` starts at 0 and receives ``z_j = e_k`` at the ``j``-th draw
    (every other row gets 0 there). A final probe row (random ``x_T`` and random first draw)
    checks the affine assumption: a sampler that couples rows or is not affine fails it.
    """

    def __init__(self, dim: int, max_draws: int, prior_std: float, seed: int = 0) -> None:
        self.dim, self.max_draws, self.prior_std = dim, max_draws, prior_std
        self.rows = 1 + dim + max_draws * dim + 1
        g = torch.Generator().manual_seed(seed)
        self.probe_x = torch.randn(dim, generator=g, dtype=torch.float64)
        self.probe_z = torch.randn(dim, generator=g, dtype=torch.float64)
        self.draws = 0

    def x_T(self) -> Tensor:
        x = torch.zeros(self.rows, self.dim, dtype=torch.float64)
        x[1 : 1 + self.dim] = self.prior_std * torch.eye(self.dim, dtype=torch.float64)
        x[-1] = self.probe_x
        return x

    def __call__(self, like: Tensor) -> Tensor:
        if tuple(like.shape) != (self.rows, self.dim):
            raise ValueError(
                f"noise drawn with shape {tuple(like.shape)}; expected {(self.rows, self.dim)}"
            )
        j = self.draws
        self.draws += 1
        if j >= self.max_draws:
            raise RuntimeError(
                f"sampler drew noise {j + 1} times; BasisNoise was built for {self.max_draws}"
            )
        z = torch.zeros(self.rows, self.dim, dtype=like.dtype, device=like.device)
        start = 1 + self.dim + j * self.dim
        z[start : start + self.dim] = torch.eye(self.dim, dtype=like.dtype, device=like.device)
        if j == 0:
            z[-1] = self.probe_z.to(like)
        return z

    def moments(self, out: Tensor) -> tuple[Tensor, Tensor, float]:
        """``(mean, cov, affinity_residual)`` of the sampler's output distribution.

        ``affinity_residual`` is ``|x_probe - (b + A x_probe_T + B_0 z_probe)|_inf`` relative to
        the output scale: round-off level for an affine sampler.
        """
        out = out.to(torch.float64).reshape(self.rows, self.dim)
        b = out[0]
        R = out[1:-1] - b  # rows: A e_k (scaled by prior_std), then B_j e_k
        cov = R.T @ R
        d = self.dim
        A = (out[1 : 1 + d] - b).T / self.prior_std
        B0 = (out[1 + d : 1 + 2 * d] - b).T
        pred = b + A @ self.probe_x + B0 @ self.probe_z
        resid = float((out[-1] - pred).abs().max() / (1.0 + out.abs().max()))
        return b, cov, resid


# -- the problem --------------------------------------------------------------------------------
@dataclass
class Problem:
    """An SDE, the exact score of a target under it, and the truncation time."""

    sde: VPSDE
    score_fn: ScoreFn
    t_end: float = 1e-3

    @property
    def T(self) -> float:
        return float(self.sde.T)

    def edm_sigma(self, t: float) -> float:
        """``s(t) = sigma_t / alpha_t = exp(-lambda(t))``."""
        return math.exp(-float(self.sde.log_snr(float(t))))

    def t_of_sigma(self, s: float) -> float:
        """Inverse of :meth:`edm_sigma`: ``t = t_from_log_snr(-log s)``.

        Clamped to ``T``: the peers build their noise levels in float32, so ``s(T)`` comes back
        rounded and may map to ``T (1 + 1e-8)``.
        """
        return min(float(self.sde.t_from_log_snr(-math.log(s))), self.T)


def _coefficients(problem: Problem, t: float) -> tuple[float, float]:
    alpha, sigma = problem.sde.marginal(t)
    return float(alpha), float(sigma)


# -- Method ------------------------------------------------------------------------------------
RunFn = Callable[[Problem, Tensor, int, "NoiseFn | None"], Tensor]
"""``run(problem, x_T, size, noise)``; ``noise=None`` lets the library draw its noise its own way
(its default generator or Brownian tree), as a user would: that is how it is timed."""


@dataclass
class Method:
    """One sampler of one library on one time grid."""

    library: str
    name: str
    grid: str
    stochastic: bool
    run: RunFn
    size_name: str = "steps"
    affine: bool = True  # affine in (x_T, noise) for an affine score, rows independent

    @property
    def label(self) -> str:
        return f"{self.library}:{self.name}"


# -- ours ----------------------------------------------------------------------------------------
def _sample_ours(
    problem: Problem, x_T: Tensor, name: str, noise: NoiseFn | None, **kwargs: Any
) -> Tensor:
    """``solvers.sample`` from ``x_T`` with the run's noise and its generator (a seeded one when
    the library draws its own noise)."""
    gen = (
        getattr(noise, "generator", None) if noise is not None else torch.Generator().manual_seed(0)
    )
    x, _ = solvers.sample(
        problem.sde, problem.score_fn, x_T=x_T, solver=name, noise_fn=noise, generator=gen, **kwargs
    )
    return x


def ours(name: str, grid: str | None = None) -> Method:
    """``scoresde.sample(solver=name)`` with our final Tweedie step (counted as one NFE)."""
    spec = solvers.get(name)
    grid_name = grid or spec.default_grid

    def run(problem: Problem, x_T: Tensor, size: int, noise: NoiseFn | None) -> Tensor:
        return _sample_ours(
            problem, x_T, name, noise, steps=size, grid=grid_name, t_end=problem.t_end
        )

    return Method("scoresde", name, grid_name, spec.kind == "sde", run, "steps", affine=spec.affine)


def ours_tuned(name: str, probe: int = 2048, seed: int = 1234, **options: Any) -> Method:
    """``scoresde.tune_grid`` then ``sample(solver=name, grid=tuned)``: the grid (and ``t_end``)
    tuned on the score alone with a probe batch drawn from its own seed (never the benchmark's
    ``x_T``), once per problem and budget. Size is the step count; NFE is ``steps + 1``."""
    from scoresde import tune_grid

    spec = solvers.get(name)
    tuned: list[tuple[ScoreFn, int, Tensor]] = []  # holds the score, so its id is never reused

    def grid_for(problem: Problem, nfe: int, x_T: Tensor) -> Tensor:
        for score, n, grid in tuned:
            if score is problem.score_fn and n == nfe:
                return grid
        grid = tune_grid(
            problem.sde,
            problem.score_fn,
            name,
            nfe,
            (probe, *x_T.shape[1:]),
            generator=torch.Generator().manual_seed(seed),
            dtype=x_T.dtype,
            **options,
        )
        tuned.append((problem.score_fn, nfe, grid))
        return grid

    def run(problem: Problem, x_T: Tensor, size: int, noise: NoiseFn | None) -> Tensor:
        grid = grid_for(problem, size * spec.evals_per_step + 1, x_T)
        return _sample_ours(problem, x_T, name, noise, grid=grid, **options)

    method = Method("scoresde", name, "tuned", spec.kind == "sde", run, "steps", spec.affine)
    for size in range(1, 401):  # known without tuning on the NFE-counting problem
        _NFE_CACHE[(method.label, method.grid, size)] = size * spec.evals_per_step + 1
    return method


# -- k-diffusion -------------------------------------------------------------------------------
_KDIFF: types.ModuleType | None = None


def load_k_diffusion_sampling() -> types.ModuleType:
    """Load ``k_diffusion/sampling.py`` alone.

    The package ``__init__`` imports torchvision, wandb, kornia, ... which the benchmark neither
    needs nor installs. ``sampling.py`` itself needs torch, scipy, torchsde, torchdiffeq, tqdm and
    one helper of ``k_diffusion.utils`` (``append_dims``), provided here by a stub module under a
    private package name so that nothing else sees a half-loaded ``k_diffusion``.
    """
    global _KDIFF
    if _KDIFF is not None:
        return _KDIFF
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"k-diffusion is not installed; install the peers with: {BENCH_INSTALL}")
    root = list(spec.submodule_search_locations)[0]
    pkg_name = "_scoresde_bench_k_diffusion"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = [root]
    utils = types.ModuleType(pkg_name + ".utils")

    def append_dims(x: Tensor, target_dims: int) -> Tensor:
        """View ``x`` with trailing singleton dimensions up to ``target_dims``."""
        extra = target_dims - x.ndim
        if extra < 0:
            raise ValueError(f"input has {x.ndim} dims, more than target_dims={target_dims}")
        return x.reshape(*x.shape, *([1] * extra))

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules[pkg_name] = pkg
    sys.modules[pkg_name + ".utils"] = utils
    mod_spec = importlib.util.spec_from_file_location(pkg_name + ".sampling", f"{root}/sampling.py")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[pkg_name + ".sampling"] = module
    mod_spec.loader.exec_module(module)
    _KDIFF = module
    return module


def k_diffusion_version() -> str:
    from importlib.metadata import version

    return version("k-diffusion")


class KDenoiser:
    """``D(x_ve, s)``: the exact VP score seen through k-diffusion's VE/EDM interface."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def __call__(self, x_ve: Tensor, sigma: Tensor) -> Tensor:
        s = float(sigma.reshape(-1)[0])  # k-diffusion passes one noise level for the whole batch
        t = self.problem.t_of_sigma(s)
        alpha, sig = _coefficients(self.problem, t)
        x = alpha * x_ve
        tvec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return (x + sig * sig * self.problem.score_fn(x, tvec)) / alpha


def kdiff_sigmas(problem: Problem, n: int, grid: str) -> Tensor:
    """The library's own noise levels between ``s(t_end)`` and ``s(T)``, plus the final 0."""
    K = load_k_diffusion_sampling()
    s_min, s_max = problem.edm_sigma(problem.t_end), problem.edm_sigma(problem.T)
    if grid == "karras":
        sig = K.get_sigmas_karras(n, s_min, s_max, rho=7.0)
    elif grid == "exponential":
        sig = K.get_sigmas_exponential(n, s_min, s_max)
    else:
        raise ValueError(f"unknown k-diffusion grid {grid!r}; expected 'karras' or 'exponential'")
    return sig.to(torch.float64)


def kdiff(name: str, grid: str = "karras", sigmas_fn: Callable | None = None) -> Method:
    """k-diffusion's ``sample_<name>`` on ``get_sigmas_<grid>(n, s(t_end), s(T))``.

    ``n`` noise levels (the last one ``s(t_end)``) then 0; one model call per level for the
    first-order and multistep samplers, two per level except the last for Heun and DPM-2.
    ``sigmas_fn(problem, n)`` overrides the grid (cross-checks on our own grid).
    """
    K = load_k_diffusion_sampling()
    fn = getattr(K, f"sample_{name}")
    takes_noise = "noise_sampler" in inspect.signature(fn).parameters
    stochastic = takes_noise

    def run(problem: Problem, x_T: Tensor, size: int, noise: NoiseFn | None) -> Tensor:
        sigmas = sigmas_fn(problem, size) if sigmas_fn else kdiff_sigmas(problem, size, grid)
        s_max = float(sigmas[0])
        alpha_T = 1.0 / math.sqrt(1.0 + s_max * s_max)
        x = x_T / alpha_T
        kwargs: dict[str, Any] = {"disable": True}
        if takes_noise and noise is not None:
            kwargs["noise_sampler"] = lambda s, s_next: noise(x)
        return fn(KDenoiser(problem), x, sigmas.to(x.device, x.dtype), **kwargs)

    return Method(
        "k-diffusion", f"sample_{name}", grid if not sigmas_fn else "ours", stochastic, run, "n"
    )


def kdiff_adaptive_tolerance(size: int) -> float:
    """``rtol = atol`` of ``sample_dpm_adaptive`` at size knob ``size``: ``0.5 * 10^(-size / 8)``
    (NFE grows with ``size``, as :func:`size_for_budget` needs)."""
    return 0.5 * 10.0 ** (-size / 8.0)


def kdiff_adaptive(order: int = 3) -> Method:
    """k-diffusion's ``sample_dpm_adaptive`` (DPM-Solver-12/23 with error control, ``eta = 0``)
    from ``s(T)`` to ``s(t_end)``, then one denoising call ``D(x, s(t_end))`` (counted): the
    sampler stops at ``sigma_min > 0`` where the fixed-step samplers take their final step to 0.
    The size knob sets the tolerances (:func:`kdiff_adaptive_tolerance`); its step sizes depend on
    the state, so the output is not affine (Monte-Carlo moments)."""
    K = load_k_diffusion_sampling()

    def run(problem: Problem, x_T: Tensor, size: int, noise: NoiseFn | None) -> Tensor:
        s_min, s_max = problem.edm_sigma(problem.t_end), problem.edm_sigma(problem.T)
        x = x_T * math.sqrt(1.0 + s_max * s_max)
        denoiser = KDenoiser(problem)
        tol = kdiff_adaptive_tolerance(size)
        x = K.sample_dpm_adaptive(
            denoiser, x, s_min, s_max, order=order, rtol=tol, atol=tol, disable=True
        )
        return denoiser(x, x.new_full((x.shape[0],), s_min))

    return Method(
        "k-diffusion",
        f"sample_dpm_adaptive(order={order})",
        "adaptive",
        False,
        run,
        "tol",
        affine=False,
    )


# -- diffusers ---------------------------------------------------------------------------------
def diffusers_version() -> str:
    from importlib.metadata import version

    return version("diffusers")


DIFFUSERS_SCHEDULERS = {
    # name: (class name, module with randn_tensor, extra config, stochastic)
    "DDPM": ("DDPMScheduler", "scheduling_ddpm", {"clip_sample": False}, True),
    "DDIM": ("DDIMScheduler", "scheduling_ddim", {"clip_sample": False}, False),
    "EulerAncestral": (
        "EulerAncestralDiscreteScheduler",
        "scheduling_euler_ancestral_discrete",
        {},
        True,
    ),
    "DPMSolverMultistep": (
        "DPMSolverMultistepScheduler",
        "scheduling_dpmsolver_multistep",
        {},
        False,
    ),
    "UniPCMultistep": ("UniPCMultistepScheduler", "scheduling_unipc_multistep", {}, False),
    "DEISMultistep": ("DEISMultistepScheduler", "scheduling_deis_multistep", {}, False),
}
# The multistep schedulers build their coefficient tables in the default dtype (float32) and
# mix them with the sample's dtype (UniPC's ``linalg.solve`` fails on float64 samples): they run
# in float32, as a user runs them, with the exact float64 score cast at the model boundary.
DIFFUSERS_FLOAT32 = frozenset({"DPMSolverMultistep", "UniPCMultistep", "DEISMultistep"})
# Config keys that change the algorithm (shown in the sampler's name); spacing and Karras sigmas
# are the grid (shown in its grid column).
_GRID_KEYS = frozenset({"timestep_spacing", "use_karras_sigmas"})


class DiffusersEps:
    """``eps(x, k) = -sigma_t score(x, t)`` at the continuous time of the scheduler's timestep ``k``."""

    def __init__(self, problem: Problem, alphas_cumprod: Tensor) -> None:
        self.problem = problem
        acp = alphas_cumprod.to(torch.float64).numpy()
        self.sigma_table = np.sqrt((1.0 - acp) / acp)  # the schedulers' own VE noise levels
        self.index = np.arange(len(acp), dtype=np.float64)

    def time_of(self, k: float) -> float:
        s = float(np.interp(float(k), self.index, self.sigma_table))
        return self.problem.t_of_sigma(s)

    def __call__(self, x: Tensor, k: Tensor | float) -> Tensor:
        t = self.time_of(float(k))
        _, sig = _coefficients(self.problem, t)
        tvec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return -sig * self.problem.score_fn(x, tvec)


@contextmanager
def _patched_randn(module_name: str, noise: NoiseFn | None):
    """Route a diffusers scheduler's ``randn_tensor`` draws through ``noise`` (same shapes)."""
    if noise is None:
        yield
        return
    import diffusers.schedulers as ds

    module = importlib.import_module(f"{ds.__name__}.{module_name}")
    original = getattr(module, "randn_tensor", None)
    if original is None:  # a deterministic scheduler draws nothing
        yield
        return

    def draw(shape, generator=None, device=None, dtype=None, **_: Any) -> Tensor:
        like = torch.empty(shape, dtype=dtype or torch.float32, device=device)
        return noise(like)

    module.randn_tensor = draw
    try:
        yield
    finally:
        module.randn_tensor = original


def diffusers_trained_betas(sde: VPSDE, num_train_timesteps: int = 1000) -> list[float]:
    """``beta_k = 1 - alpha-bar_{k+1} / alpha-bar_k`` of :meth:`VPSDE.ddpm` (exact discrete VP)."""
    return sde.ddpm(num_train_timesteps).betas[1:].tolist()


def diffusers(name: str, timestep_spacing: str | None = None, **config: Any) -> Method:
    """A diffusers scheduler driven by the usual pipeline loop.

    ``scale_model_input`` -> eps model -> ``step``; ``num_inference_steps`` model calls, the last
    step landing on the clean sample (DDIM ``set_alpha_to_one``, DPM-Solver++
    ``final_sigmas_type="zero"``, DDPM's ``t = 0`` step, Euler's ``sigma = 0``). The sample is
    started from ``x_T`` mapped exactly into the scheduler's coordinates (VE for the Euler
    schedulers: ``x_T sqrt(1 + s_max^2)``).
    """
    import diffusers as dlib

    cls_name, module_name, defaults, stochastic = DIFFUSERS_SCHEDULERS[name]
    cls = getattr(dlib, cls_name)
    cfg = {**defaults, **config}
    if timestep_spacing is not None:
        cfg["timestep_spacing"] = timestep_spacing
    cache: dict[int, Any] = {}

    def scheduler_for(problem: Problem):
        key = id(problem.sde)
        if key not in cache:
            cache.clear()
            cache[key] = cls(
                num_train_timesteps=1000,
                trained_betas=diffusers_trained_betas(problem.sde, 1000),
                **cfg,
            )
        return cache[key]

    float32 = name in DIFFUSERS_FLOAT32

    def run(problem: Problem, x_T: Tensor, size: int, noise: NoiseFn | None) -> Tensor:
        sched = scheduler_for(problem)
        sched.set_timesteps(size)
        model = DiffusersEps(problem, sched.alphas_cumprod)
        sigmas = getattr(sched, "sigmas", None)
        if sigmas is not None and name == "EulerAncestral":
            x = x_T * math.sqrt(1.0 + float(sigmas.max()) ** 2)
        else:
            x = x_T * float(sched.init_noise_sigma)
        if float32:
            x = x.to(torch.float32)
        with torch.no_grad(), _patched_randn(module_name, noise):  # noise None: the library's own
            for k in sched.timesteps:
                inp = sched.scale_model_input(x, k)
                eps = model(inp.to(x_T.dtype), k).to(x.dtype)  # the score in the caller's dtype
                x = sched.step(eps, k, x).prev_sample
        return x.to(x_T.dtype)

    spacing = cfg.get("timestep_spacing")
    if spacing is None:
        spacing = inspect.signature(cls.__init__).parameters["timestep_spacing"].default
    grid = str(spacing) + ("+karras" if cfg.get("use_karras_sigmas") else "")
    algo = ", ".join(f"{k}={v}" for k, v in config.items() if k not in _GRID_KEYS)
    label = f"{name}({algo})" if algo else name
    return Method("diffusers", label, grid, stochastic, run, "num_inference_steps")


# -- NFE budgets -------------------------------------------------------------------------------
_TINY: Problem | None = None
_NFE_CACHE: dict[tuple[str, str, int], int] = {}


def _tiny_problem() -> Problem:
    global _TINY
    if _TINY is None:
        from scoresde import Gaussian

        sde = VPSDE()
        target = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
        _TINY = Problem(sde, target.score_fn(sde))
    return _TINY


def count_nfe(method: Method, size: int) -> int | None:
    """Score evaluations ``method`` makes at ``size`` (counted on a 2-sample problem).

    ``None`` when the method cannot run at that size (k-diffusion's ``sample_dpmpp_2m_sde``
    fails with a single noise level, for instance).
    """
    key = (method.label, method.grid, size)
    if key not in _NFE_CACHE:
        tiny = _tiny_problem()
        counter = CountingScore(tiny.score_fn)
        problem = Problem(tiny.sde, counter, tiny.t_end)
        x_T = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        try:
            method.run(problem, x_T, size, GaussianNoise(0))
            _NFE_CACHE[key] = counter.calls
        except Exception:  # noqa: BLE001  (a size the peer does not support)
            _NFE_CACHE[key] = None
    return _NFE_CACHE[key]


def size_for_budget(method: Method, budget: int) -> tuple[int, int]:
    """The largest size whose counted NFE is ``<= budget`` (NFE grows with size): ``(size, nfe)``.

    Raises ``ValueError`` when no size fits the budget.
    """
    lo = next((k for k in range(1, 4) if count_nfe(method, k) is not None), None)
    if lo is None or count_nfe(method, lo) > budget:
        raise ValueError(f"{method.label} cannot run within {budget} score evaluations")
    hi = budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        nfe = count_nfe(method, mid)
        if nfe is not None and nfe <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo, count_nfe(method, lo)
