"""Solver-accuracy harness: how far is a sampler's output from the exact target, per NFE?

Every sampler here is run with the *exact* score of an analytic target (a :class:`Gaussian` or a
:class:`GaussianMixture`, whose diffused score is known in closed form), so all of the error is
the sampler's own: time discretisation, the truncation at ``t_end`` and the prior mismatch at ``T``.

**NFE convention.** An NFE budget counts every score evaluation, the final Tweedie denoising step
included. A solver with ``e = evals_per_step`` gets ``steps = floor((NFE - 1) / e)`` steps (with
``denoise=False``: ``floor(NFE / e)``); budgets too small for one step are skipped. The NFE
actually spent (some solvers save evaluations, e.g. Heun's last step) is measured and is what the
tables and plots show.

**Metrics** (all against the exact target at ``t = 0``, the error users care about):

* Gaussian targets: the 2-Wasserstein distance in closed form (Bures),
  ``W2^2 = |m1 - m2|^2 + tr(C1 + C2 - 2 (C2^{1/2} C1 C2^{1/2})^{1/2})``. For solvers that are
  affine in the state and the noise (``solvers.get(name).is_affine(**options)``) the output mean
  and covariance are propagated exactly (:func:`scoresde.harness.moments.exact_output_moments`): no
  Monte-Carlo noise. Other solvers use the moments of ``n_samples`` samples; their noise floor is
  the same estimate computed on exact samples of the target.
  Beside the error against the target, ``disc_error`` is the distance to the *ideal* output (the
  exact solution of the solver's continuous equation, reverse SDE or probability-flow ODE, from
  the prior ``N(0, prior_std^2 I)`` to ``t_end``, then the denoising step), also Gaussian and known
  in closed form (:func:`scoresde.harness.moments.exact_solution_moments`). ``disc_error`` is the
  discretisation error alone and goes to 0; the ``floor = W2(ideal, target)`` is what no step
  count removes (truncation at ``t_end`` plus, for ODE solvers, the prior mismatch
  ``p_T != N(0, prior_std^2 I)``).
* Mixture targets: the sliced 2-Wasserstein distance (POT, the optional ``ot`` extra) between the
  output and a reference sample of the target (stratified: exactly ``round(n w_k)`` points per
  mode); the mode-weight error ``1/2 sum_k |w_hat_k - w_k|`` with ``w_hat_k`` the mean
  responsibility of mode ``k`` over the samples; the worst per-mode mean error
  ``max_k |m_hat_k - m_k|`` and covariance error ``max_k ||C_hat_k - C_k||_F / ||C_k||_F``
  (responsibility-weighted moments); the per-mode W2 ``sum_k w_k W2(N(m_hat_k, C_hat_k), N(m_k, C_k))``
  (Bures), whose noise floor falls like ``n^(-1/2)`` where the sliced W2's falls like
  ``n^(-1/4)``, so it separates good samplers that all sit on the sliced-W2 floor. Each has a noise floor: the same metric for an i.i.d. sample
  of the target of the same size (what a perfect sampler scores), averaged over four draws.

**Orders.** The empirical order is ``-slope`` of a least-squares line through
``(log NFE, log error)`` over the three largest NFEs (the asymptotic regime): on ``disc_error``
for Gaussian targets, and on the points more than twice above the noise floor for mixtures (at
least three of them). It is printed beside the declared order.

**Randomness.** Everything derives from ``seed``: all solvers and budgets of a target share one
prior draw and one solver-noise stream (common random numbers), so their differences are far less
noisy than the floors.

Quick start::

    from scoresde.harness import run_study
    result = run_study(["euler_maruyama", "ode_euler"], ["gaussian_aniso_8d"], [10, 20, 40])
    print(result.table())

The package, one job per module (data flows one way, top to bottom):

* :mod:`.targets`: the built-in analytic targets and the stratified reference sample;
* :mod:`.metrics`: Bures W2, sliced W2, mode errors, the order fit;
* :mod:`.moments`: exact moment propagation through affine solvers (Gaussian targets);
* :mod:`.study`: resolving the solvers and budgets, and running the study;
* :mod:`.score_error`: imperfect scores and the stochastic-vs-ODE crossover;
* :mod:`.report`: records, summaries, tables, CSV / JSON; :mod:`.plots`: the figures.
* :mod:`.model_study`: ``run_study(model=...)``, solvers on your own model against its converged
  reference; :mod:`.features`: the Fréchet distance of digits-classifier features.
"""

from .features import digits_features, frechet_distance
from .metrics import fit_order, gaussian_w2, mode_errors, per_mode_w2, sliced_w2
from .moments import exact_output_moments, exact_solution_moments, gaussian_flow_map
from .report import CSV_FIELDS, Record, StudyResult, TargetSummary, solver_table
from .score_error import (
    SCORE_ERROR_SOLVERS,
    SCORE_ERRORS,
    crossover_table,
    crossovers,
    parse_score_error,
    perturb_score,
)
from .study import (
    DEFAULT_NFES,
    DEFAULT_SOLVERS,
    SolverRun,
    default_solvers,
    fixed_step_solvers,
    run_study,
    steps_for_budget,
)
from .targets import DEFAULT_TARGETS, TARGETS, TargetInfo, get_target, stratified_sample

__all__ = [
    "CSV_FIELDS",
    "DEFAULT_NFES",
    "DEFAULT_SOLVERS",
    "DEFAULT_TARGETS",
    "SCORE_ERRORS",
    "SCORE_ERROR_SOLVERS",
    "TARGETS",
    "Record",
    "SolverRun",
    "StudyResult",
    "TargetInfo",
    "TargetSummary",
    "crossover_table",
    "crossovers",
    "default_solvers",
    "digits_features",
    "exact_output_moments",
    "exact_solution_moments",
    "fit_order",
    "fixed_step_solvers",
    "frechet_distance",
    "gaussian_flow_map",
    "gaussian_w2",
    "get_target",
    "mode_errors",
    "parse_score_error",
    "per_mode_w2",
    "perturb_score",
    "run_study",
    "sliced_w2",
    "solver_table",
    "steps_for_budget",
    "stratified_sample",
]
