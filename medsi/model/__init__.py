"""The piecewise-linear diffusion model that medsi's selective-inference engine differentiates.

:class:`PLUNet` predicts noise, :class:`DDIMReconstruction` turns it into a reconstruction f(x)
with noise fixed by a seed, and :class:`AnomalyScore` gives E(x) = A(|x - f(x)|) (DESIGN.md
sections 1 and 3). The engine's :func:`medsi.si.check_piecewise_linear` accepts all three.
"""

from medsi.model.reconstruction import DDIMReconstruction, ddim_timesteps
from medsi.model.score import AnomalyScore
from medsi.model.unet import PLUNet, timestep_embedding

__all__ = [
    "PLUNet",
    "DDIMReconstruction",
    "AnomalyScore",
    "ddim_timesteps",
    "timestep_embedding",
]
