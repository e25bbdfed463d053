"""Dictionary wrapper of the robust standardisation, for ``monai.transforms.Compose``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.transforms import MapTransform

from medsi.transforms.intensity.array import RobustStandardise

__all__ = ["RobustStandardised"]


class RobustStandardised(MapTransform):
    """Standardise ``keys`` by the robust statistics of the voxels in ``mask_key``.

    Parameters
    ----------
    keys
        Image keys to standardise.
    mask_key
        Key of the bool brain mask (same shape as each image).
    method
        ``"median-mad"`` or ``"trimmed"``.
    allow_missing_keys
        Skip absent keys instead of raising KeyError.
    """

    def __init__(
        self,
        keys,
        mask_key: Hashable = "brain_mask",
        method: str = "median-mad",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.standardise = RobustStandardise(method)

    def __call__(self, data: Mapping) -> dict:
        """Return a copy of ``data`` with ``keys`` standardised."""
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(
                f"RobustStandardised needs the brain mask in key {self.mask_key!r}, which is "
                "missing; compute a mask first."
            )
        for key in self.key_iterator(d):
            d[key] = self.standardise(d[key], d[self.mask_key])
        return d
