"""Spatial part of the MRI pipeline: template registration, the model grid, and the way back.

Layers: :mod:`~medsi.transforms.spatial.functional` (pure numpy/SimpleITK functions),
:mod:`~medsi.transforms.spatial.array` (one-image transforms) and
:mod:`~medsi.transforms.spatial.dictionary` (MONAI ``MapTransform`` ``...d`` wrappers).

Pipeline (DESIGN.md §4)
-----------------------
``RegisterToTemplated``
    ``d["registration"]``: a :class:`Registration` whose ``matrix`` maps TEMPLATE RAS+
    world points (mm) to SCAN RAS+ world points (affine, Mattes mutual information,
    SimpleITK; or the identity with ``registered=True``), with a quality verdict
    (``passed``, ``reason``).
``ResampleToModelGridd``
    replaces ``d["image"]`` by its resampling on the :class:`ModelGrid` (1, 64, 64, 78 by
    default, template space, RAS axes, 2.95 mm pixels, 2 mm planes; the plane index is the
    slice position), ``d["image_valid"]`` by the grid's valid mask and adds
    ``d["image_covered"]`` (grid voxels backed by acquired data: sparse slices only cover
    the planes within ``max_thickness / 2`` of them).
``MapToNativeGridd``
    maps ``d["labels"]`` (lesion ids on the grid) back onto the native voxel grid, nearest
    neighbour (``ResampleToModelGridd.inverse`` does the same from the trace record).

World coordinates are RAS+ mm throughout; ITK's LPS+ appears only inside the SimpleITK
conversions (:func:`affine_to_sitk`, :func:`sitk_to_affine`).
"""

from medsi.transforms.spatial.array import (
    GEOMETRY_KEYS,
    MapToNativeGrid,
    RegisterToTemplate,
    ResampleToModelGrid,
)
from medsi.transforms.spatial.dictionary import (
    MapToNativeGridd,
    RegisterToTemplated,
    ResampleToModelGridd,
)
from medsi.transforms.spatial.functional import (
    RAS_FROM_LPS,
    ModelGrid,
    Registration,
    RegistrationConfig,
    affine_to_sitk,
    default_model_grid,
    grid_coverage,
    grid_to_native,
    identity_registration,
    load_template,
    register_affine,
    resample_to_grid,
    sitk_to_affine,
    slice_geometry,
    split_shear,
)

__all__ = [
    "RegisterToTemplated",
    "ResampleToModelGridd",
    "MapToNativeGridd",
    "RegisterToTemplate",
    "ResampleToModelGrid",
    "MapToNativeGrid",
    "GEOMETRY_KEYS",
    "ModelGrid",
    "default_model_grid",
    "Registration",
    "RegistrationConfig",
    "register_affine",
    "identity_registration",
    "resample_to_grid",
    "grid_coverage",
    "grid_to_native",
    "slice_geometry",
    "affine_to_sitk",
    "sitk_to_affine",
    "split_shear",
    "load_template",
    "RAS_FROM_LPS",
]
