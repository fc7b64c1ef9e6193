"""Exact accuracy tools for solvers on Gaussian problems, now in :mod:`scoresde.harness`.

A thin re-export kept so ``scoresde.accuracy.*`` imports keep working: the moment propagation
lives in :mod:`scoresde.harness.moments` and the Bures distance in :mod:`scoresde.harness.metrics`.
"""

from .harness.metrics import gaussian_w2
from .harness.moments import exact_output_moments, exact_solution_moments, gaussian_flow_map

__all__ = ["exact_output_moments", "exact_solution_moments", "gaussian_flow_map", "gaussian_w2"]
