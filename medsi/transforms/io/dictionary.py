"""Dictionary transform: load the scans named by ``keys`` and add their valid masks."""

from collections.abc import Hashable, Mapping, Sequence
from os import PathLike
from typing import Any

from monai.transforms import MapTransform

from medsi.errors import ConfigError
from medsi.transforms.io.array import LoadScan

__all__ = ["LoadScand"]


class LoadScand(MapTransform):
    """Replace each path ``d[key]`` by the loaded scan and add ``d[valid_key]``.

    Parameters
    ----------
    keys
        Keys whose values are paths (NIfTI file, DICOM folder, or one DICOM file).
    volume
        0-based volume of a 4-D NIfTI file (``--volume``); must be 0 for DICOM.
    series
        SeriesInstanceUID when a DICOM folder holds several series (``--series``).
    valid_keys
        Where to put each key's valid mask, one per key; None: ``"<key>_valid"`` (so
        ``"image_valid"`` for the default key).
    allow_missing_keys
        Skip keys absent from the data instead of raising KeyError.

    Raises
    ------
    ConfigError
        If ``valid_keys`` does not give one distinct new key per key.

    Examples
    --------
    >>> from medsi.assets import __file__ as assets
    >>> from pathlib import Path
    >>> path = Path(assets).parent / "examples" / "S0_10slices.nii.gz"
    >>> d = LoadScand(keys="image")({"image": path, "label": 1})
    >>> sorted(d), tuple(d["image"].shape), d["image"].meta["source_format"]
    (['image', 'image_valid', 'label'], (1, 128, 128, 10), 'nifti')
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = ("image",),
        volume: int = 0,
        series: str | None = None,
        valid_keys: Hashable | Sequence[Hashable] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if valid_keys is None:
            valid_keys = tuple(f"{key}_valid" for key in self.keys)
        elif isinstance(valid_keys, str) or not isinstance(valid_keys, Sequence):
            valid_keys = (valid_keys,)
        valid_keys = tuple(valid_keys)
        if (
            len(valid_keys) != len(self.keys)
            or len(set(valid_keys)) != len(valid_keys)
            or set(valid_keys) & set(self.keys)
        ):
            raise ConfigError(
                f'"valid_keys" must give one distinct key per key, none of them a key itself, '
                f"got {valid_keys!r} for keys {self.keys!r}; pass e.g. "
                f"{tuple(f'{k}_valid' for k in self.keys)!r}, or None."
            )
        self.valid_keys = valid_keys
        self.loader = LoadScan(volume=volume, series=series)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every key's path.

        Parameters
        ----------
        data
            Mapping with a path (str or path-like) at each key.

        Returns
        -------
        dict
            A copy of ``data`` with ``d[key]`` the (1, X, Y, Z) float32 ``MetaTensor`` and
            ``d[valid_key]`` its (1, X, Y, Z) bool valid mask.

        Raises
        ------
        KeyError
            If a key is missing and ``allow_missing_keys`` is False.
        TypeError
            If a key's value is not a path.
        InputDataError
            If a scan is unreadable or inconsistent.
        ConfigError
            If ``volume`` or ``series`` does not fit a scan.
        """
        d = dict(data)
        for key, valid_key in self.key_iterator(d, self.valid_keys):
            path = d[key]
            if not isinstance(path, str | PathLike):
                raise TypeError(
                    f'"{key}" must hold the path of a scan (str or path-like) for '
                    f"{type(self).__name__}, got {type(path).__name__}; put the NIfTI file or "
                    "DICOM folder name there."
                )
            d[key], d[valid_key] = self.loader(path)
        return d
