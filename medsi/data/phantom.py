"""FLAIR-like phantom brain volumes rendered from the MNI152 template (DESIGN.md section 4).

A phantom is made in two steps, so that one anatomy can be imaged several times:

1. :func:`draw_subject` draws the *subject*: a small random affine transform and a smooth
   random displacement field applied to the template's tissue maps, per-subject tissue
   intensities, a multiplicative bias field, a skull and scalp shell and, optionally, lesions
   with their oedema. The result, a :class:`PhantomSubject`, holds the noise-free image.
2. :func:`render` adds Rician noise to that image and returns a :class:`Phantom`. Rendering
   the same subject with two independent generators gives a test and a reference image that
   differ only by noise, so the null hypothesis of "no anomaly" holds by construction.

:func:`make_phantom` does both from one seed, and :func:`save_phantom` writes the result as
NIfTI files.

Contrast (FLAIR, relative to white matter): cerebrospinal fluid 0.12 (fluid suppressed),
grey matter 1.15, white matter 1.0 (:data:`NOMINAL_INTENSITY`). Every voxel mixes the tissue
intensities with the weights of its tissue probabilities. Outside the brain a shell follows
the distance from a smoothed brain envelope: a thin CSF gap (dark), the skull (dark cortical
tables around brighter marrow), the scalp (bright fat) and air (zero).

Grid (:func:`brats_grid`): by default 240 x 240 x 155 voxels of 1 mm, the size of BraTS
volumes. The axes are RAS+ and world coordinates are template (MNI152) millimetres. The
default grid's voxel centres lie at x = -120..119, y = -137..102 and z = -63..91 mm, so the
cerebrum and cerebellum fit, the lowest brainstem is cut, and the top of the scalp can leave
the field of view. Coarser grids (``spacing_mm``) keep the same field of view and centre.

Lesions (:class:`LesionConfig`) are ellipsoids of hyperintense tissue in white matter, each in
a halo of milder oedema; ``lesion_labels`` marks the cores (1..K) and ``oedema_mask`` the halos.

Random draws happen in a fixed order: tissue intensities, affine transform, displacement
field, bias field, shell, then lesions. The number of draws before the lesions depends on
neither the grid nor the lesion settings, so one seed gives the same anatomy with and
without lesions and on every grid.
"""

import json
import math
import numbers
import os
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsi.assets import read_atlas
from medsi.errors import ConfigError

__all__ = [
    "BRATS_SHAPE",
    "BRATS_CENTER_MM",
    "NOMINAL_INTENSITY",
    "Template",
    "LesionConfig",
    "PhantomConfig",
    "PhantomSubject",
    "Phantom",
    "load_template",
    "brats_grid",
    "draw_subject",
    "render",
    "make_phantom",
    "save_nifti",
    "save_phantom",
]

BRATS_SHAPE = (240, 240, 155)
"""Voxels of the default grid, as in BraTS (1 mm)."""

BRATS_CENTER_MM = (-0.5, -17.5, 14.0)
"""World position (template mm, RAS+) of the centre of every grid made by :func:`brats_grid`."""

NOMINAL_INTENSITY = MappingProxyType({"csf": 0.12, "grey_matter": 1.15, "white_matter": 1.0})
"""FLAIR-like tissue intensities, relative to white matter, around which subjects are drawn."""

_FOV_MM = tuple(float(n) for n in BRATS_SHAPE)  # field of view of the 1 mm grid
_CONTROL_SPACING_MM = 20.0  # knot spacing of the cubic B-spline displacement field
_CONTROL_HALF_EXTENT_MM = (160.0, 160.0, 120.0)  # the knots cover BRATS_CENTER_MM +- this
_BSPLINE_SQUARE_INTEGRAL = 151.0 / 315.0  # integral of the squared cubic B-spline kernel
_BIAS_DEGREE = 3
_SHELL_EDGE_MM = 0.6  # width of the smooth steps between shell layers
_LESION_TRIES = 200


# --------------------------------------------------------------------------- argument checks


def _real(name: str, value, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'"{name}" must be a real number, got {type(value).__name__}; {what}.')
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f'"{name}" must be in [{low:g}, {high:g}], got {value!r}; {what}.')
    return value


def _integer(name: str, value, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'"{name}" must be an int, got {type(value).__name__}; {what}.')
    if value < low:
        raise ConfigError(f'"{name}" must be an integer >= {low}, got {value}; {what}.')
    return int(value)


def _pair(name: str, value, low: float, high: float, what: str) -> tuple[float, float]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(
            f'"{name}" must be a (low, high) pair, got {type(value).__name__} {value!r}; {what}.'
        )
    pair = tuple(_real(name, v, low, high, what) for v in value)
    if pair[0] > pair[1]:
        raise ConfigError(f'"{name}" must have low <= high, got {value!r}; {what}.')
    return pair


def _triple(name: str, value, convert, what: str) -> tuple:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,) * 3
    if not isinstance(value, tuple | list) or len(value) != 3:
        raise TypeError(
            f'"{name}" must be a number or a sequence of 3, got {type(value).__name__} '
            f"{value!r}; {what}."
        )
    return tuple(convert(name, v) for v in value)


def _generator(name: str, rng) -> tuple[np.random.Generator, int | None]:
    if isinstance(rng, np.random.Generator):
        return rng, None
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        seed = _integer(name, rng, 0, "pass a non-negative seed")
        return np.random.default_rng(seed), seed
    raise TypeError(
        f'"{name}" must be a numpy.random.Generator or an int seed, got {type(rng).__name__}; '
        "pass numpy.random.default_rng(seed) or a non-negative int."
    )


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class LesionConfig:
    """Lesions added to a subject: hyperintense ellipsoids, each in a halo of oedema.

    Each lesion is an ellipsoid whose semi-axes have geometric mean ``r`` (drawn uniformly in
    ``radius_mm``), so its volume is 4/3 pi r^3; the axes differ by random factors
    exp(u - mean(u)), u ~ U(-elongation, elongation), and the orientation is uniformly random.
    Inside the ellipsoid the tissue is replaced by lesion tissue of intensity
    ``(1 + contrast)`` times the subject's white matter; the intensity falls back to the
    surrounding tissue over ``edge_mm`` outside it. An oedema halo, ``w`` mm thick (drawn
    uniformly in ``oedema_mm``), mixes in tissue of intensity ``(1 + oedema_contrast)`` times
    white matter, in brain parenchyma only. Centres lie in white matter (probability >= 0.9),
    the ellipsoid lies inside the brain mask with at least half white matter, and lesions with
    their halos and edges do not overlap.

    Parameters
    ----------
    count
        Number of lesions, >= 0.
    radius_mm
        (low, high) range of the radius (geometric mean of the semi-axes), mm, in [0.001, 60].
    contrast
        Lesion intensity above white matter, relative to it, in [0, 10].
    oedema_mm
        (low, high) range of the thickness of the oedema halo, mm, in [0, 30].
    oedema_contrast
        Oedema intensity above white matter, relative to it, in [0, 10].
    elongation
        Half-width of the log-scale spread of the semi-axes, in [0, 1]; 0 gives spheres.
    edge_mm
        Width of the smooth (raised-cosine) edge outside the lesion and outside the halo, mm,
        in [0, 10].

    Raises
    ------
    ConfigError
        If a value is out of its range or a (low, high) pair has low > high.
    TypeError
        If a value has the wrong type.
    """

    count: int = 1
    radius_mm: tuple[float, float] = (4.0, 10.0)
    contrast: float = 0.5
    oedema_mm: tuple[float, float] = (2.0, 5.0)
    oedema_contrast: float = 0.2
    elongation: float = 0.2
    edge_mm: float = 1.5

    def __post_init__(self):
        hint = "see LesionConfig for the allowed values"
        checked = {
            "count": _integer("count", self.count, 0, "pass 0 or more lesions"),
            "radius_mm": _pair("radius_mm", self.radius_mm, 1e-3, 60.0, hint),
            "contrast": _real("contrast", self.contrast, 0.0, 10.0, "pass e.g. 0.5"),
            "oedema_mm": _pair("oedema_mm", self.oedema_mm, 0.0, 30.0, hint),
            "oedema_contrast": _real(
                "oedema_contrast", self.oedema_contrast, 0.0, 10.0, "pass e.g. 0.2"
            ),
            "elongation": _real("elongation", self.elongation, 0.0, 1.0, "pass e.g. 0.2"),
            "edge_mm": _real("edge_mm", self.edge_mm, 0.0, 10.0, "pass e.g. 1.5"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class PhantomConfig:
    """How subjects are drawn by :func:`draw_subject`.

    Parameters
    ----------
    spacing_mm
        Voxel size, mm: one number (isotropic) or three (x, y, z), each in [0.5, 8].
    shape
        Voxels per axis (x, y, z); ``None`` (the default) covers the BraTS field of view
        (240 x 240 x 155 mm) at ``spacing_mm``.
    deformation_mm
        Root-mean-square of each component of the smooth displacement field (a cubic B-spline
        with 20 mm knot spacing, i.i.d. normal coefficients), mm, in [0, 2.5]; beyond 2.5 mm
        the field starts to fold (its Jacobian determinant reaches 0).
    rotation_deg
        Each rotation angle (about x, y, z) is drawn uniformly in +- this, degrees, in [0, 30].
    scaling
        Each axis is scaled by 1 + u, u uniform in +- this, in [0, 0.3].
    translation_mm
        Each translation component is drawn uniformly in +- this, mm, in [0, 30].
    intensity_variation
        Each tissue and shell intensity is its nominal value times 1 + u, u uniform in +- this,
        in [0, 0.2]; at the default 0.05 grey matter stays brighter than white matter.
    bias
        Strength of the multiplicative bias field, in [0, 1]: exp of a random cubic polynomial
        of position whose extremes over the BraTS field of view are +- log(1 + bias).
    skull
        Whether to add the skull and scalp shell; ``False`` gives a skull-stripped volume, zero
        outside the brain mask.
    lesions
        The lesions to add, or ``None`` for a normal subject.

    Raises
    ------
    ConfigError
        If a value is out of its range.
    TypeError
        If a value has the wrong type.
    """

    spacing_mm: float | tuple[float, float, float] = 1.0
    shape: tuple[int, int, int] | None = None
    deformation_mm: float = 2.0
    rotation_deg: float = 4.0
    scaling: float = 0.04
    translation_mm: float = 3.0
    intensity_variation: float = 0.05
    bias: float = 0.15
    skull: bool = True
    lesions: LesionConfig | None = None

    def __post_init__(self):
        spacing = _triple(
            "spacing_mm",
            self.spacing_mm,
            lambda n, v: _real(n, v, 0.5, 8.0, "pass a voxel size in mm such as 1.0 or 2.0"),
            "pass a voxel size in mm such as 1.0 or 2.0",
        )
        shape = self.shape
        if shape is not None:
            shape = _triple(
                "shape",
                shape,
                lambda n, v: _integer(n, v, 8, "pass at least 8 voxels per axis"),
                "pass (nx, ny, nz) or None for the BraTS field of view",
            )
        if not isinstance(self.skull, bool):
            raise TypeError(
                f'"skull" must be a bool, got {type(self.skull).__name__}; pass True or False.'
            )
        if self.lesions is not None and not isinstance(self.lesions, LesionConfig):
            raise TypeError(
                f'"lesions" must be a LesionConfig or None, got {type(self.lesions).__name__}; '
                "pass LesionConfig(count=..., radius_mm=...)."
            )
        checked = {
            "spacing_mm": spacing,
            "shape": shape,
            "deformation_mm": _real(
                "deformation_mm", self.deformation_mm, 0.0, 2.5, "pass e.g. 2.0"
            ),
            "rotation_deg": _real("rotation_deg", self.rotation_deg, 0.0, 30.0, "pass e.g. 4"),
            "scaling": _real("scaling", self.scaling, 0.0, 0.3, "pass e.g. 0.04"),
            "translation_mm": _real(
                "translation_mm", self.translation_mm, 0.0, 30.0, "pass e.g. 3.0"
            ),
            "intensity_variation": _real(
                "intensity_variation", self.intensity_variation, 0.0, 0.2, "pass e.g. 0.05"
            ),
            "bias": _real("bias", self.bias, 0.0, 1.0, "pass e.g. 0.15, or 0 for no bias"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class Template:
    """The MNI152 template as medsi's phantoms use it (read-only arrays, 197 x 233 x 189).

    Attributes
    ----------
    t1
        Skull-stripped T1-weighted average, float32, scaled to [0, 1].
    grey_matter, white_matter
        Tissue probabilities, float32 in [0, 1], zero outside the brain mask.
    csf
        Cerebrospinal fluid, ``brain_mask - grey_matter - white_matter`` clipped at 0, float32.
    brain_mask
        ``t1 > 0``, bool.
    affine
        (4, 4) voxel-to-world matrix, RAS+ mm.
    """

    t1: np.ndarray = field(repr=False)
    grey_matter: np.ndarray = field(repr=False)
    white_matter: np.ndarray = field(repr=False)
    csf: np.ndarray = field(repr=False)
    brain_mask: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class PhantomSubject:
    """One drawn anatomy on its grid, before noise (all arrays read-only, axes x, y, z).

    Attributes
    ----------
    signal
        Noise-free FLAIR-like image, float32, >= 0, bias field included.
    affine
        (4, 4) voxel-to-world matrix, RAS+ template mm.
    grey_matter, white_matter, csf
        Deformed tissue fractions, float32 in [0, 1], before lesions were added.
    brain_mask
        Deformed brain mask, bool.
    head_mask
        Brain plus the skull and scalp shell, bool (the brain mask when there is no shell).
    bias_field
        Multiplicative bias field, float32, > 0.
    lesion_labels
        Lesion cores, int16: 0 outside, 1..K for the K lesions (see :class:`LesionConfig`).
    oedema_mask
        Oedema halos in the brain, outside every core, bool.
    params
        Everything that was drawn, as plain JSON-ready values (seed, tissue intensities,
        transform, shell, lesions, configuration).
    """

    signal: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    grey_matter: np.ndarray = field(repr=False)
    white_matter: np.ndarray = field(repr=False)
    csf: np.ndarray = field(repr=False)
    brain_mask: np.ndarray = field(repr=False)
    head_mask: np.ndarray = field(repr=False)
    bias_field: np.ndarray = field(repr=False)
    lesion_labels: np.ndarray = field(repr=False)
    oedema_mask: np.ndarray = field(repr=False)
    params: dict


@dataclass(frozen=True, eq=False)
class Phantom:
    """A noisy phantom volume with its ground truth.

    Attributes
    ----------
    image
        FLAIR-like magnitude image, float32, >= 0, axes x, y, z (a fresh, writable array).
    affine
        (4, 4) voxel-to-world matrix, RAS+ template mm.
    brain_mask
        bool, shared with ``subject`` (read-only).
    lesion_labels
        int16, 0 outside lesions and 1..K inside, shared with ``subject`` (read-only).
    oedema_mask
        bool, shared with ``subject`` (read-only).
    params
        ``{"subject": subject.params, "noise": {"level", "sigma", "seed"}}``.
    subject
        The :class:`PhantomSubject` this image was rendered from.
    """

    image: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    brain_mask: np.ndarray = field(repr=False)
    lesion_labels: np.ndarray = field(repr=False)
    oedema_mask: np.ndarray = field(repr=False)
    params: dict
    subject: PhantomSubject = field(repr=False)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# --------------------------------------------------------------------------- template


@lru_cache(maxsize=1)
def _template_volumes() -> tuple[Template, torch.Tensor]:
    volumes, affine = read_atlas()
    brain = volumes["t1"] > 0
    # Channels sampled together for every subject: grey matter, white matter, brain, and the
    # distance (mm) outside a smoothed brain envelope that places the skull and scalp.
    stack = np.empty((4, *brain.shape), dtype=np.float32)
    stack[0] = np.where(brain, volumes["grey_matter"] / 255.0, 0.0)
    stack[1] = np.where(brain, volumes["white_matter"] / 255.0, 0.0)
    stack[2] = brain
    # The envelope and its distance are computed at 2 mm (every other voxel; the template's
    # sizes are odd, so both grids share their first and last voxel centres) and upsampled.
    coarse = ndimage.gaussian_filter(brain[::2, ::2, ::2].astype(np.float32), sigma=3.0)
    distance = 2.0 * ndimage.distance_transform_edt(coarse < 0.25).astype(np.float32)
    stack[3] = F.interpolate(
        torch.from_numpy(distance)[None, None],
        size=brain.shape,
        mode="trilinear",
        align_corners=True,
    )[0, 0].numpy()
    csf = np.clip(stack[2] - stack[0] - stack[1], 0.0, 1.0)
    template = Template(
        t1=_read_only(volumes["t1"] / np.float32(255.0)),
        grey_matter=_read_only(stack[0].view()),
        white_matter=_read_only(stack[1].view()),
        csf=_read_only(csf),
        brain_mask=_read_only(brain),
        affine=_read_only(affine.copy()),
    )
    return template, torch.from_numpy(stack)[None]


def load_template() -> Template:
    """Read the vendored MNI152 template (medsi/assets/atlas), once per process.

    Returns
    -------
    Template
        T1, grey matter, white matter and CSF (float32 in [0, 1]), the brain mask ``t1 > 0``
        and the affine; the arrays are read-only and shared between calls.

    Raises
    ------
    InputDataError
        If a template file is missing or unreadable, or the files do not share one grid.
    """
    return _template_volumes()[0]


# --------------------------------------------------------------------------- grid


def brats_grid(
    spacing_mm: float | tuple[float, float, float] = 1.0,
    shape: tuple[int, int, int] | None = None,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Return the shape and affine of a phantom grid centred on :data:`BRATS_CENTER_MM`.

    Voxel (i, j, k) has its centre at ``BRATS_CENTER_MM + spacing * ((i, j, k) - (shape - 1)
    / 2)``: axes x, y, z, RAS+, template millimetres.

    Parameters
    ----------
    spacing_mm
        Voxel size, mm: one number or three (x, y, z), each in [0.5, 8].
    shape
        Voxels per axis; ``None`` covers 240 x 240 x 155 mm (``ceil(fov / spacing)``).

    Returns
    -------
    shape : tuple of int
        (nx, ny, nz).
    affine : numpy.ndarray
        (4, 4) float64 voxel-to-world matrix.

    Raises
    ------
    ConfigError
        If a spacing is out of range or an axis has fewer than 8 voxels.
    TypeError
        If ``spacing_mm`` or ``shape`` has the wrong type.

    Examples
    --------
    >>> shape, affine = brats_grid()
    >>> shape, affine[:3, 3].tolist()
    ((240, 240, 155), [-120.0, -137.0, -63.0])
    >>> brats_grid(2.0)[0]
    (120, 120, 78)
    """
    config = PhantomConfig(spacing_mm=spacing_mm, shape=shape)
    spacing = np.array(config.spacing_mm)
    if config.shape is None:
        shape = tuple(int(math.ceil(f / s - 1e-9)) for f, s in zip(_FOV_MM, spacing, strict=True))
    else:
        shape = config.shape
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = np.array(BRATS_CENTER_MM) - spacing * (np.array(shape) - 1) / 2.0
    return shape, affine


# --------------------------------------------------------------------------- anatomy


def _bspline_weights(positions_mm: np.ndarray, axis: int) -> np.ndarray:
    """Cubic B-spline basis (len(positions), knots) of one axis of the displacement field."""
    half = _CONTROL_HALF_EXTENT_MM[axis]
    knots = int(round(2 * half / _CONTROL_SPACING_MM)) + 1
    u = (positions_mm - (BRATS_CENTER_MM[axis] - half)) / _CONTROL_SPACING_MM
    t = np.abs(u[:, None] - np.arange(knots)[None, :])
    weights = np.where(t < 1.0, 2.0 / 3.0 - t**2 + t**3 / 2.0, (2.0 - np.minimum(t, 2.0)) ** 3 / 6)
    return weights.astype(np.float32)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed rotation matrix (from a normalised Gaussian quaternion)."""
    w, x, y, z = (q := rng.standard_normal(4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _axis_positions(shape, affine) -> list[np.ndarray]:
    return [affine[a, 3] + affine[a, a] * np.arange(shape[a]) for a in range(3)]


def _bias_field(coefficients: np.ndarray, strength: float, positions: list) -> np.ndarray:
    """exp(polynomial) on the grid, scaled so its log peaks at log(1 + strength) in the FOV."""
    degree = _BIAS_DEGREE
    powers = np.arange(degree + 1)
    allowed = powers[:, None, None] + powers[None, :, None] + powers[None, None, :]
    allowed = (allowed <= degree) & (allowed > 0)
    c = np.zeros((degree + 1,) * 3)
    c[allowed] = coefficients
    half = np.array(_FOV_MM) / 2.0
    probe = np.linspace(-1.0, 1.0, 9)[:, None] ** powers
    peak = np.abs(np.einsum("abc,ia,jb,kc->ijk", c, probe, probe, probe)).max()
    c *= math.log1p(strength) / peak
    bases = [
        (((p - BRATS_CENTER_MM[a]) / half[a])[:, None] ** powers).astype(np.float32)
        for a, p in enumerate(positions)
    ]
    log_field = np.einsum("abc,ia->ibc", c.astype(np.float32), bases[0])
    log_field = np.einsum("ibc,jb->ijc", log_field, bases[1])
    log_field = np.einsum("ijc,kc->ijk", log_field, bases[2])
    return np.exp(log_field, dtype=np.float32)


def _shell_profile(shell: dict) -> tuple[np.ndarray, np.ndarray]:
    """Tabulate the shell's intensity against the distance (mm) from the brain envelope.

    Every 0.05 mm: a CSF gap, the skull (dark tables around brighter marrow), the scalp, then
    air (zero).
    """
    d0 = shell["csf_gap_mm"]
    d1 = d0 + shell["skull_mm"]
    d2 = d1 + shell["scalp_mm"]
    distance = np.arange(0.0, d2 + 6.0 * _SHELL_EDGE_MM, 0.05)
    s0, s1, s2 = (0.5 * (1.0 + np.tanh((distance - d) / _SHELL_EDGE_MM)) for d in (d0, d1, d2))
    marrow = np.exp(-(((distance - (d0 + d1) / 2.0) / (shell["skull_mm"] / 5.0)) ** 2))
    bone = shell["bone"] + (shell["marrow"] - shell["bone"]) * marrow
    value = (1.0 - s0) * shell["csf"] + (s0 - s1) * bone + (s1 - s2) * shell["scalp"]
    value[-1] = 0.0  # air beyond the table
    return distance, value


def _sample_template(shape, grid_affine, transform, displacement) -> np.ndarray:
    """Sample the template channels at every grid voxel; returns (4, nx, ny, nz) float32.

    Voxel (i, j, k) samples the template at ``transform(grid_affine @ (i, j, k)) + u``, u the
    B-spline displacement, with trilinear interpolation (beyond the template, its border
    values repeat). The grid is processed in slabs along x to bound the memory used.
    """
    _, volume = _template_volumes()
    template = load_template()
    size = np.array(volume.shape[2:], dtype=float)
    to_index = np.linalg.inv(template.affine)
    # index = to_index(transform(grid_affine @ ijk) + u), normalised to [-1, 1] for grid_sample.
    norm = np.diag(np.append(2.0 / (size - 1.0), 1.0))
    norm[:3, 3] = -1.0
    linear = (norm @ to_index @ transform @ grid_affine).astype(np.float32)
    # The displacement is linear in its coefficients: map them to normalised index units once.
    coefficients = np.einsum("cd,dabe->acbe", (norm @ to_index)[:3, :3], displacement)
    coefficients = coefficients.astype(np.float32)  # (x knots, component, y knots, z knots)
    bases = [_bspline_weights(p, a) for a, p in enumerate(_axis_positions(shape, grid_affine))]
    j = np.arange(shape[1], dtype=np.float32)[None, :, None]
    k = np.arange(shape[2], dtype=np.float32)[None, None, :]
    out = np.empty((4, *shape), dtype=np.float32)
    step = max(1, 2_000_000 // (shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        i = np.arange(start, stop, dtype=np.float32)[:, None, None]
        u = np.tensordot(bases[0][start:stop], coefficients, axes=(1, 0))  # (i, c, ky, kz)
        u = np.matmul(bases[1], u)  # (i, c, j, kz)
        u = np.matmul(u, bases[2].T)  # (i, c, j, k)
        grid = np.empty((1, stop - start, shape[1], shape[2], 3), dtype=np.float32)
        for c in range(3):  # grid_sample wants (z, y, x) order for an (x, y, z) volume
            m = linear[c]
            np.add(u[:, c], m[0] * i + m[1] * j + m[2] * k + m[3], out=grid[0, ..., 2 - c])
        sampled = F.grid_sample(
            volume,
            torch.from_numpy(grid),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )
        out[:, start:stop] = sampled[0].numpy()
    return out


def _ramp(distance_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """1 inside (distance <= 0), a raised cosine down to 0 at ``edge_mm``, 0 beyond."""
    if edge_mm == 0.0:
        return (distance_mm <= 0.0).astype(np.float32)
    x = np.clip(distance_mm / edge_mm, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * x))).astype(np.float32)


def _place_lesions(rng, config: LesionConfig, affine, brain_mask, white_matter):
    shape = brain_mask.shape
    spacing = np.diag(affine)[:3]
    labels = np.zeros(shape, dtype=np.int16)
    oedema = np.zeros(shape, dtype=bool)
    if config.count == 0:
        return labels, oedema, None, None, []
    core_weight = np.zeros(shape, dtype=np.float32)
    halo_weight = np.zeros(shape, dtype=np.float32)
    occupied = np.zeros(shape, dtype=bool)
    candidates = np.flatnonzero((white_matter >= 0.9) & brain_mask)
    records = []
    for label in range(1, config.count + 1):
        radius = rng.uniform(*config.radius_mm)
        spread = rng.uniform(-config.elongation, config.elongation, 3)
        axes = radius * np.exp(spread - spread.mean())
        rotation = _random_rotation(rng)
        width = rng.uniform(*config.oedema_mm)
        reach = axes.max() + width + config.edge_mm
        half = np.ceil(reach / spacing).astype(int)
        for _ in range(_LESION_TRIES if candidates.size else 0):
            centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], shape))
            lo, hi = centre - half, centre + half + 1
            if (lo < 0).any() or (hi > np.array(shape)).any():
                continue
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            offsets = np.meshgrid(
                *[np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)],
                indexing="ij",
            )
            local = np.einsum("nm,n...->m...", rotation, np.stack(offsets))  # R^T offset
            r_core = np.sqrt(sum((local[m] / axes[m]) ** 2 for m in range(3)))
            r_halo = np.sqrt(sum((local[m] / (axes[m] + width)) ** 2 for m in range(3)))
            core = r_core <= 1.0
            halo_distance = (r_halo - 1.0) * (radius + width)
            support = halo_distance < config.edge_mm
            if (
                occupied[box][support].any()
                or not brain_mask[box][core].all()
                or white_matter[box][core].mean() < 0.5
            ):
                continue
            labels[box][core] = label
            oedema[box] |= (r_halo <= 1.0) & ~core & brain_mask[box]
            core_weight[box] = np.maximum(
                core_weight[box], _ramp((r_core - 1.0) * radius, config.edge_mm)
            )
            halo_weight[box] = np.maximum(halo_weight[box], _ramp(halo_distance, config.edge_mm))
            occupied[box] |= support
            voxel_mm3 = float(np.prod(spacing))
            records.append(
                {
                    "label": label,
                    "center_mm": (affine[:3, :3] @ centre + affine[:3, 3]).tolist(),
                    "radius_mm": float(radius),
                    "semi_axes_mm": axes.tolist(),
                    "rotation": rotation.tolist(),
                    "oedema_mm": float(width),
                    "target_volume_mm3": 4.0 / 3.0 * math.pi * radius**3,
                    "volume_mm3": float(core.sum()) * voxel_mm3,
                }
            )
            break
        if len(records) < label:
            raise ConfigError(
                f'"lesions" could not be placed: lesion {label} of {config.count} (radius '
                f"{radius:.1f} mm, oedema {width:.1f} mm) found no room in white matter after "
                f"{_LESION_TRIES} tries; pass fewer or smaller lesions (count, radius_mm, "
                "oedema_mm)."
            )
    return labels, oedema, core_weight, halo_weight, records


def draw_subject(
    rng: np.random.Generator | int, config: PhantomConfig | None = None
) -> PhantomSubject:
    """Draw one subject's anatomy and its noise-free FLAIR-like image.

    Parameters
    ----------
    rng
        The generator every draw comes from, or an int seed for
        ``numpy.random.default_rng(seed)`` (recorded in ``params["seed"]``).
    config
        How to draw; ``None`` uses ``PhantomConfig()`` (1 mm BraTS grid, no lesions).

    Returns
    -------
    PhantomSubject
        The subject on the grid of :func:`brats_grid` for ``config``.

    Raises
    ------
    ConfigError
        If ``rng`` is a negative seed, or the lesions found no room (see
        :class:`LesionConfig`).
    TypeError
        If ``rng`` is neither a generator nor an int, or ``config`` is not a
        :class:`PhantomConfig`.
    InputDataError
        If the template cannot be read (see :func:`load_template`).

    Notes
    -----
    The noise-free image is ``bias * ((1 - w - e) T + f (w L + e O) + (1 - f) S)``: T mixes
    the tissue intensities by the deformed tissue fractions, f is the deformed brain fraction,
    w and e are the lesion and oedema weights with intensities L and O, and S is the skull and
    scalp shell. ``params`` holds ``seed``, ``shape``, ``spacing_mm``, ``tissue_intensity``,
    ``transform`` (``rotation_deg``, ``scale``, ``translation_mm`` and ``matrix``, the 4 x 4
    map from phantom to template millimetres applied before the displacement),
    ``deformation_knot_spacing_mm``, ``shell`` (layer thicknesses and intensities, ``None``
    without a skull), ``brain_volume_ml``, ``lesions`` (per lesion: ``label``, ``center_mm``,
    ``radius_mm``, ``semi_axes_mm``, ``rotation``, ``oedema_mm``, ``target_volume_mm3``,
    ``volume_mm3``) and ``config``. A full-size subject takes about 3 s on one CPU thread.

    Examples
    --------
    >>> subject = draw_subject(1, PhantomConfig(spacing_mm=4.0))
    >>> test, reference = render(subject, 10), render(subject, 11)
    >>> test.subject is reference.subject, bool((test.image != reference.image).any())
    (True, True)
    """
    rng, seed = _generator("rng", rng)
    config = PhantomConfig() if config is None else config
    if not isinstance(config, PhantomConfig):
        raise TypeError(
            f'"config" must be a PhantomConfig or None, got {type(config).__name__}; '
            "pass PhantomConfig(...)."
        )
    shape, affine = brats_grid(config.spacing_mm, config.shape)
    v = config.intensity_variation

    # 1. tissue intensities, relative to nominal white matter
    intensity = {
        name: float(value * (1.0 + rng.uniform(-v, v))) for name, value in NOMINAL_INTENSITY.items()
    }
    # 2. affine transform from grid world to template world, about the grid centre
    angles = rng.uniform(-1.0, 1.0, 3) * math.radians(config.rotation_deg)
    scales = 1.0 + rng.uniform(-1.0, 1.0, 3) * config.scaling
    shift = rng.uniform(-1.0, 1.0, 3) * config.translation_mm
    centre = np.array(BRATS_CENTER_MM)
    transform = np.eye(4)
    transform[:3, :3] = _rotation(angles) @ np.diag(scales)
    transform[:3, 3] = centre + shift - transform[:3, :3] @ centre
    # 3. displacement field: B-spline coefficients (3 components, x, y, z knots)
    knots = [int(round(2 * h / _CONTROL_SPACING_MM)) + 1 for h in _CONTROL_HALF_EXTENT_MM]
    coefficient_sd = config.deformation_mm / math.sqrt(_BSPLINE_SQUARE_INTEGRAL**3)
    displacement = (rng.standard_normal((3, *knots)) * coefficient_sd).astype(np.float32)
    # 4. bias field: cubic polynomial coefficients (19 non-constant monomials)
    bias_coefficients = rng.standard_normal(19)
    # 5. skull and scalp shell
    shell = {
        "csf_gap_mm": float(rng.uniform(1.0, 3.0)),
        "skull_mm": float(rng.uniform(4.0, 7.0)),
        "scalp_mm": float(rng.uniform(4.0, 8.0)),
        "csf": intensity["csf"],
        "bone": float(0.06 * (1.0 + rng.uniform(-v, v))),
        "marrow": float(0.5 * (1.0 + rng.uniform(-v, v))),
        "scalp": float(1.1 * (1.0 + rng.uniform(-v, v))),
    }

    grey, white, brain_fraction, distance = _sample_template(shape, affine, transform, displacement)
    np.clip(grey, 0.0, 1.0, out=grey)
    np.clip(white, 0.0, 1.0, out=white)
    np.clip(brain_fraction, 0.0, 1.0, out=brain_fraction)
    csf = np.clip(brain_fraction - grey - white, 0.0, 1.0)
    brain_mask = brain_fraction >= 0.5
    tissue = (
        grey * np.float32(intensity["grey_matter"])
        + white * np.float32(intensity["white_matter"])
        + csf * np.float32(intensity["csf"])
    )

    # 6. lesions
    lesion_config = config.lesions if config.lesions is not None else LesionConfig(count=0)
    labels, oedema, core_w, halo_w, lesions = _place_lesions(
        rng, lesion_config, affine, brain_mask, white
    )
    if lesions:
        wm = intensity["white_matter"]
        oedema_w = halo_w * (1.0 - core_w) * (grey + white)
        lesion_tissue = core_w * np.float32(wm * (1.0 + lesion_config.contrast)) + oedema_w * (
            np.float32(wm * (1.0 + lesion_config.oedema_contrast))
        )
        tissue = (1.0 - core_w - oedema_w) * tissue + brain_fraction * lesion_tissue
    if config.skull:
        outer_mm = shell["csf_gap_mm"] + shell["skull_mm"] + shell["scalp_mm"]
        head_mask = brain_mask | (distance < outer_mm)
        table_mm, table_value = _shell_profile(shell)
        near = distance < table_mm[-1]
        shell_signal = np.interp(distance[near], table_mm, table_value).astype(np.float32)
        tissue[near] += (1.0 - brain_fraction[near]) * shell_signal
    else:  # skull-stripped as in BraTS: zero outside the brain mask
        head_mask = brain_mask.copy()
        tissue[~brain_mask] = 0.0
    bias_field = _bias_field(bias_coefficients, config.bias, _axis_positions(shape, affine))
    signal = np.maximum(tissue * bias_field, 0.0, dtype=np.float32)

    voxel_ml = float(np.prod(config.spacing_mm)) / 1000.0
    config_record = asdict(config)
    params = {
        "seed": seed,
        "shape": list(shape),
        "spacing_mm": list(config.spacing_mm),
        "tissue_intensity": intensity,
        "transform": {
            "rotation_deg": np.degrees(angles).tolist(),
            "scale": scales.tolist(),
            "translation_mm": shift.tolist(),
            "matrix": transform.tolist(),
        },
        "deformation_knot_spacing_mm": _CONTROL_SPACING_MM,
        "shell": shell if config.skull else None,
        "brain_volume_ml": float(brain_mask.sum()) * voxel_ml,
        "lesions": lesions,
        "config": json.loads(json.dumps(config_record)),
    }
    return PhantomSubject(
        signal=_read_only(signal),
        affine=_read_only(affine),
        grey_matter=_read_only(grey),
        white_matter=_read_only(white),
        csf=_read_only(csf),
        brain_mask=_read_only(brain_mask),
        head_mask=_read_only(head_mask),
        bias_field=_read_only(bias_field),
        lesion_labels=_read_only(labels),
        oedema_mask=_read_only(oedema),
        params=params,
    )


# --------------------------------------------------------------------------- noise


def render(subject: PhantomSubject, rng: np.random.Generator | int, noise: float = 0.04) -> Phantom:
    """Image a subject: add Rician noise to its noise-free signal.

    The magnitude image is ``|signal + sigma * (n1 + i n2)|`` with n1, n2 independent standard
    normal (drawn in that order, float32) and ``sigma = noise * white-matter intensity`` of the
    subject (before the bias field). Where the signal is zero (air) the image follows the
    Rayleigh distribution, mean ``sigma * sqrt(pi / 2)``; where it is much larger than sigma
    the noise is nearly Gaussian with standard deviation sigma.

    Parameters
    ----------
    subject
        The anatomy, from :func:`draw_subject`.
    rng
        Generator of the noise, or an int seed (recorded in ``params["noise"]["seed"]``).
        Two independent generators give two images of the same anatomy.
    noise
        Noise level relative to white matter, in [0, 1]; the default 0.04 is an SNR of 25.

    Returns
    -------
    Phantom
        The noisy image with the subject's masks, labels and parameters.

    Raises
    ------
    ConfigError
        If ``noise`` is out of range or ``rng`` is a negative seed.
    TypeError
        If ``subject`` is not a :class:`PhantomSubject`, ``noise`` is not a real number or
        ``rng`` is neither a generator nor an int.
    """
    if not isinstance(subject, PhantomSubject):
        raise TypeError(
            f'"subject" must be a PhantomSubject, got {type(subject).__name__}; '
            "pass the result of draw_subject()."
        )
    noise = _real("noise", noise, 0.0, 1.0, "pass a level relative to white matter, e.g. 0.04")
    rng, seed = _generator("rng", rng)
    sigma = np.float32(noise * subject.params["tissue_intensity"]["white_matter"])
    shape = subject.signal.shape
    real = subject.signal + sigma * rng.standard_normal(shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
    image = np.hypot(real, imaginary, out=real)
    return Phantom(
        image=image,
        affine=subject.affine,
        brain_mask=subject.brain_mask,
        lesion_labels=subject.lesion_labels,
        oedema_mask=subject.oedema_mask,
        params={
            "subject": subject.params,
            "noise": {"level": noise, "sigma": float(sigma), "seed": seed},
        },
        subject=subject,
    )


def make_phantom(
    seed: int,
    config: PhantomConfig | None = None,
    noise: float = 0.04,
    noise_seed: int | None = None,
) -> Phantom:
    """Draw a subject from ``seed`` and render it: ``render(draw_subject(seed, config), ...)``.

    Parameters
    ----------
    seed
        Seed of the subject (non-negative int).
    config
        How to draw the subject; ``None`` uses ``PhantomConfig()``.
    noise
        Noise level relative to white matter (see :func:`render`).
    noise_seed
        Seed of the noise; ``None`` uses the first child of ``numpy.random.SeedSequence(seed)``,
        a stream independent of the subject's.

    Returns
    -------
    Phantom
        The same ``seed``, ``config``, ``noise`` and ``noise_seed`` give a bit-identical phantom.

    Raises
    ------
    ConfigError
        If a seed is negative, ``noise`` is out of range or the lesions found no room.
    TypeError
        If a seed is not an int or an argument has the wrong type.

    Examples
    --------
    >>> phantom = make_phantom(0, PhantomConfig(spacing_mm=4.0))
    >>> phantom.image.shape, phantom.image.dtype.name, int(phantom.lesion_labels.max())
    ((60, 60, 39), 'float32', 0)
    """
    seed = _integer("seed", seed, 0, "pass a non-negative int")
    if noise_seed is None:
        noise_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    else:
        noise_rng = _integer("noise_seed", noise_seed, 0, "pass a non-negative int or None")
    return render(draw_subject(seed, config), noise_rng, noise)


# --------------------------------------------------------------------------- files


def _atomic_write(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes)
    )
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a 3-D array as a NIfTI file, atomically (a temporary file, then a rename).

    Parameters
    ----------
    array
        (nx, ny, nz) array; bool is stored as uint8, other dtypes as they are.
    affine
        (4, 4) voxel-to-world matrix, RAS+ mm; written as qform and sform (scanner code).
    path
        Target file, ending in ``.nii`` or ``.nii.gz``, in an existing folder.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ConfigError
        If ``path`` does not end in .nii or .nii.gz, or its folder does not exist, or
        ``array`` is not 3-D, or ``affine`` is not 4 x 4.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ConfigError(
            f'"path" must end in .nii or .nii.gz, got {path.name!r}; '
            "pass e.g. phantom_flair.nii.gz."
        )
    if not path.parent.is_dir():
        raise ConfigError(
            f'"path" must be in an existing folder, got {str(path.parent)!r}; create it first.'
        )
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=float)
    if array.ndim != 3 or affine.shape != (4, 4):
        raise ConfigError(
            f'"array" must be 3-D and "affine" 4 x 4, got shapes {array.shape} and '
            f"{affine.shape}; pass one volume with its voxel-to-world matrix."
        )
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    _atomic_write(path, lambda temporary: nib.save(image, temporary))
    return path


def save_phantom(
    phantom: Phantom, folder: str | os.PathLike, stem: str = "phantom"
) -> dict[str, Path]:
    """Write a phantom's image, masks, labels and parameters into ``folder``.

    Files: ``<stem>_flair.nii.gz`` (float32 image), ``<stem>_brain.nii.gz`` (uint8 mask),
    ``<stem>_lesions.nii.gz`` (int16 labels), ``<stem>_oedema.nii.gz`` (uint8 mask) and
    ``<stem>.json`` (``phantom.params``); each is written atomically.

    Parameters
    ----------
    phantom
        The phantom to write.
    folder
        An existing folder.
    stem
        Common start of the file names.

    Returns
    -------
    dict of str to pathlib.Path
        Keys ``"image"``, ``"brain_mask"``, ``"lesion_labels"``, ``"oedema_mask"``,
        ``"params"``.

    Raises
    ------
    ConfigError
        If ``folder`` is not an existing folder or ``stem`` is empty or holds a path separator.
    TypeError
        If ``phantom`` is not a :class:`Phantom`.
    """
    if not isinstance(phantom, Phantom):
        raise TypeError(
            f'"phantom" must be a Phantom, got {type(phantom).__name__}; '
            "pass the result of make_phantom() or render()."
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f'"folder" must be an existing folder, got {str(folder)!r}; create it first.'
        )
    if not isinstance(stem, str) or not stem or os.sep in stem or "/" in stem:
        raise ConfigError(
            f'"stem" must be a non-empty file name without separators, got {stem!r}; '
            'pass e.g. "subject_001".'
        )
    paths = {
        "image": save_nifti(phantom.image, phantom.affine, folder / f"{stem}_flair.nii.gz"),
        "brain_mask": save_nifti(
            phantom.brain_mask, phantom.affine, folder / f"{stem}_brain.nii.gz"
        ),
        "lesion_labels": save_nifti(
            phantom.lesion_labels, phantom.affine, folder / f"{stem}_lesions.nii.gz"
        ),
        "oedema_mask": save_nifti(
            phantom.oedema_mask, phantom.affine, folder / f"{stem}_oedema.nii.gz"
        ),
    }
    text = json.dumps(phantom.params, indent=2)
    params_path = folder / f"{stem}.json"
    _atomic_write(params_path, lambda temporary: Path(temporary).write_text(text))
    paths["params"] = params_path
    return paths
