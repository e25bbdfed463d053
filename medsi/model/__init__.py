"""The piecewise-linear diffusion model that medsi's selective-inference engine differentiates.

:class:`PLUNet` predicts noise, :class:`DDIMReconstruction` turns it into a reconstruction f(x)
with noise fixed by a seed, and :class:`AnomalyScore` gives E(x) = A(|x - f(x)|) (DESIGN.md
sections 1 and 3). The engine's :func:`medsi.si.check_piecewise_linear` accepts all three.
:func:`train_bundle` trains the U-Net on normal images and packs it, with the noise covariance
and reference bank estimated on held-out images, into a :class:`ModelBundle`.
"""

from medsi.model.bundle import (
    ModelBundle,
    build_bundle,
    describe_bundle,
    load_bundle,
    save_bundle,
)
from medsi.model.config import default_config, validate_config
from medsi.model.reconstruction import DDIMReconstruction, ddim_timesteps
from medsi.model.score import AnomalyScore
from medsi.model.training import train_bundle, train_unet
from medsi.model.unet import PLUNet, timestep_embedding

__all__ = [
    "PLUNet",
    "DDIMReconstruction",
    "AnomalyScore",
    "ModelBundle",
    "build_bundle",
    "default_config",
    "describe_bundle",
    "ddim_timesteps",
    "load_bundle",
    "save_bundle",
    "timestep_embedding",
    "train_bundle",
    "train_unet",
    "validate_config",
]
