"""Brain masks when the template cannot be used: an intensity-based fallback."""

from medsi.transforms.mask.functional import intensity_brain_mask, otsu_threshold

__all__ = ["intensity_brain_mask", "otsu_threshold"]
