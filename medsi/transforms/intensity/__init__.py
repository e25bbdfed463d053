"""Intensity transforms: robust standardisation over brain voxels."""

from medsi.transforms.intensity.array import RobustStandardise
from medsi.transforms.intensity.dictionary import RobustStandardised
from medsi.transforms.intensity.functional import (
    STANDARDISATION_METHODS,
    robust_centre_scale,
    robust_standardise,
)

__all__ = [
    "STANDARDISATION_METHODS",
    "robust_centre_scale",
    "robust_standardise",
    "RobustStandardise",
    "RobustStandardised",
]
