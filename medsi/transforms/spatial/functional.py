"""Pure functions of the spatial pipeline: geometry, registration, model grid, resampling.

Conventions (DESIGN.md §4)
--------------------------
World points
    RAS+ millimetres (nibabel, MONAI). ITK/SimpleITK use LPS+; :func:`affine_to_sitk` and
    :func:`sitk_to_affine` convert (x and y change sign, :data:`RAS_FROM_LPS`).
Affines
    (4, 4) float64, 0-based voxel index (array axis order, voxel centre) -> world point.
Registration matrix
    :attr:`Registration.matrix` maps TEMPLATE world points to SCAN world points. The model
    grid lives in template space; a grid voxel ``g`` reads the scan at voxel
    ``inv(scan_affine) @ matrix @ grid.affine @ g`` and a native voxel ``v`` maps back to grid
    voxel ``inv(grid.affine) @ inv(matrix) @ scan_affine @ v``.
Coverage
    Grid voxels inside the scan's field of view and within half an (assumed) slice thickness
    of an acquired slice; the thickness is capped at ``max_thickness`` (1.5 x the plane
    spacing), so sparse acquisitions are never interpolated across their gaps
    (:func:`resample_to_grid`).
"""

from medsi.transforms.spatial._geometry import (
    RAS_FROM_LPS,
    TEMPLATE_DIR,
    affine_to_sitk,
    check_affine,
    load_template,
    sitk_to_affine,
    split_shear,
)
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

__all__ = [
    "RAS_FROM_LPS",
    "TEMPLATE_DIR",
    "affine_to_sitk",
    "sitk_to_affine",
    "split_shear",
    "check_affine",
    "load_template",
    "ModelGrid",
    "default_model_grid",
    "slice_geometry",
    "resample_to_grid",
    "grid_coverage",
    "grid_to_native",
    "Registration",
    "RegistrationConfig",
    "register_affine",
    "identity_registration",
]
