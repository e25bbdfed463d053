"""Dictionary transforms of the spatial pipeline: register, resample to the grid, map back."""

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.transforms import InvertibleTransform, MapTransform

from medsi.errors import ConfigError
from medsi.transforms.spatial._grid import ModelGrid
from medsi.transforms.spatial._registration import RegistrationConfig
from medsi.transforms.spatial.array import (
    MapToNativeGrid,
    RegisterToTemplate,
    ResampleToModelGrid,
)

__all__ = ["RegisterToTemplated", "ResampleToModelGridd", "MapToNativeGridd"]


def _per_key(
    name: str, value: Any, keys: tuple[Hashable, ...], optional: bool
) -> tuple[Hashable | None, ...]:
    """One companion key per key (None entries allowed when ``optional``)."""
    if value is None and optional:
        return (None,) * len(keys)
    values = (value,) if isinstance(value, str) or not isinstance(value, Sequence) else value
    values = tuple(values)
    given = [v for v in values if v is not None]
    if (
        len(values) != len(keys)
        or (None in values and not optional)
        or len(set(given)) != len(given)
        or set(given) & set(keys)
    ):
        raise ConfigError(
            f'"{name}" must give one distinct key per key in {keys!r}, none of them one of '
            f"those keys, got {value!r}; pass a list as long as keys"
            + (", with None where there is none." if optional else ".")
        )
    return values


def _fetch(d: Mapping, key: Hashable | None, transform: MapTransform) -> Any:
    """``d[key]``; None for a None key or, with ``allow_missing_keys``, a missing one."""
    if key is None:
        return None
    if key in d:
        return d[key]
    if transform.allow_missing_keys:
        return None
    raise KeyError(
        f"Key `{key}` of transform `{type(transform).__name__}` was missing in the data and "
        "allow_missing_keys==False; add it (run the transform that makes it first) or pass "
        "None for that key."
    )


class RegisterToTemplated(MapTransform):
    """Register the bundled template to each scan and store the result.

    Parameters
    ----------
    keys
        Keys of the scans ((1, X, Y, Z) ``MetaTensor`` with their affine).
    valid_keys
        Key of each scan's valid mask (bool, False where no data), one per key, None
        entries (or None) for none. The default matches ``LoadScand``.
    registration_keys
        Where to put each :class:`~medsi.transforms.spatial.functional.Registration`, one
        per key.
    registered
        The scans are already in template space (``--registered``): store the identity.
    config
        Registration settings; None: the defaults.
    allow_missing_keys
        Skip scans whose key is missing instead of raising KeyError; a missing valid mask
        then counts as all valid.

    Raises
    ------
    ConfigError
        If ``valid_keys`` or ``registration_keys`` does not give one distinct key per key.

    Examples
    --------
    >>> import torch
    >>> from monai.data import MetaTensor
    >>> d = {"image": MetaTensor(torch.zeros(1, 4, 4, 4)), "id": 7}
    >>> out = RegisterToTemplated(valid_keys=None, registered=True)(d)
    >>> sorted(out), out["registration"].method
    (['id', 'image', 'registration'], 'identity')
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = "image",
        valid_keys: Hashable | Sequence[Hashable | None] | None = "image_valid",
        registration_keys: Hashable | Sequence[Hashable] = "registration",
        registered: bool = False,
        config: RegistrationConfig | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.valid_keys = _per_key("valid_keys", valid_keys, self.keys, optional=True)
        self.registration_keys = _per_key(
            "registration_keys", registration_keys, self.keys, optional=False
        )
        self.register = RegisterToTemplate(registered=registered, config=config)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Register every scan.

        Parameters
        ----------
        data
            Mapping holding the scans and their valid masks.

        Returns
        -------
        dict
            A copy of ``data`` with ``d[registration_key]`` added; nothing else changes.

        Raises
        ------
        KeyError
            If a scan or its valid mask is missing and ``allow_missing_keys`` is False (the
            message names the key and the transform).
        TypeError
            If a scan is not a ``MetaTensor``.
        ConfigError
            If a scan is not (1, X, Y, Z) or its valid mask does not match it.
        """
        d = dict(data)
        for key, valid_key, registration_key in self.key_iterator(
            d, self.valid_keys, self.registration_keys
        ):
            valid = _fetch(d, valid_key, self)
            d[registration_key] = self.register(d[key], valid)
        return d


class ResampleToModelGridd(MapTransform, InvertibleTransform):
    """Replace each scan by its model-grid version and add its valid and covered masks.

    Parameters
    ----------
    keys
        Keys of the scans ((1, X, Y, Z) ``MetaTensor``); each is replaced by its
        (1, size, size, n_planes) resampling on the grid, in template space.
    registration_keys
        Key of each scan's ``Registration`` (from :class:`RegisterToTemplated`), one per key.
    valid_keys
        Key of each scan's valid mask, replaced by the grid's valid mask; None entries (or
        None) when there is none (every finite voxel is then valid and no mask is written).
    covered_keys
        Where to put each grid's covered mask; None entries (or None) to skip.
    grid
        The model grid; None: ``default_model_grid()``.
    mode
        ``"linear"`` (images) or ``"nearest"`` (labels and masks).
    max_thickness
        Largest slice thickness assumed, mm; None: 1.5 x the plane spacing.
    antialias
        Blur to the grid's resolution before sampling (``"linear"`` only).
    allow_missing_keys
        Skip scans whose key or registration is missing instead of raising KeyError; a
        missing valid mask then counts as all valid.

    Raises
    ------
    ConfigError
        If companion keys do not give one distinct key per key, ``mode`` is unknown or
        ``max_thickness`` is below the plane spacing.

    Notes
    -----
    Each output's ``.meta["notes"]`` gains the registration's verdict and what the
    resampling did; ``.meta`` also holds the native geometry
    (:data:`~medsi.transforms.spatial.array.GEOMETRY_KEYS`), and the operation is recorded
    in ``applied_operations`` so that :meth:`inverse` (or MONAI's ``Invertd``) maps label
    maps back to the native grid.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = "image",
        registration_keys: Hashable | Sequence[Hashable] = "registration",
        valid_keys: Hashable | Sequence[Hashable | None] | None = "image_valid",
        covered_keys: Hashable | Sequence[Hashable | None] | None = "image_covered",
        grid: ModelGrid | None = None,
        mode: str = "linear",
        max_thickness: float | None = None,
        antialias: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.registration_keys = _per_key(
            "registration_keys", registration_keys, self.keys, optional=False
        )
        self.valid_keys = _per_key("valid_keys", valid_keys, self.keys, optional=True)
        self.covered_keys = _per_key("covered_keys", covered_keys, self.keys, optional=True)
        written = [k for k in (*self.valid_keys, *self.covered_keys) if k is not None]
        if len(set(written)) != len(written):
            raise ConfigError(
                f'"valid_keys" {self.valid_keys!r} and "covered_keys" {self.covered_keys!r} '
                "must not share a key; pass distinct names such as image_valid and "
                "image_covered."
            )
        self.resampler = ResampleToModelGrid(
            grid=grid, mode=mode, max_thickness=max_thickness, antialias=antialias
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Resample every scan onto the grid.

        Parameters
        ----------
        data
            Mapping holding the scans, their registrations and valid masks.

        Returns
        -------
        dict
            A copy of ``data`` with each scan and valid mask replaced by its model-grid
            version and each covered mask added; other keys pass through.

        Raises
        ------
        KeyError
            If a scan, its registration or its valid mask is missing and
            ``allow_missing_keys`` is False (the message names the key and the transform).
        TypeError
            If a scan is not a ``MetaTensor`` or a registration not a ``Registration``.
        ConfigError
            If a scan is not (1, X, Y, Z) or its valid mask does not match it.
        """
        d = dict(data)
        for key, registration_key, valid_key, covered_key in self.key_iterator(
            d, self.registration_keys, self.valid_keys, self.covered_keys
        ):
            registration = _fetch(d, registration_key, self)
            if registration is None:
                continue
            valid = _fetch(d, valid_key, self)
            image, grid_valid, covered = self.resampler(d[key], registration, valid)
            d[key] = image
            if valid_key is not None and valid is not None:
                d[valid_key] = grid_valid
            if covered_key is not None:
                d[covered_key] = covered
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Map each ``keys`` entry back onto its native grid (nearest neighbour).

        Parameters
        ----------
        data
            Mapping whose ``keys`` entries are model-grid ``MetaTensor`` objects carrying
            this transform's record (label maps, typically via MONAI's ``Invertd``).

        Returns
        -------
        dict
            A copy with those entries on their native grids; other keys pass through.

        Raises
        ------
        KeyError
            If a key is missing and ``allow_missing_keys`` is False.
        RuntimeError
            If an entry's last applied operation is not this transform's.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resampler.inverse(d[key])
        return d


class MapToNativeGridd(MapTransform):
    """Map label maps on the model grid back onto the native voxel grid of their scan.

    Parameters
    ----------
    keys
        Keys of the label maps ((1, size, size, n_planes) integer or bool).
    reference_keys
        Key of each label map's model-grid image (the output of
        :class:`ResampleToModelGridd`, whose meta holds the geometry), one per key.
    allow_missing_keys
        Skip missing label maps or references instead of raising KeyError.

    Raises
    ------
    ConfigError
        If ``reference_keys`` does not give one key per key.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = "labels",
        reference_keys: Hashable | Sequence[Hashable] = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        references = (
            (reference_keys,)
            if isinstance(reference_keys, str) or not isinstance(reference_keys, Sequence)
            else tuple(reference_keys)
        )
        if len(references) == 1:
            references = references * len(self.keys)
        if len(references) != len(self.keys) or set(references) & set(self.keys):
            raise ConfigError(
                f'"reference_keys" must give one key per key in {self.keys!r} (or one for '
                f"all), none of them one of those keys, got {reference_keys!r}; pass e.g. "
                '"image".'
            )
        self.reference_keys = references
        self.mapper = MapToNativeGrid()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Map every label map back.

        Parameters
        ----------
        data
            Mapping holding the label maps and the model-grid images.

        Returns
        -------
        dict
            A copy with each label map replaced by its (1, X, Y, Z) native version.

        Raises
        ------
        KeyError
            If a label map or its reference is missing and ``allow_missing_keys`` is False
            (the message names the key and the transform).
        TypeError
            If a reference is not a ``MetaTensor``.
        InputDataError
            If a reference's meta lacks the geometry written by ``ResampleToModelGridd``.
        ConfigError
            If a label map does not have the grid's shape.
        """
        d = dict(data)
        for key, reference_key in self.key_iterator(d, self.reference_keys):
            reference = _fetch(d, reference_key, self)
            if reference is None:
                continue
            d[key] = self.mapper(d[key], reference)
        return d
