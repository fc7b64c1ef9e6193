"""scoresde: continuous-time score-based diffusion models.

Define a diffusion SDE, train a score network by denoising score matching, sample with the solver
of your choice, and measure how accurate that solver is against analytic ground truth.
"""

from schedules import CosineVP, LinearVP, VEGeometric, time_grid
from solvers import available, convert, from_eps, get, register, sample, to_eps

from .adapters import AdaptedModel, from_diffusers, from_k_diffusion
from .bound import variational_bound
from .ddpm import DiscreteDDPM
from .guidance import classifier_free_guidance, classifier_guidance, inpaint
from .harness import StudyResult, run_study
from .latent import LatentDiffusion
from .likelihood import LikelihoodResult, bits_per_dim, log_likelihood
from .nets import MLP, ScoreModel, UNet
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
from .training import TrainConfig, Trainer, load_pretrained
from .tuning import TuneResult, load_grid, save_grid, tune_grid
from .vae import GaussianVAE

__version__ = "0.2.0"

__all__ = [
    "AdaptedModel",
    "from_diffusers",
    "from_k_diffusion",
    "MLP",
    "SDES",
    "ScoreModel",
    "StudyResult",
    "TrainConfig",
    "TuneResult",
    "Trainer",
    "UNet",
    "load_pretrained",
    "run_study",
    "CosineVP",
    "DiffusionSDE",
    "DiscreteDDPM",
    "Gaussian",
    "GaussianMixture",
    "GaussianVAE",
    "LatentDiffusion",
    "LikelihoodResult",
    "LinearVP",
    "ProbabilityFlowODE",
    "ReverseSDE",
    "SubVPSDE",
    "VEGeometric",
    "VESDE",
    "VPSDE",
    "available",
    "bits_per_dim",
    "classifier_free_guidance",
    "classifier_guidance",
    "convert",
    "from_eps",
    "get",
    "inpaint",
    "load_grid",
    "log_likelihood",
    "register",
    "sample",
    "save_grid",
    "sde_from_config",
    "time_grid",
    "to_eps",
    "tune_grid",
    "variational_bound",
]
