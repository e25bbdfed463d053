"""One-image spatial transforms: register, resample onto the model grid, map labels back."""

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, Transform

from medsi.errors import ConfigError, InputDataError
from medsi.transforms.spatial._geometry import check_affine
from medsi.transforms.spatial._grid import (
    ModelGrid,
    default_model_grid,
    grid_coverage,
    grid_to_native,
    resample_to_grid,
    slice_geometry,
)
from medsi.transforms.spatial._registration import (
    Registration,
    RegistrationConfig,
    identity_registration,
    register_affine,
)

__all__ = ["RegisterToTemplate", "ResampleToModelGrid", "MapToNativeGrid", "GEOMETRY_KEYS"]

GEOMETRY_KEYS = (
    "native_affine",
    "native_spatial_shape",
    "model_grid",
    "registration_matrix",
    "max_thickness",
)
"""Meta keys :class:`ResampleToModelGrid` writes on its outputs (and in its trace record):
the native (4, 4) affine and (X, Y, Z) shape, the grid's parameters (a dict for
:class:`ModelGrid`), the template-to-scan matrix used (``Registration.resampling_matrix``)
and the slice thickness cap (mm), all as plain lists and numbers. They are all that
:class:`MapToNativeGrid` needs."""

_MODES = {"linear": 1, "nearest": 0}


def _scan_volume(image: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) numpy view and RAS affine of a (1, X, Y, Z) MetaTensor."""
    if not isinstance(image, MetaTensor):
        raise TypeError(
            f'"{name}" must be a monai.data.MetaTensor carrying its affine, got '
            f"{type(image).__name__}; load it with medsi.transforms.io.LoadScan or wrap it "
            "as MetaTensor(array, affine=affine)."
        )
    if image.ndim != 4 or image.shape[0] != 1:
        raise ConfigError(
            f'"{name}" must be channel-first (1, X, Y, Z), got shape {tuple(image.shape)}; '
            "select one channel and one volume first."
        )
    return image.detach().cpu().numpy()[0], check_affine(image.affine, f"{name}.affine")


def _mask_volume(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(shape):
        raise ConfigError(
            f'"{name}" must have the spatial shape {tuple(shape)} of its image, got '
            f"{arr.shape}; pass the mask that belongs to this scan."
        )
    return arr.astype(bool)


def _grid_from_meta(value: Any) -> ModelGrid:
    if isinstance(value, ModelGrid):
        return value
    return ModelGrid(
        size=int(value["size"]),
        n_planes=int(value["n_planes"]),
        pixel_spacing=float(value["pixel_spacing"]),
        plane_spacing=float(value["plane_spacing"]),
        origin=tuple(float(v) for v in value["origin"]),
    )


def _geometry(info: Mapping[str, Any], where: str) -> tuple:
    missing = [k for k in GEOMETRY_KEYS if k not in info]
    if missing:
        raise InputDataError(
            f"{where} must hold the geometry written by ResampleToModelGrid, missing "
            f"{missing}; resample the scan with ResampleToModelGrid(d) first."
        )
    return (
        _grid_from_meta(info["model_grid"]),
        np.asarray(info["registration_matrix"], dtype=np.float64),
        np.asarray(info["native_affine"], dtype=np.float64),
        tuple(int(n) for n in np.asarray(info["native_spatial_shape"]).ravel()),
        float(info["max_thickness"]),
    )


def _to_native(labels: Any, info: Mapping[str, Any], where: str) -> MetaTensor:
    grid, matrix, native_affine, native_shape, max_thickness = _geometry(info, where)
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    covered = grid_coverage(grid, native_affine, native_shape, matrix, max_thickness)
    native = grid_to_native(arr, grid, matrix, native_affine, native_shape, covered=covered)
    meta = copy.deepcopy(dict(labels.meta)) if isinstance(labels, MetaTensor) else {}
    for key in (*GEOMETRY_KEYS, "affine"):
        meta.pop(key, None)
    meta["spatial_shape"] = np.array(native_shape, dtype=np.int64)
    meta["notes"] = [
        *meta.get("notes", []),
        "mapped back from the model grid onto the native voxel grid (nearest neighbour, "
        "0 outside the covered grid)",
    ]
    operations = None
    if isinstance(labels, MetaTensor):
        operations = copy.deepcopy(labels.applied_operations)
    out = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(native[None])),
        meta=meta,
        applied_operations=operations,
    )
    out.affine = torch.as_tensor(native_affine, dtype=torch.float64)
    return out


class RegisterToTemplate(Transform):
    """Register the bundled template to a scan, or skip it (``registered=True``).

    Parameters
    ----------
    registered
        The scan is already in template space (``--registered``, e.g. BraTS): return
        :func:`~medsi.transforms.spatial.functional.identity_registration`.
    config
        Settings of :func:`~medsi.transforms.spatial.functional.register_affine`.

    Examples
    --------
    >>> import torch
    >>> from monai.data import MetaTensor
    >>> RegisterToTemplate(registered=True)(MetaTensor(torch.zeros(1, 4, 4, 4))).method
    'identity'
    """

    def __init__(self, registered: bool = False, config: RegistrationConfig | None = None):
        if config is not None and not isinstance(config, RegistrationConfig):
            raise TypeError(
                f'"config" must be a RegistrationConfig, got {type(config).__name__}; pass '
                "RegistrationConfig(...) or None."
            )
        self.registered = bool(registered)
        self.config = config

    def __call__(self, image: MetaTensor, valid: Any = None) -> Registration:
        """Register.

        Parameters
        ----------
        image
            (1, X, Y, Z) scan with its RAS+ affine.
        valid
            (1, X, Y, Z) or (X, Y, Z) bool, False where the scan has no data; None: all.

        Returns
        -------
        Registration
            The template-to-scan map and its quality verdict.

        Raises
        ------
        TypeError
            If ``image`` is not a ``MetaTensor``.
        ConfigError
            If ``image`` is not (1, X, Y, Z) or ``valid`` does not match it.
        InputDataError
            If the image's affine is not invertible.
        """
        array, affine = _scan_volume(image, "image")
        mask = _mask_volume(valid, array.shape, "valid")
        if self.registered:
            return identity_registration()
        return register_affine(array, affine, valid=mask, config=self.config)


class ResampleToModelGrid(InvertibleTransform):
    """Resample a scan onto the model grid; the inverse maps label maps back.

    See :func:`~medsi.transforms.spatial.functional.resample_to_grid` for the sampling,
    coverage and anti-aliasing rules.

    Parameters
    ----------
    grid
        The model grid; None: ``default_model_grid()`` (64 x 64 pixels, 2 mm planes).
    mode
        ``"linear"`` (intensities) or ``"nearest"`` (labels and masks, dtype kept).
    max_thickness
        Largest slice thickness assumed, mm; None: 1.5 x the plane spacing.
    antialias
        Blur the scan to the grid's resolution before sampling (``"linear"`` only).

    Raises
    ------
    ConfigError
        If ``mode`` is unknown or ``max_thickness`` is below the plane spacing.
    TypeError
        If ``grid`` is not a :class:`ModelGrid`.
    """

    def __init__(
        self,
        grid: ModelGrid | None = None,
        mode: str = "linear",
        max_thickness: float | None = None,
        antialias: bool = True,
    ) -> None:
        self.grid = default_model_grid() if grid is None else grid
        if not isinstance(self.grid, ModelGrid):
            raise TypeError(
                f'"grid" must be a ModelGrid, got {type(self.grid).__name__}; use '
                "default_model_grid()."
            )
        if mode not in _MODES:
            raise ConfigError(
                f'"mode" must be one of {sorted(_MODES)}, got {mode!r}; pass "linear" for '
                'images and "nearest" for labels.'
            )
        self.mode = mode
        if max_thickness is not None and not (
            isinstance(max_thickness, int | float) and max_thickness >= self.grid.plane_spacing
        ):
            raise ConfigError(
                f'"max_thickness" must be a number of mm >= the plane spacing '
                f"({self.grid.plane_spacing} mm), got {max_thickness!r}; pass None for "
                "1.5 x the plane spacing."
            )
        self.max_thickness = (
            1.5 * self.grid.plane_spacing if max_thickness is None else float(max_thickness)
        )
        self.antialias = bool(antialias)

    def _describe(self, affine: np.ndarray, covered: np.ndarray) -> str:
        g = self.grid
        axis, gaps = slice_geometry(affine)
        planes = int(covered.any(axis=(0, 1)).sum())
        how = "linear, anti-aliased" if self.mode == "linear" and self.antialias else self.mode
        text = (
            f"resampled onto the {g.size} x {g.size} x {g.n_planes} model grid "
            f"({g.pixel_spacing:.2f} mm pixels, {g.plane_spacing:g} mm planes; {how}); "
            f"{planes} of {g.n_planes} planes covered"
        )
        if gaps[axis] > self.max_thickness:
            text += (
                f"; sparse slices ({gaps[axis]:.1f} mm apart along voxel axis {axis}): each "
                f"plane takes the nearest slice within {self.max_thickness / 2:g} mm, nothing "
                "is interpolated across the gaps"
            )
        return text

    def __call__(
        self, image: MetaTensor, registration: Registration, valid: Any = None
    ) -> tuple[MetaTensor, MetaTensor, MetaTensor]:
        """Resample ``image`` onto the grid.

        Parameters
        ----------
        image
            (1, X, Y, Z) scan with its RAS+ affine.
        registration
            The template-to-scan map; its ``resampling_matrix`` is used (the centre-of-mass
            alignment when the quality check failed, as the notes then say).
        valid
            (1, X, Y, Z) or (X, Y, Z) bool, False where the scan has no data; None: all.

        Returns
        -------
        image : MetaTensor
            (1, size, size, n_planes): float32 (``"linear"``) or the input dtype
            (``"nearest"``); ``.affine`` the grid's (template space); ``.meta`` the input's
            plus :data:`GEOMETRY_KEYS`, ``"spatial_shape"``, ``"spacing"`` and two
            ``"notes"`` (the registration's verdict and what the resampling did); the
            applied operation is recorded for :meth:`inverse`.
        valid : MetaTensor
            (1, size, size, n_planes) bool, same affine and meta.
        covered : MetaTensor
            (1, size, size, n_planes) bool, same affine and meta.

        Raises
        ------
        TypeError
            If ``image`` is not a ``MetaTensor`` or ``registration`` not a ``Registration``.
        ConfigError
            If ``image`` is not (1, X, Y, Z) or ``valid`` does not match it.
        InputDataError
            If the image's affine is not invertible.
        """
        if not isinstance(registration, Registration):
            raise TypeError(
                f'"registration" must be a Registration, got {type(registration).__name__}; '
                "run RegisterToTemplate first."
            )
        array, affine = _scan_volume(image, "image")
        mask = _mask_volume(valid, array.shape, "valid")
        matrix = registration.resampling_matrix
        out, out_valid, covered = resample_to_grid(
            array,
            affine,
            matrix,
            self.grid,
            valid=mask,
            order=_MODES[self.mode],
            max_thickness=self.max_thickness,
            antialias=self.antialias,
        )
        g = self.grid
        info = {
            "native_affine": affine.tolist(),
            "native_spatial_shape": list(array.shape),
            "model_grid": {
                "size": g.size,
                "n_planes": g.n_planes,
                "pixel_spacing": g.pixel_spacing,
                "plane_spacing": g.plane_spacing,
                "origin": list(g.origin),
            },
            "registration_matrix": matrix.tolist(),
            "max_thickness": self.max_thickness,
        }
        meta = copy.deepcopy(dict(image.meta))
        meta.pop("affine", None)
        meta.update(copy.deepcopy(info))
        meta["spatial_shape"] = np.array(g.shape, dtype=np.int64)
        meta["spacing"] = np.array(g.spacing, dtype=np.float64)
        notes = [registration.describe(), self._describe(affine, covered)]
        if matrix is not registration.matrix:
            notes[1] += (
                "; the registration failed, so the grid was placed by the centre-of-mass "
                "alignment (translation only)"
            )
        meta["notes"] = [*meta.get("notes", []), *notes]
        grid_affine = torch.as_tensor(g.affine, dtype=torch.float64)
        outputs = []
        for arr in (out, out_valid, covered):
            tensor = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(arr[None])),
                meta=copy.deepcopy(meta),
                applied_operations=copy.deepcopy(image.applied_operations),
            )
            tensor.affine = grid_affine.clone()
            outputs.append(
                self.push_transform(
                    tensor, orig_size=tuple(array.shape), extra_info=copy.deepcopy(info)
                )
            )
        return outputs[0], outputs[1], outputs[2]

    def inverse(self, data: MetaTensor) -> MetaTensor:
        """Map a model-grid tensor carrying this transform's record back to the native grid.

        Nearest neighbour, meant for label maps (an intensity image comes back blocky); 0
        outside the covered grid. The record is popped from ``data.applied_operations``.

        Parameters
        ----------
        data
            (1, size, size, n_planes) ``MetaTensor`` whose last applied operation is this
            transform's (MONAI's ``Invertd`` copies it onto predictions).

        Returns
        -------
        MetaTensor
            (1, X, Y, Z) on the native affine, the dtype of ``data``.

        Raises
        ------
        RuntimeError
            If the last applied operation is not this transform's (MONAI's check).
        """
        record = self.pop_transform(data)
        return _to_native(data, record.get("extra_info", {}), "the trace record")


class MapToNativeGrid(Transform):
    """Map a label map on the model grid back onto a scan's native voxel grid.

    The geometry comes from the ``.meta`` of the model-grid image that
    :class:`ResampleToModelGrid` produced (:data:`GEOMETRY_KEYS`), so the labels need not
    carry a trace record. Nearest neighbour; 0 outside the covered grid.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from monai.data import MetaTensor
    >>> from medsi.transforms.spatial.functional import identity_registration
    >>> affine = np.diag([4.0, 4.0, 4.0, 1.0])
    >>> affine[:3, 3] = (-80.0, -100.0, -70.0)
    >>> scan = MetaTensor(torch.ones(1, 40, 40, 40), affine=torch.from_numpy(affine))
    >>> grid_image, _, covered = ResampleToModelGrid()(scan, identity_registration())
    >>> labels = covered.to(torch.int32)
    >>> tuple(MapToNativeGrid()(labels, grid_image).shape)
    (1, 40, 40, 40)
    """

    def __call__(self, labels: Any, reference: MetaTensor) -> MetaTensor:
        """Map ``labels`` back.

        Parameters
        ----------
        labels
            (1, size, size, n_planes) or (size, size, n_planes) integer or bool tensor or
            array on the model grid.
        reference
            The model-grid image of the same scan (output of :class:`ResampleToModelGrid`).

        Returns
        -------
        MetaTensor
            (1, X, Y, Z) on the native affine, the dtype of ``labels``; ``.meta`` the labels'
            (if any) with a note.

        Raises
        ------
        TypeError
            If ``reference`` is not a ``MetaTensor``.
        InputDataError
            If ``reference.meta`` lacks the geometry keys.
        ConfigError
            If ``labels`` does not have the grid's shape.
        """
        if not isinstance(reference, MetaTensor):
            raise TypeError(
                f'"reference" must be the model-grid MetaTensor from ResampleToModelGrid, got '
                f"{type(reference).__name__}; pass that image."
            )
        return _to_native(labels, reference.meta, '"reference.meta"')
