"""scoresde: continuous-time score-based diffusion models.

Define a diffusion SDE, train a score network by denoising score matching, sample with the solver
of your choice, and measure how accurate that solver is against analytic ground truth.
"""

from schedules import CosineVP, LinearVP, VEGeometric, time_grid
from solvers import available, convert, from_eps, get, register, sample, to_eps

from .ddpm import DiscreteDDPM
from .sde import (
    SDES,
    VESDE,
    VPSDE,
    DiffusionSDE,
    ProbabilityFlowODE,
    ReverseSDE,
    SubVPSDE,
    sde_from_config,
)
from .targets import Gaussian, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "SDES",
    "CosineVP",
    "DiffusionSDE",
    "DiscreteDDPM",
    "Gaussian",
    "GaussianMixture",
    "LinearVP",
    "ProbabilityFlowODE",
    "ReverseSDE",
    "SubVPSDE",
    "VEGeometric",
    "VESDE",
    "VPSDE",
    "available",
    "convert",
    "from_eps",
    "get",
    "register",
    "sample",
    "sde_from_config",
    "time_grid",
    "to_eps",
]
