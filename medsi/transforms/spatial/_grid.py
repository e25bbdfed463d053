"""The model grid, resampling a scan onto it, and mapping label maps back to the scan.

Conventions (DESIGN.md §4)
--------------------------
- World points are RAS+ mm; an affine maps a 0-based voxel index to the world point of the
  voxel centre.
- A registration ``matrix`` maps TEMPLATE world points to SCAN world points (4 x 4). The
  model grid lives in template space, so a model-grid voxel ``g`` is read from the scan at
  voxel ``inv(scan_affine) @ matrix @ grid.affine @ g``.
- Slice axis and coverage: see :func:`resample_to_grid`.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from medsi.errors import ConfigError
from medsi.transforms.spatial._geometry import check_affine, load_template

__all__ = [
    "ModelGrid",
    "default_model_grid",
    "slice_geometry",
    "resample_to_grid",
    "grid_coverage",
    "grid_to_native",
]

# FWHM of a Gaussian is this many sigmas.
_FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))
# A grid voxel is valid when less than this share of its interpolation weight comes from
# invalid (non-finite) scan voxels.
_INVALID_WEIGHT = 1e-3
# Slack, in voxels, for points that fall on the boundary of the field of view.
_EDGE_SLACK = 1e-6
# Native voxels handled at once by grid_to_native (bounds its memory to ~100 MB).
_CHUNK_VOXELS = 2_000_000


@dataclass(frozen=True)
class ModelGrid:
    """A fixed 3-D grid in template space on which the model works.

    Axes are RAS: index ``i`` runs along x (to the Right), ``j`` along y (to Anterior) and
    ``k`` along z (to Superior); each axial plane ``k`` is a ``size`` x ``size`` image. The
    plane index ``k`` is the *slice position* a reference bank is indexed by.

    Parameters
    ----------
    size
        In-plane pixels along x and along y.
    n_planes
        Number of axial planes.
    pixel_spacing
        In-plane pixel size, mm (the same along x and y).
    plane_spacing
        Distance between planes, mm.
    origin
        World point (RAS+ mm, template space) of the centre of voxel (0, 0, 0).

    Raises
    ------
    ConfigError
        If a size is below 1 or a spacing or origin is not a finite positive (origin: finite)
        number.
    """

    size: int
    n_planes: int
    pixel_spacing: float
    plane_spacing: float
    origin: tuple[float, float, float]

    def __post_init__(self) -> None:
        for name in ("size", "n_planes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(
                    f'"{name}" must be a positive int, got {value!r}; pass e.g. 64 pixels or '
                    "78 planes."
                )
        for name in ("pixel_spacing", "plane_spacing"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise ConfigError(
                    f'"{name}" must be a finite positive number of mm, got {value!r}; pass '
                    "e.g. 2.0."
                )
        if len(self.origin) != 3 or not np.all(np.isfinite(self.origin)):
            raise ConfigError(
                f'"origin" must be three finite RAS+ coordinates in mm, got {self.origin!r}; '
                "pass e.g. (-92.0, -111.0, -72.0)."
            )
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "n_planes", int(self.n_planes))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(size, size, n_planes): the spatial shape of a model-grid volume."""
        return (self.size, self.size, self.n_planes)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (x, y, z), mm."""
        return (float(self.pixel_spacing), float(self.pixel_spacing), float(self.plane_spacing))

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) float64 voxel-to-world matrix into template RAS+ space (a new array)."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    @property
    def plane_z(self) -> np.ndarray:
        """(n_planes,) template z coordinate (mm) of every plane."""
        return self.origin[2] + self.plane_spacing * np.arange(self.n_planes)

    def brain_mask(self) -> np.ndarray:
        """The template brain mask (``t1 > 0``) on this grid.

        Returns
        -------
        numpy.ndarray
            ``shape``, bool, read-only: True where the anti-aliased, linearly resampled mask
            is at least 0.5.
        """
        return _grid_template(self, "brain")

    def template_t1(self) -> np.ndarray:
        """The template T1 on this grid, resampled like a scan (:func:`resample_to_grid`).

        Returns
        -------
        numpy.ndarray
            ``shape``, float32, values 0..255, read-only.
        """
        return _grid_template(self, "t1")


@lru_cache(maxsize=8)
def _grid_template(grid: ModelGrid, name: str) -> np.ndarray:
    template = load_template()
    volume = template[name].astype(np.float32)
    image, _, _ = resample_to_grid(volume, template["affine"], np.eye(4), grid)
    out = image >= 0.5 if name == "brain" else image
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def default_model_grid(
    size: int = 64, plane_spacing: float = 2.0, margin: float = 4.0
) -> ModelGrid:
    """The model grid fitted to the bundled template's brain (cached).

    In-plane, the grid is a square centred on the x-y bounding box of the template brain
    (``t1 > 0``, voxel edges included) whose side is the longer box side plus ``margin`` on
    each end; it is cut into ``size`` x ``size`` pixels. Along z the planes are
    ``plane_spacing`` apart, as many as fit between the lowest and highest brain voxel
    centres, centred on them.

    Parameters
    ----------
    size
        In-plane pixels (64 by default: 2.95 mm pixels).
    plane_spacing
        Distance between axial planes, mm (2 by default: 78 planes).
    margin
        Space left around the brain in-plane, mm.

    Returns
    -------
    ModelGrid
        The grid (a frozen, hashable dataclass).

    Raises
    ------
    ConfigError
        If ``size`` is not a positive int, or ``plane_spacing`` or ``margin`` is not a
        finite number (positive, non-negative).

    Examples
    --------
    >>> grid = default_model_grid()
    >>> grid.shape, round(grid.pixel_spacing, 3), grid.plane_spacing
    ((64, 64, 78), 2.953, 2.0)
    """
    if not (isinstance(margin, int | float) and np.isfinite(margin) and margin >= 0):
        raise ConfigError(
            f'"margin" must be a finite number of mm >= 0, got {margin!r}; pass e.g. 4.0.'
        )
    if not (isinstance(plane_spacing, int | float) and np.isfinite(plane_spacing)) or (
        plane_spacing <= 0
    ):
        raise ConfigError(
            f'"plane_spacing" must be a finite positive number of mm, got {plane_spacing!r}; '
            "pass e.g. 2.0."
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f'"size" must be a positive int, got {size!r}; pass e.g. 64.')
    template = load_template()
    affine = template["affine"]
    index = np.argwhere(template["brain"])
    corners = np.stack([index.min(axis=0), index.max(axis=0)]).astype(np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    low, high = world.min(axis=0), world.max(axis=0)
    voxel = np.abs(np.diag(affine[:3, :3]))
    # In-plane: from voxel edge to voxel edge, plus the margin.
    side = float(np.max(high[:2] - low[:2] + voxel[:2])) + 2.0 * margin
    pixel = side / size
    centre = (low + high) / 2.0
    n_planes = int(np.floor((high[2] - low[2]) / plane_spacing + 1e-9)) + 1
    origin = (
        centre[0] - side / 2.0 + pixel / 2.0,
        centre[1] - side / 2.0 + pixel / 2.0,
        centre[2] - plane_spacing * (n_planes - 1) / 2.0,
    )
    return ModelGrid(size, n_planes, pixel, float(plane_spacing), origin)


def slice_geometry(affine: np.ndarray) -> tuple[int, np.ndarray]:
    """The slice axis of a scan and the distance between its voxel planes along each axis.

    Parameters
    ----------
    affine
        (4, 4) voxel-to-world matrix of the scan.

    Returns
    -------
    slice_axis : int
        The voxel axis (0, 1 or 2) whose planes lie farthest apart (ties go to the later
        axis, so an isotropic scan slices along its third axis).
    gaps : numpy.ndarray
        (3,) perpendicular distance, mm, between neighbouring voxel planes ``index[a] = c``
        of each axis ``a``: ``|det| / |column b x column c|``. It equals the voxel size for
        an orthogonal affine and is smaller than the column length for a sheared one.
    """
    linear = check_affine(affine)[:3, :3]
    det = abs(np.linalg.det(linear))
    gaps = np.array(
        [
            det / np.linalg.norm(np.cross(linear[:, (a + 1) % 3], linear[:, (a + 2) % 3]))
            for a in range(3)
        ]
    )
    top = gaps.max()
    slice_axis = max(a for a in range(3) if gaps[a] >= top * (1.0 - 1e-6))
    return slice_axis, gaps


def _check_grid(grid: ModelGrid) -> None:
    if not isinstance(grid, ModelGrid):
        raise TypeError(
            f'"grid" must be a ModelGrid, got {type(grid).__name__}; use default_model_grid().'
        )


def _max_thickness(grid: ModelGrid, max_thickness: float | None) -> float:
    if max_thickness is None:
        return 1.5 * grid.plane_spacing
    if not (isinstance(max_thickness, int | float) and np.isfinite(max_thickness)) or (
        max_thickness < grid.plane_spacing
    ):
        raise ConfigError(
            f'"max_thickness" must be a number of mm >= the plane spacing '
            f"({grid.plane_spacing} mm) so that every acquired slice reaches a plane, got "
            f"{max_thickness!r}; pass None for 1.5 x the plane spacing."
        )
    return float(max_thickness)


def _grid_to_scan_index(
    grid: ModelGrid,
    affine: np.ndarray,
    matrix: np.ndarray,
    shape: tuple[int, int, int],
    max_thickness: float,
) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Scan voxel coordinates of every grid voxel (slice axis snapped when sparse), coverage."""
    to_scan = np.linalg.inv(affine) @ matrix @ grid.affine
    index = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    coords = to_scan[:3, :3] @ index + to_scan[:3, 3:4]
    slice_axis, gaps = slice_geometry(affine)
    sparse = bool(gaps[slice_axis] > max_thickness)
    covered = np.ones(coords.shape[1], dtype=bool)
    for axis in range(3):
        c = coords[axis]
        if axis == slice_axis and sparse:
            nearest = np.clip(np.rint(c), 0, shape[axis] - 1)
            covered &= np.abs(c - nearest) * gaps[axis] <= max_thickness / 2.0 + _EDGE_SLACK
            coords[axis] = nearest
        else:
            covered &= (c >= -0.5 - _EDGE_SLACK) & (c <= shape[axis] - 0.5 + _EDGE_SLACK)
    return coords, covered, sparse, slice_axis


def _antialias_sigmas(
    grid: ModelGrid, affine: np.ndarray, matrix: np.ndarray, skip_axis: int | None
) -> np.ndarray:
    """Gaussian sigma (voxels) per scan axis that blurs the scan to the grid's resolution."""
    linear = affine[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    # Scan-world direction of each voxel axis -> template world -> grid voxels.
    to_grid = np.diag(1.0 / np.array(grid.spacing)) @ np.linalg.inv(matrix[:3, :3])
    sigmas = np.zeros(3)
    for axis in range(3):
        if axis == skip_axis:
            continue
        steps = np.linalg.norm(to_grid @ (linear[:, axis] / sizes[axis]))
        target = 1.0 / steps  # scan mm per grid step along this axis
        fwhm = np.sqrt(max(target**2 - sizes[axis] ** 2, 0.0))
        sigmas[axis] = fwhm / _FWHM_PER_SIGMA / sizes[axis]
    return sigmas


def _as_volume(array, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ConfigError(
            f'"{name}" must be a 3-D (X, Y, Z) or (1, X, Y, Z) array, got shape {arr.shape}; '
            "pass one channel of one volume."
        )
    return arr


def resample_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    matrix: np.ndarray,
    grid: ModelGrid,
    *,
    valid: np.ndarray | None = None,
    order: int = 1,
    max_thickness: float | None = None,
    antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a scan onto the model grid.

    Every model-grid voxel centre is taken to template world (``grid.affine``), to scan
    world (``matrix``) and to a continuous scan voxel index (``inv(affine)``), where the
    scan is interpolated with :func:`scipy.ndimage.map_coordinates` (linear for
    ``order=1``, nearest for ``order=0``). scipy rather than ``SimpleITK.Resample``: it takes
    any voxel-to-world matrix, sheared ones included (real files have them; an ITK image
    cannot), needs no LPS round trip, and lets the slice axis be sampled differently from
    the in-plane axes in the same pass.

    Slice axis and coverage. The scan's *slice axis* is the voxel axis whose planes lie
    farthest apart (gap ``h``, measured perpendicular to the planes: :func:`slice_geometry`).
    The slice thickness is assumed to be ``t = min(h, max_thickness)``, with
    ``max_thickness`` 1.5 x the plane spacing by default (3 mm). A grid voxel is *covered*
    when it lies inside the scan's field of view in-plane (within the outer voxels' edges)
    and within ``t / 2`` of an acquired slice:

    - dense scans (``h <= max_thickness``): that is the whole field of view, and the slice
      axis is interpolated linearly like the others;
    - sparse scans (``h > max_thickness``, e.g. 10 slices 53 mm apart): only grid voxels
      within ``max_thickness / 2`` of a slice are covered and they take that nearest slice
      (bilinear in-plane); nothing is interpolated across the gap. The bound
      ``max_thickness >= plane spacing`` makes every acquired slice reach at least one plane
      (the nearest plane is at most half a plane spacing away), and 1.5 x keeps the number
      of planes one slice fills at one or two.

    Anti-aliasing. With ``antialias`` (and ``order=1``) the scan is first blurred along each
    voxel axis by a Gaussian whose FWHM brings the axis' resolution to the grid spacing in
    that direction, ``sqrt(max(g^2 - s^2, 0))`` for voxel size ``s`` and grid spacing ``g``
    (mm, measured in scan space); never along a sparse slice axis.

    Parameters
    ----------
    array
        (X, Y, Z) or (1, X, Y, Z) scan voxels.
    affine
        (4, 4) voxel-to-world matrix of the scan, RAS+ mm.
    matrix
        (4, 4) map from template world points to scan world points (``Registration.matrix``;
        the identity when the scan is already in template space).
    grid
        The model grid.
    valid
        Same spatial shape as ``array``, bool: False at voxels without data (they were NaN or
        infinite). None: all finite voxels are valid.
    order
        1 (linear, intensities) or 0 (nearest neighbour, labels and masks; no anti-aliasing,
        dtype kept).
    max_thickness
        Largest slice thickness assumed, mm (>= the plane spacing); None: 1.5 x the plane
        spacing.
    antialias
        Blur before sampling when the grid is coarser than the scan (``order=1`` only).

    Returns
    -------
    image : numpy.ndarray
        ``grid.shape``; float32 for ``order=1``, the input dtype for ``order=0``; 0 where not
        covered.
    valid : numpy.ndarray
        ``grid.shape``, bool: covered, and less than 0.1 % of the interpolation weight
        (after the anti-aliasing blur) comes from invalid scan voxels.
    covered : numpy.ndarray
        ``grid.shape``, bool: the coverage defined above.

    Raises
    ------
    ConfigError
        If ``array`` is not 3-D, ``valid`` does not match it, ``order`` is not 0 or 1, or
        ``max_thickness`` is below the plane spacing.
    InputDataError
        If ``affine`` or ``matrix`` is not an invertible (4, 4) matrix.
    TypeError
        If ``grid`` is not a :class:`ModelGrid`.
    """
    _check_grid(grid)
    if order not in (0, 1):
        raise ConfigError(
            f'"order" must be 0 (nearest, labels) or 1 (linear, intensities), got {order!r}; '
            "pass 1 for images."
        )
    arr = _as_volume(array, "array")
    affine = check_affine(affine)
    matrix = check_affine(matrix, "matrix")
    thickness = _max_thickness(grid, max_thickness)
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else np.ones(arr.shape, dtype=bool)
    if valid is None:
        ok = finite
    else:
        ok = _as_volume(valid, "valid").astype(bool)
        if ok.shape != arr.shape:
            raise ConfigError(
                f'"valid" must have the spatial shape of "array" {arr.shape}, got {ok.shape}; '
                "pass the scan's own valid mask."
            )
        ok = ok & finite
    if order == 1:
        arr = arr.astype(np.float32)
    if not ok.all():
        arr = np.where(ok, arr, 0).astype(arr.dtype)

    coords, covered, sparse, slice_axis = _grid_to_scan_index(
        grid, affine, matrix, arr.shape, thickness
    )
    bad = (~ok).astype(np.float32)
    if order == 1 and antialias:
        sigmas = _antialias_sigmas(grid, affine, matrix, slice_axis if sparse else None)
        if np.any(sigmas > 0.05):
            arr = ndimage.gaussian_filter(arr, sigmas, mode="nearest")
            bad = ndimage.gaussian_filter(bad, sigmas, mode="nearest") if bad.any() else bad
    image = ndimage.map_coordinates(arr, coords, order=order, mode="nearest", prefilter=False)
    image[~covered] = 0
    if bad.any():
        weight = ndimage.map_coordinates(bad, coords, order=order, mode="nearest", prefilter=False)
        valid_grid = covered & (weight < _INVALID_WEIGHT)
    else:
        valid_grid = covered.copy()
    return (
        image.reshape(grid.shape),
        valid_grid.reshape(grid.shape),
        covered.reshape(grid.shape),
    )


def grid_coverage(
    grid: ModelGrid,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    matrix: np.ndarray,
    max_thickness: float | None = None,
) -> np.ndarray:
    """The ``covered`` mask of :func:`resample_to_grid` without resampling anything.

    Parameters
    ----------
    grid
        The model grid.
    affine
        (4, 4) voxel-to-world matrix of the scan.
    shape
        (X, Y, Z) spatial shape of the scan.
    matrix
        (4, 4) template-world to scan-world map.
    max_thickness
        As in :func:`resample_to_grid`.

    Returns
    -------
    numpy.ndarray
        ``grid.shape``, bool.
    """
    _check_grid(grid)
    _, covered, _, _ = _grid_to_scan_index(
        grid,
        check_affine(affine),
        check_affine(matrix, "matrix"),
        tuple(int(n) for n in shape),
        _max_thickness(grid, max_thickness),
    )
    return covered.reshape(grid.shape)


def grid_to_native(
    labels: np.ndarray,
    grid: ModelGrid,
    matrix: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    covered: np.ndarray | None = None,
) -> np.ndarray:
    """Map a label map on the model grid back onto the scan's native voxel grid.

    Nearest neighbour: every native voxel centre goes to scan world (``affine``), to template
    world (``inv(matrix)``) and to the nearest model-grid voxel (``inv(grid.affine)``,
    rounded); it takes that voxel's label, or 0 when the point falls outside the grid or the
    grid voxel is not ``covered``.

    Parameters
    ----------
    labels
        ``grid.shape`` or (1, *grid.shape), integer or bool (lesion ids, 0 = background).
    grid
        The model grid the labels live on.
    matrix
        (4, 4) template-world to scan-world map used to resample the scan.
    affine
        (4, 4) voxel-to-world matrix of the native scan.
    shape
        (X, Y, Z) spatial shape of the native scan.
    covered
        ``grid.shape`` bool (from :func:`resample_to_grid`); None: every grid voxel counts.

    Returns
    -------
    numpy.ndarray
        ``shape``, the dtype of ``labels``.

    Raises
    ------
    ConfigError
        If ``labels`` or ``covered`` does not have the grid's shape or ``shape`` is not three
        positive ints.
    InputDataError
        If ``affine`` or ``matrix`` is not an invertible (4, 4) matrix.
    TypeError
        If ``grid`` is not a :class:`ModelGrid`.
    """
    _check_grid(grid)
    lab = _as_volume(labels, "labels")
    if lab.shape != grid.shape:
        raise ConfigError(
            f'"labels" must have the model grid\'s shape {grid.shape}, got {lab.shape}; pass '
            "the label map computed on that grid."
        )
    if covered is not None:
        covered = _as_volume(covered, "covered").astype(bool)
        if covered.shape != grid.shape:
            raise ConfigError(
                f'"covered" must have the model grid\'s shape {grid.shape}, got '
                f"{covered.shape}; pass the covered mask of the same resampling."
            )
        lab = np.where(covered, lab, 0).astype(lab.dtype)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f'"shape" must be three positive ints (X, Y, Z), got {shape!r}; pass the native '
            "scan's spatial shape."
        )
    affine = check_affine(affine)
    matrix = check_affine(matrix, "matrix")
    to_grid = np.linalg.inv(grid.affine) @ np.linalg.inv(matrix) @ affine
    out = np.zeros(shape, dtype=lab.dtype)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    plane = np.stack([ii.ravel(), jj.ravel()]).astype(np.float64)
    base = to_grid[:3, :2] @ plane + to_grid[:3, 3:4]
    step = max(1, _CHUNK_VOXELS // plane.shape[1])
    for start in range(0, shape[2], step):
        ks = np.arange(start, min(start + step, shape[2]), dtype=np.float64)
        index = np.rint(base[:, None, :] + to_grid[:3, 2, None, None] * ks[None, :, None])
        inside = np.all((index >= 0) & (index < np.array(grid.shape)[:, None, None]), axis=0)
        index = np.where(inside, index, 0).astype(np.intp)
        values = np.where(inside, lab[index[0], index[1], index[2]], 0)
        out[:, :, start : start + len(ks)] = values.T.reshape(shape[0], shape[1], len(ks))
    return out
