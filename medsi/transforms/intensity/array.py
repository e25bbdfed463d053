"""One-image robust standardisation (see :mod:`medsi.transforms.intensity.functional`)."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from medsi.transforms.intensity.functional import robust_standardise

__all__ = ["RobustStandardise"]


class RobustStandardise:
    """Standardise an image by the median and MAD (or trimmed statistics) of its brain voxels.

    Parameters
    ----------
    method
        ``"median-mad"`` or ``"trimmed"``.
    """

    def __init__(self, method: str = "median-mad"):
        self.method = method

    def __call__(self, image, mask):
        """Return the standardised image.

        A MetaTensor keeps its metadata and records ``method``, ``centre`` and ``scale`` in
        ``meta["standardisation"]``.
        """
        array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        mask_array = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        out, centre, scale = robust_standardise(array, mask_array.astype(bool), self.method)
        record = {"method": self.method, "centre": centre, "scale": scale}
        if isinstance(image, MetaTensor):
            result = MetaTensor(torch.from_numpy(out), meta=dict(image.meta))  # keeps the affine
            result.meta["standardisation"] = record
            return result
        return out
