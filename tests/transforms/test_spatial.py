import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from scipy import ndimage

import medsi.assets
from medsi.errors import ConfigError, InputDataError
from medsi.transforms.spatial import (
    GEOMETRY_KEYS,
    MapToNativeGrid,
    MapToNativeGridd,
    ModelGrid,
    RegisterToTemplate,
    RegisterToTemplated,
    Registration,
    RegistrationConfig,
    ResampleToModelGrid,
    ResampleToModelGridd,
    affine_to_sitk,
    default_model_grid,
    grid_to_native,
    identity_registration,
    register_affine,
    resample_to_grid,
    sitk_to_affine,
    slice_geometry,
    split_shear,
)

ATLAS = Path(medsi.assets.__file__).parent / "atlas"
T1_FILE = ATLAS / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
BRAIN_CENTRE = (0.0, -17.0, 5.0)  # roughly the template brain's centre, RAS mm


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def template():
    image = nib.load(T1_FILE)
    t1 = np.asarray(image.dataobj, dtype=np.float32)
    return {"t1": t1, "brain": t1 > 0, "affine": image.affine.astype(np.float64), "smooth": {}}


@pytest.fixture(scope="module")
def grid():
    return default_model_grid()


def rotation(angles_deg) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    out = np.eye(3)
    for axis, angle in enumerate(angles_deg):
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        r = np.eye(3)
        i, j = [a for a in range(3) if a != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def known_map(angles=(0, 0, 0), shift=(0, 0, 0), scale=(1, 1, 1)) -> np.ndarray:
    """Template world -> scan world: scale and rotate about the brain centre, then shift."""
    linear = rotation(angles) @ np.diag(scale)
    centre = np.array(BRAIN_CENTRE)
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre - linear @ centre + np.array(shift, dtype=float)
    return out


def scan_affine(spacing, shape, order=(0, 1, 2), signs=(1, 1, 1), angles=(0, 0, 0)):
    """Voxel axis a runs along world axis order[a] with sign signs[a]; centred on the brain."""
    linear = np.zeros((3, 3))
    for a in range(3):
        linear[order[a], a] = signs[a] * spacing[a]
    linear = rotation(angles) @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.array(BRAIN_CENTRE) - linear @ ((np.array(shape) - 1) / 2.0)
    return affine


def make_scan(template, matrix, affine, shape, contrast="t1") -> np.ndarray:
    """The template seen by a scanner: scan voxel -> scan world -> template, interpolated."""
    spacing = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    sigma = round(max(0.0, (spacing - 1.0) / 2.0), 2)
    key = (contrast, sigma)
    if key not in template["smooth"]:
        volume = template["t1"]
        if contrast == "t2":  # CSF bright, white matter dark, background 0
            volume = np.where(template["brain"], 300.0 - volume, 0.0).astype(np.float32)
        template["smooth"][key] = ndimage.gaussian_filter(volume, sigma) if sigma else volume
    to_template = np.linalg.inv(template["affine"]) @ np.linalg.inv(matrix) @ affine
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    coords = to_template[:3, :3] @ index + to_template[:3, 3:4]
    values = ndimage.map_coordinates(template["smooth"][key], coords, order=1, cval=0.0)
    return values.reshape(shape).astype(np.float32)


def mean_point_error(template, a: np.ndarray, b: np.ndarray, n: int = 3000) -> float:
    """Mean distance (mm) between where a and b send template brain points."""
    points = np.argwhere(template["brain"])
    points = points[np.random.default_rng(0).choice(len(points), n, replace=False)]
    world = np.c_[points @ template["affine"][:3, :3].T + template["affine"][:3, 3], np.ones(n)]
    return float(np.linalg.norm((world @ a.T - world @ b.T)[:, :3], axis=1).mean())


def as_metatensor(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array[None])),
        affine=torch.as_tensor(affine, dtype=torch.float64),
        meta={"notes": ["loaded"]},
    )


def registration_of(matrix: np.ndarray) -> Registration:
    return Registration(matrix, "affine-mi", -1.0, True, "known", 0.0)


# ----------------------------------------------------------------------------- geometry

AFFINES = {
    "ras-1mm": scan_affine((1, 1, 1), (5, 6, 7)),
    "lps": scan_affine((1.5, 1.5, 3), (5, 6, 7), signs=(-1, -1, 1)),
    "pir": scan_affine((0.9, 1.2, 2.5), (5, 6, 7), order=(1, 2, 0), signs=(-1, -1, 1)),
    "oblique": scan_affine((0.8, 1.1, 4.0), (5, 6, 7), signs=(1, -1, 1), angles=(12, -7, 25)),
}


@pytest.mark.parametrize("affine", AFFINES.values(), ids=AFFINES.keys())
def test_sitk_round_trip_and_lps(affine, tmp_path):
    array = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    image = affine_to_sitk(array, affine)
    back, back_affine = sitk_to_affine(image)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)
    # ITK's physical space is LPS: the point of voxel (1, 2, 3) has x and y negated.
    expected = (FLIP @ affine @ [1, 2, 3, 1])[:3]
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((1, 2, 3)), expected)
    # Independent check: ITK's own NIfTI reader agrees on geometry and voxel order.
    path = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(array, affine), path)
    read = sitk.ReadImage(str(path))
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_affine_to_sitk_refuses_shear_and_split_shear_restores_it():
    sheared = np.array([[2.0, 0, 30, -123], [0, 2, 30, -102], [0, 0, 32, -38], [0, 0, 0, 1]])
    with pytest.raises(ConfigError, match="orthogonal columns"):
        affine_to_sitk(np.zeros((2, 2, 2)), sheared)
    orthogonal, correction = split_shear(sheared)
    np.testing.assert_allclose(correction @ orthogonal, sheared, atol=1e-9)
    columns = orthogonal[:3, :3] / np.linalg.norm(orthogonal[:3, :3], axis=0)
    np.testing.assert_allclose(columns.T @ columns, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(orthogonal[:3, 3], sheared[:3, 3])
    affine_to_sitk(np.zeros((2, 2, 2)), orthogonal)  # now representable
    _, identity = split_shear(AFFINES["oblique"])
    np.testing.assert_allclose(identity, np.eye(4), atol=1e-9)


@pytest.mark.parametrize(
    "affine, axis, gaps",
    [
        (np.diag([2.0, 2.0, 53.0, 1.0]), 2, (2.0, 2.0, 53.0)),
        (scan_affine((5.0, 1.0, 1.0), (4, 4, 4), order=(2, 0, 1)), 0, (5.0, 1.0, 1.0)),
        (np.diag([1.0, 1.0, 1.0, 1.0]), 2, (1.0, 1.0, 1.0)),
        (
            np.array([[2.0, 0, 30, 0], [0, 2, 30, 0], [0, 0, 32, 0], [0, 0, 0, 1]]),
            2,
            # planes i = const are spanned by (0,2,0) and (30,30,32): 128 / |cross|
            (128 / math.hypot(64, 60), 128 / math.hypot(64, 60), 32.0),
        ),
    ],
    ids=["sparse-z", "thick-first-axis", "isotropic-ties-last", "sheared-perpendicular"],
)
def test_slice_geometry(affine, axis, gaps):
    found_axis, found_gaps = slice_geometry(affine)
    assert found_axis == axis
    np.testing.assert_allclose(found_gaps, gaps, atol=1e-9)


@pytest.mark.parametrize(
    "affine, match",
    [
        (np.diag([1.0, 0.0, 1.0, 1.0]), "invertible"),
        (np.eye(3), "finite \\(4, 4\\)"),
        (np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]), "last row"),
    ],
    ids=["singular", "not-4x4", "bad-last-row"],
)
def test_bad_affine_raises(grid, affine, match):
    with pytest.raises(InputDataError, match=match):
        resample_to_grid(np.zeros((3, 3, 3)), affine, np.eye(4), grid)


# ----------------------------------------------------------------------------- model grid


def test_default_model_grid(grid, template):
    assert default_model_grid() is grid  # cached
    assert grid.shape == (64, 64, 78)
    assert grid.plane_spacing == 2.0
    np.testing.assert_allclose(grid.plane_z[[0, -1]], [-72.0, 82.0])
    affine = grid.affine
    np.testing.assert_allclose(np.diag(affine)[:3], grid.spacing)
    np.testing.assert_allclose(affine[:3, 3], grid.origin)
    mask = grid.brain_mask()
    assert mask.shape == grid.shape and mask.dtype == bool and not mask.flags.writeable
    # The square holds the whole brain with a margin: no brain on the in-plane border.
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert mask.any(axis=(0, 1)).all()  # every plane holds brain
    # The grid's brain mask covers about the template's brain volume (1 mm voxels).
    volume = mask.sum() * np.prod(grid.spacing)
    assert abs(volume / template["brain"].sum() - 1.0) < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, '"size" must be a positive int'),
        ({"plane_spacing": -1.0}, '"plane_spacing" must be a finite positive'),
        ({"margin": float("nan")}, '"margin" must be a finite number'),
    ],
    ids=["size", "plane-spacing", "margin"],
)
def test_default_model_grid_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        default_model_grid(**kwargs)


def test_model_grid_rejects_bad_fields():
    with pytest.raises(ConfigError, match='"pixel_spacing" must be a finite positive'):
        ModelGrid(64, 10, 0.0, 2.0, (0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match='"origin" must be three finite'):
        ModelGrid(64, 10, 3.0, 2.0, (0.0, 0.0))


# ----------------------------------------------------------------------------- registration

REGISTRATION_CASES = {
    "shift": (known_map(shift=(7, -5, 4)), (3, 3, 3), (66, 78, 63), (0, 1, 2), (1, 1, 1), "t1"),
    "rotation-8deg": (
        known_map(angles=(8, -4, 5), shift=(3, 2, -2)),
        (3, 3, 3),
        (66, 78, 63),
        (0, 1, 2),
        (1, 1, 1),
        "t1",
    ),
    "t2-contrast-lps-anisotropic": (
        known_map(angles=(0, 3, 6), shift=(-4, 3, 2), scale=(1.06, 0.95, 1.0)),
        (2.5, 2.5, 3.5),
        (94, 80, 54),
        (1, 0, 2),
        (-1, -1, 1),
        "t2",
    ),
}


@pytest.mark.parametrize("case", REGISTRATION_CASES.values(), ids=REGISTRATION_CASES.keys())
def test_registration_recovers_known_affine(template, case):
    truth, spacing, shape, order, signs, contrast = case
    affine = scan_affine(spacing, shape, order=order, signs=signs)
    scan = make_scan(template, truth, affine, shape, contrast)
    result = register_affine(scan, affine)
    assert result.method == "affine-mi"
    assert result.passed, result.reason
    assert mean_point_error(template, result.matrix, truth) < 2.0
    np.testing.assert_allclose(
        sorted(result.scales), sorted(np.linalg.svd(truth[:3, :3])[1]), atol=0.03
    )
    assert result.metric < -0.5 and result.overlap > 0.95 and result.seconds > 0
    assert "passed" in result.describe() and "Mattes MI" in result.describe()


def test_registration_is_reproducible_and_handles_sheared_affines(template):
    truth = known_map(angles=(0, 0, 5), shift=(2, -3, 1))
    affine = scan_affine((3, 3, 3), (66, 78, 63))
    scan = make_scan(template, truth, affine, (66, 78, 63))
    first = register_affine(scan, affine)
    second = register_affine(scan, affine)
    np.testing.assert_array_equal(first.matrix, second.matrix)  # bit for bit (one thread)
    # Declare a shear in the header but keep the voxels: the registration must follow the
    # header exactly (the matrix absorbs the shear).
    shear = np.eye(4)
    shear[0, 2] = 0.3
    sheared_affine = shear @ affine
    sheared = register_affine(scan, sheared_affine)
    assert mean_point_error(template, sheared.matrix, shear @ first.matrix) < 0.5


@pytest.mark.parametrize(
    "kind, match",
    [
        ("noise", "Mattes metric .* is above"),
        ("constant", "too little foreground"),
        ("empty", "too little foreground"),
        ("scaled-1.6", "principal scales .* leave 0.7..1.4"),
    ],
    ids=["noise", "constant", "empty", "scaled-1.6"],
)
def test_registration_quality_check_fails(template, kind, match):
    rng = np.random.default_rng(3)
    config = RegistrationConfig(iterations=40)
    if kind == "scaled-1.6":
        affine = scan_affine((4, 4, 4), (80, 90, 80))
        scan = make_scan(template, known_map(scale=(1.6, 1.6, 1.6)), affine, (80, 90, 80))
        config = RegistrationConfig()
    else:
        affine = scan_affine((5, 5, 5), (40, 47, 38))
        scan = {
            "noise": rng.random((40, 47, 38)),
            "constant": np.full((40, 47, 38), 7.0),
            "empty": np.zeros((40, 47, 38)),
        }[kind].astype(np.float32)
    result = register_affine(scan, affine, config=config)
    assert not result.passed
    assert re.search(match, result.reason), result.reason
    assert "FAILED" in result.describe()


def test_identity_registration():
    image = as_metatensor(np.zeros((4, 5, 6), np.float32), np.eye(4))
    result = RegisterToTemplate(registered=True)(image)
    assert result.method == "identity" and result.passed
    np.testing.assert_array_equal(result.matrix, np.eye(4))
    assert result.describe().startswith("no registration")
    assert identity_registration("BraTS").reason == "BraTS"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"levels": ()}, '"levels" must be one or more'),
        ({"sampling": 0.0}, '"sampling" is out of range'),
        ({"seed": 0}, '"seed" is out of range'),
        ({"scale_range": (1.2, 1.4)}, '"scale_range" is out of range'),
    ],
    ids=["levels", "sampling", "seed", "scale-range"],
)
def test_registration_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RegistrationConfig(**kwargs)


def test_registration_result_checks_its_fields():
    with pytest.raises(ConfigError, match='"method" must be "affine-mi" or "identity"'):
        Registration(np.eye(4), "rigid", 0.0, True, "", 0.0)
    with pytest.raises(InputDataError, match='"matrix" must have an invertible'):
        Registration(np.diag([1.0, 1.0, 0.0, 1.0]), "identity", 0.0, True, "", 0.0)
    with pytest.raises(TypeError, match='"config" must be a RegistrationConfig'):
        RegisterToTemplate(config={"levels": (6.0,)})


# ----------------------------------------------------------------------------- resampling


def test_template_resampled_onto_grid_is_the_grid_template(template, grid):
    image, valid, covered = resample_to_grid(template["t1"], template["affine"], np.eye(4), grid)
    assert image.shape == valid.shape == covered.shape == grid.shape
    assert image.dtype == np.float32 and covered.all() and valid.all()
    np.testing.assert_array_equal(image, grid.template_t1())
    # The grid samples the template where its affine says: compare with the template
    # blurred the same way and read at the world points of a few grid voxels.
    sigma = [(grid.pixel_spacing**2 - 1) ** 0.5 / 2.3548] * 2 + [(4 - 1) ** 0.5 / 2.3548]
    blurred = ndimage.gaussian_filter(template["t1"], sigma, mode="nearest")
    voxels = np.array([[32, 32, 40], [20, 45, 30], [50, 15, 60]])
    world = voxels @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    index = (world - template["affine"][:3, 3]) @ np.linalg.inv(template["affine"][:3, :3]).T
    expected = ndimage.map_coordinates(blurred, index.T, order=1)
    np.testing.assert_allclose(image[tuple(voxels.T)], expected, rtol=1e-4, atol=1e-3)


GRID_CASES = {
    "rotated-3mm": (
        known_map(angles=(6, -3, 9), shift=(4, -6, 3)),
        (3, 3, 3),
        (0, 1, 2),
        (1, 1, 1),
    ),
    "pir-anisotropic": (known_map(angles=(0, 5, 0)), (2.5, 3.0, 2.0), (1, 2, 0), (-1, -1, 1)),
    "lps-thick-2.8mm": (known_map(shift=(2, 2, -3)), (1.5, 1.5, 2.8), (0, 1, 2), (-1, -1, 1)),
}


@pytest.mark.parametrize("case", GRID_CASES.values(), ids=GRID_CASES.keys())
def test_scan_resampled_with_known_matrix_matches_grid_template(template, grid, case):
    truth, spacing, order, signs = case
    extent = np.array([200.0, 235.0, 190.0])[list(order)]
    shape = tuple(int(n) for n in np.ceil(extent / np.array(spacing)))
    affine = scan_affine(spacing, shape, order=order, signs=signs)
    scan = make_scan(template, truth, affine, shape)
    image, _, covered = resample_to_grid(scan, affine, truth, grid)
    brain = grid.brain_mask()
    assert covered[brain].mean() > 0.99
    r = np.corrcoef(image[brain], grid.template_t1()[brain])[0, 1]
    assert r > 0.95
    # A wrong matrix (identity instead of the truth) must do visibly worse.
    wrong, _, _ = resample_to_grid(scan, affine, np.eye(4), grid)
    assert np.corrcoef(wrong[brain], grid.template_t1()[brain])[0, 1] < r - 0.02


def sparse_affine(gap: float = 53.0) -> np.ndarray:
    affine = np.diag([2.0, 2.0, gap, 1.0])
    affine[:3, 3] = (-127.0, -145.0, -65.3)
    return affine


def test_sparse_slices_cover_only_nearby_planes(grid):
    affine = sparse_affine()
    shape = (128, 128, 10)
    # Each slice holds one value (its number): any interpolation across the gap would mix.
    scan = np.broadcast_to(np.arange(1, 11, dtype=np.float32), shape).copy()
    image, valid, covered = resample_to_grid(scan, affine, np.eye(4), grid)
    slice_z = affine[2, 3] + affine[2, 2] * np.arange(10)
    distance = np.abs(grid.plane_z[:, None] - slice_z[None, :])
    expected_planes = distance.min(axis=1) <= 1.5 + 1e-9
    np.testing.assert_array_equal(covered.any(axis=(0, 1)), expected_planes)
    assert 2 <= expected_planes.sum() <= 8  # a handful of planes, not the 78
    for k in np.flatnonzero(expected_planes):
        nearest = int(np.argmin(distance[k])) + 1
        np.testing.assert_allclose(image[:, :, k][covered[:, :, k]], nearest, rtol=1e-6)
    assert not image[:, :, ~expected_planes].any()
    assert (valid == covered).all()
    # The transform notes say the slices are sparse.
    out, _, _ = ResampleToModelGrid(grid)(as_metatensor(scan, affine), identity_registration())
    assert "sparse slices (53.0 mm apart" in out.meta["notes"][-1]


def test_sheared_sparse_scan_uses_perpendicular_gap(grid):
    # Like the bundled example: columns (2,0,0), (0,2,0), (30,30,32): slices 32 mm apart.
    affine = np.array([[2.0, 0, 30, -123.4], [0, 2, 30, -102.9], [0, 0, 32, -38.8], [0, 0, 0, 1]])
    covered = resample_to_grid(np.ones((128, 128, 10), np.float32), affine, np.eye(4), grid)[2]
    slice_z = affine[2, 3] + 32.0 * np.arange(10)
    near = np.abs(grid.plane_z[:, None] - slice_z[None, :]).min(axis=1) <= 1.5 + 1e-9
    np.testing.assert_array_equal(covered.any(axis=(0, 1)), near)


@pytest.mark.parametrize(
    "gap, all_covered",
    [(2.9, True), (4.0, False)],
    ids=["3mm-cap-dense", "above-cap-sparse"],
)
def test_thickness_cap_switches_between_dense_and_sparse(grid, gap, all_covered):
    affine = np.diag([2.0, 2.0, gap, 1.0])
    affine[:3, 3] = (-110.0, -130.0, -80.0)
    shape = (110, 120, int(200 / gap))
    covered = resample_to_grid(np.ones(shape, np.float32), affine, np.eye(4), grid)[2]
    assert covered.all() == all_covered
    assert covered.mean() > 0.4


def test_valid_mask_propagates(grid, template):
    affine = scan_affine((3, 3, 3), (66, 78, 63))
    scan = make_scan(template, np.eye(4), affine, (66, 78, 63))
    valid = np.ones(scan.shape, dtype=bool)
    valid[30:36, 35:41, 28:34] = False
    scan[~valid] = np.nan
    image, grid_valid, covered = resample_to_grid(scan, affine, np.eye(4), grid, valid=valid)
    assert np.isfinite(image).all()
    centre = np.linalg.inv(grid.affine) @ affine @ [33, 38, 31, 1]
    i, j, k = np.rint(centre[:3]).astype(int)
    assert covered[i, j, k] and not grid_valid[i, j, k]
    assert grid_valid[covered].mean() > 0.95
    assert not (grid_valid & ~covered).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"order": 3}, '"order" must be 0'),
        ({"max_thickness": 1.0}, '"max_thickness" must be a number of mm >='),
        ({"valid": np.ones((2, 2, 2), bool)}, '"valid" must have the spatial shape'),
    ],
    ids=["order", "max-thickness", "valid-shape"],
)
def test_resample_rejects_bad_arguments(grid, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        resample_to_grid(np.zeros((3, 3, 3)), np.eye(4), np.eye(4), grid, **kwargs)


def test_resample_rejects_non_grid():
    with pytest.raises(TypeError, match='"grid" must be a ModelGrid'):
        resample_to_grid(np.zeros((3, 3, 3)), np.eye(4), np.eye(4), (64, 64, 78))


# ----------------------------------------------------------------------------- inverse mapping

BLOB_CASES = {
    "rotated-2mm": (scan_affine((2, 2, 2), (60, 60, 50)), known_map((10, 5, -8), (3, -2, 5))),
    "anisotropic-1x1x3": (scan_affine((1, 1, 3), (90, 90, 40)), known_map((0, 8, 0))),
    "sparse-1x1x4": (scan_affine((1, 1, 4), (90, 90, 30)), known_map(shift=(0, 0, 1.3))),
    "pir-flipped": (
        scan_affine((2.5, 3, 2), (50, 50, 50), order=(1, 2, 0), signs=(-1, 1, -1)),
        known_map((3, -6, 4), (2, 2, 2)),
    ),
    "lps-oblique-fine": (
        scan_affine((0.9, 0.9, 1.2), (110, 110, 90), signs=(-1, -1, 1), angles=(15, 0, -10)),
        known_map(scale=(1.1, 0.95, 1.0)),
    ),
}


@pytest.mark.parametrize("case", BLOB_CASES.values(), ids=BLOB_CASES.keys())
def test_blob_goes_to_grid_and_back(grid, case):
    affine, matrix = case
    # Recover the shape from the centring used by scan_affine.
    centre_index = np.linalg.solve(affine[:3, :3], np.array(BRAIN_CENTRE) - affine[:3, 3])
    shape = tuple(int(round(2 * c + 1)) for c in centre_index)
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ index + affine[:3, 3:4]
    blob = np.linalg.norm(world - np.array([[12.0], [-25.0], [18.0]]), axis=0) <= 15.0
    blob = blob.reshape(shape)
    image, _, covered = resample_to_grid(blob.astype(np.float32), affine, matrix, grid)
    labels = (image >= 0.5).astype(np.int32) * 3
    back = grid_to_native(labels, grid, matrix, affine, shape, covered=covered)
    assert back.shape == shape and back.dtype == np.int32
    assert set(np.unique(back)) == {0, 3}
    found = back > 0
    dice = 2 * (found & blob).sum() / (found.sum() + blob.sum())
    assert dice > 0.8
    centroid_error = np.linalg.norm(np.argwhere(found).mean(0) - np.argwhere(blob).mean(0))
    assert centroid_error < 1.0


def test_grid_to_native_zero_outside_grid_and_coverage(grid):
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-150.0, -150.0, -150.0)  # reaches beyond the grid on every side
    shape = (76, 76, 76)
    labels = np.ones(grid.shape, dtype=np.int16)
    back = grid_to_native(labels, grid, np.eye(4), affine, shape)
    assert back[0, 0, 0] == 0 and back[38, 34, 39] == 1
    inside = back.astype(bool)
    # Native voxels labelled 1 lie inside the grid's box.
    index = np.argwhere(inside)
    world = index * 4.0 - 150.0
    low = np.array(grid.origin) - np.array(grid.spacing) / 2
    high = low + np.array(grid.shape) * np.array(grid.spacing)
    assert (world >= low - 1e-6).all() and (world <= high + 1e-6).all()
    none = grid_to_native(labels, grid, np.eye(4), affine, shape, covered=np.zeros(grid.shape))
    assert not none.any()
    with pytest.raises(ConfigError, match='"labels" must have the model grid'):
        grid_to_native(np.ones((3, 3, 3)), grid, np.eye(4), affine, shape)


# ----------------------------------------------------------------------------- transforms


@pytest.fixture(scope="module")
def small_scan(template):
    truth = known_map(angles=(0, 0, 4), shift=(3, -2, 2))
    affine = scan_affine((4, 4, 4), (50, 59, 48), signs=(-1, 1, 1))
    scan = make_scan(template, truth, affine, (50, 59, 48))
    valid = np.ones(scan.shape, dtype=bool)
    valid[:, :, :2] = False
    return {"array": scan, "valid": valid, "affine": affine, "truth": truth}


def scan_dict(small_scan) -> dict:
    return {
        "image": as_metatensor(small_scan["array"], small_scan["affine"]),
        "image_valid": as_metatensor(small_scan["valid"], small_scan["affine"]),
        "subject": "s01",
    }


def test_dictionary_pipeline_and_way_back(grid, small_scan):
    pipeline = Compose([RegisterToTemplated(), ResampleToModelGridd()])
    data = scan_dict(small_scan)
    d = pipeline(data)
    assert set(d) == {"image", "image_valid", "image_covered", "registration", "subject"}
    assert d["subject"] == "s01" and data["image"].shape == (1, 50, 59, 48)  # input untouched
    registration = d["registration"]
    assert registration.passed, registration.reason
    assert registration.method == "affine-mi"
    for key in ("image", "image_valid", "image_covered"):
        assert tuple(d[key].shape) == (1, *grid.shape)
        np.testing.assert_allclose(d[key].affine.numpy(), grid.affine)
    assert d["image"].dtype == torch.float32 and d["image_valid"].dtype == torch.bool
    notes = d["image"].meta["notes"]
    assert notes[0] == "loaded"
    assert notes[1].startswith("registered the template to the scan (affine, Mattes MI")
    assert notes[2].startswith("resampled onto the 64 x 64 x 78 model grid")
    assert all(key in d["image"].meta for key in GEOMETRY_KEYS)
    assert not d["image_valid"][d["image_covered"] == 0].any()

    # Lesion labels on the grid -> native grid, by meta (MapToNativeGridd) ...
    labels = (d["image"] > 150).to(torch.int32)
    d["labels"] = labels
    native = MapToNativeGridd()(d)["labels"]
    assert tuple(native.shape) == (1, 50, 59, 48) and native.dtype == torch.int32
    np.testing.assert_allclose(native.affine.numpy(), small_scan["affine"])
    bright = small_scan["array"] > 150
    found = native.numpy()[0] > 0
    assert 2 * (found & bright).sum() / (found.sum() + bright.sum()) > 0.7
    # ... and by the trace record, as MONAI's Invertd does it.
    d["pred"] = labels
    inverted = Invertd(keys="pred", transform=pipeline, orig_keys="image")(d)["pred"]
    np.testing.assert_array_equal(inverted.numpy(), native.numpy())
    np.testing.assert_allclose(inverted.affine.numpy(), small_scan["affine"])


def test_resample_replays_identically(small_scan):
    d = scan_dict(small_scan)
    d["registration"] = registration_of(small_scan["truth"])
    transform = ResampleToModelGridd()
    first, second = transform(d), transform(d)
    for key in ("image", "image_valid", "image_covered"):
        np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())


def test_nearest_mode_keeps_labels(grid, small_scan):
    labels = np.zeros(small_scan["array"].shape, dtype=np.int64)
    labels[20:30, 25:35, 20:30] = 5
    d = {
        "mask": as_metatensor(labels, small_scan["affine"]),
        "registration": registration_of(small_scan["truth"]),
    }
    out = ResampleToModelGridd(keys="mask", valid_keys=None, covered_keys=None, mode="nearest")(d)
    assert set(out) == {"mask", "registration"}
    assert out["mask"].dtype == torch.int64
    assert set(np.unique(out["mask"].numpy())) == {0, 5}


MISSING = {
    "register-image": (RegisterToTemplated(), "image"),
    "register-valid": (RegisterToTemplated(), "image_valid"),
    "resample-image": (ResampleToModelGridd(), "image"),
    "resample-registration": (ResampleToModelGridd(), "registration"),
    "resample-valid": (ResampleToModelGridd(), "image_valid"),
    "map-labels": (MapToNativeGridd(), "labels"),
    "map-reference": (MapToNativeGridd(), "image"),
}


@pytest.mark.parametrize("transform, missing", MISSING.values(), ids=MISSING.keys())
def test_missing_key_raises_naming_key_and_transform(small_scan, transform, missing):
    d = scan_dict(small_scan)
    d["registration"] = identity_registration()
    d["labels"] = torch.zeros(1, 64, 64, 78, dtype=torch.int32)
    del d[missing]
    name = type(transform).__name__
    with pytest.raises(KeyError, match=f"Key `{missing}` of transform `{name}`"):
        transform(d)


def test_allow_missing_keys_passes_through(small_scan):
    d = {"other": 1}
    for transform in (
        RegisterToTemplated(allow_missing_keys=True),
        ResampleToModelGridd(allow_missing_keys=True),
        MapToNativeGridd(allow_missing_keys=True),
    ):
        assert transform(d) == {"other": 1}
    # A missing valid mask counts as all valid.
    d = scan_dict(small_scan)
    del d["image_valid"]
    d["registration"] = registration_of(small_scan["truth"])
    out = ResampleToModelGridd(allow_missing_keys=True)(d)
    assert "image_valid" not in out
    assert (out["image_covered"] == 1).any()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: RegisterToTemplated(keys=("a", "b"), valid_keys=None),
            ConfigError,
            '"registration_keys"',
        ),
        (lambda: ResampleToModelGridd(covered_keys="image"), ConfigError, '"covered_keys"'),
        (
            lambda: ResampleToModelGridd(valid_keys="m", covered_keys="m"),
            ConfigError,
            "must not share a key",
        ),
        (lambda: ResampleToModelGridd(mode="cubic"), ConfigError, '"mode" must be one of'),
        (lambda: ResampleToModelGrid(grid="64"), TypeError, '"grid" must be a ModelGrid'),
        (lambda: MapToNativeGridd(reference_keys=("a", "b")), ConfigError, '"reference_keys"'),
    ],
    ids=["registration-keys", "covered-is-key", "shared", "mode", "grid-type", "references"],
)
def test_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_array_transforms_check_their_inputs(grid, small_scan):
    image = as_metatensor(small_scan["array"], small_scan["affine"])
    with pytest.raises(TypeError, match='"image" must be a monai.data.MetaTensor'):
        RegisterToTemplate(registered=True)(small_scan["array"])
    with pytest.raises(ConfigError, match="must be channel-first"):
        RegisterToTemplate(registered=True)(MetaTensor(torch.zeros(2, 3, 3, 3)))
    with pytest.raises(TypeError, match='"registration" must be a Registration'):
        ResampleToModelGrid(grid)(image, np.eye(4))
    with pytest.raises(ConfigError, match='"valid" must have the spatial shape'):
        ResampleToModelGrid(grid)(image, identity_registration(), torch.ones(1, 2, 2, 2))
    with pytest.raises(InputDataError, match="missing"):
        MapToNativeGrid()(torch.zeros(1, *grid.shape), MetaTensor(torch.zeros(1, *grid.shape)))
    with pytest.raises(TypeError, match='"reference" must be the model-grid MetaTensor'):
        MapToNativeGrid()(torch.zeros(1, *grid.shape), np.zeros(grid.shape))


def test_failed_registration_resamples_with_the_initial_alignment(grid):
    image = as_metatensor(np.random.default_rng(0).random((40, 47, 38), np.float32), np.eye(4))
    failed = Registration(
        known_map(scale=(2, 2, 2)), "affine-mi", -0.01, False, "bad", 1.0, initial=np.eye(4)
    )
    assert failed.resampling_matrix is failed.initial
    out, _, _ = ResampleToModelGrid(grid)(image, failed)
    np.testing.assert_array_equal(out.meta["registration_matrix"], np.eye(4))
    assert "centre-of-mass alignment" in out.meta["notes"][-1]
    assert out.meta["notes"][-2].endswith("FAILED: bad)")
    passed = registration_of(known_map(shift=(1, 2, 3)))
    assert passed.resampling_matrix is passed.matrix
