"""Affine registration of the bundled template to a scan (SimpleITK, Mattes mutual information).

Roles: the scan is ITK's *fixed* image and the template the *moving* one. ITK optimises a
transform that maps fixed points to moving points, i.e. scan LPS points to template LPS
points; medsi reports its inverse in RAS, :attr:`Registration.matrix`, which maps TEMPLATE
RAS world points to SCAN RAS world points. Sampling the metric on the scan (fixed) side
means it only ever reads acquired scan voxels, which matters for sparse acquisitions (a few
slices far apart): the dense template is the one that gets interpolated.
"""

import time
from dataclasses import dataclass, field
from functools import lru_cache, wraps

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medsi.errors import ConfigError
from medsi.transforms.spatial._geometry import (
    RAS_FROM_LPS,
    affine_to_sitk,
    check_affine,
    load_template,
    split_shear,
)
from medsi.transforms.spatial._grid import _as_volume, slice_geometry

__all__ = [
    "Registration",
    "RegistrationConfig",
    "register_affine",
    "identity_registration",
]

# Voxels at or above this share of the robust intensity range belong to the crude foreground.
_FOREGROUND_LEVEL = 0.1
# Largest optimiser step, as a share of the level's resolution (mm of point motion).
_STEP = 0.5
# The metric samples the foreground and this many mm around it, so that the template's
# brain edge is seen even where the scan is skull-stripped (mm, in-plane only when sparse).
_MARGIN = 12.0


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of :func:`register_affine` and of its quality check.

    Parameters
    ----------
    levels
        Resolutions of the multi-resolution schedule, mm, coarse to fine. At each level the
        scan is block-averaged along every axis whose voxels are smaller (integer factors,
        never along a sparse slice axis) and the template is block-averaged to that spacing.
    iterations
        Most optimiser iterations per level and stage.
    sampling
        Share of the level's scan voxels drawn at random (once per level, from ``seed``)
        for the metric, in (0, 1]; draws outside the sampling region (the foreground and
        12 mm around it) are dropped.
    bins
        Histogram bins of the Mattes mutual information.
    seed
        Seed of the metric's random sampling, >= 1 (SimpleITK reads 0 as "seed from the
        clock"); with a fixed seed and one thread the result is bit-reproducible.
    scale_range
        Allowed (lowest, highest) principal scale of the template-to-scan map.
    max_anisotropy
        Allowed ratio of the largest to the smallest principal scale (a bound on shear and
        uneven stretching).
    max_metric
        The final Mattes metric (negative mutual information, nats, all foreground samples
        at the finest level) must be at most this.
    min_overlap
        Share of the warped template brain that must fall on the scan's foreground.
    threads
        SimpleITK threads for the registration and its filters. 1 (the default) gives the
        same matrix on every run; with more, the metric's parallel sums change the last
        digits between runs (measured: 5e-5 mm), enough to flip a voxel on the threshold.

    Raises
    ------
    ConfigError
        If a value is out of its range.
    """

    levels: tuple[float, ...] = (6.0, 3.0)
    iterations: int = 100
    sampling: float = 0.25
    bins: int = 32
    seed: int = 1
    scale_range: tuple[float, float] = (0.7, 1.4)
    max_anisotropy: float = 1.3
    max_metric: float = -0.1
    min_overlap: float = 0.85
    threads: int = 1

    def __post_init__(self) -> None:
        levels = tuple(float(v) for v in self.levels)
        if not levels or any(not np.isfinite(v) or v < 1.0 for v in levels):
            raise ConfigError(
                f'"levels" must be one or more resolutions >= 1 mm, got {self.levels!r}; '
                "pass e.g. (6.0, 3.0)."
            )
        object.__setattr__(self, "levels", levels)
        checks = [
            ("iterations", self.iterations >= 1, "100"),
            ("sampling", 0.0 < self.sampling <= 1.0, "0.25"),
            ("bins", self.bins >= 4, "32"),
            ("max_anisotropy", self.max_anisotropy >= 1.0, "1.3"),
            ("min_overlap", 0.0 <= self.min_overlap <= 1.0, "0.85"),
            ("threads", self.threads >= 1, "2"),
            ("seed", self.seed >= 1, "1"),
            ("scale_range", 0.0 < self.scale_range[0] < 1.0 < self.scale_range[1], "(0.7, 1.4)"),
        ]
        for name, ok, example in checks:
            if not ok:
                raise ConfigError(
                    f'"{name}" is out of range, got {getattr(self, name)!r}; pass e.g. {example}.'
                )


@dataclass(frozen=True, eq=False)
class Registration:
    """Result of registering the template to a scan.

    Parameters
    ----------
    matrix
        (4, 4) float64, maps TEMPLATE RAS+ world points (mm) to SCAN RAS+ world points.
        When ``passed`` is False it is still the optimiser's answer (``initial`` if
        SimpleITK failed, the identity if the scan has no foreground): prefer ``initial``
        or an intensity-based fallback then.
    method
        ``"affine-mi"`` (Mattes mutual information, 12 degrees of freedom) or ``"identity"``
        (the scan is already in template space: ``--registered``).
    metric
        Final Mattes metric (negative mutual information, nats; lower is better); NaN for
        ``"identity"`` or when the optimiser failed.
    passed
        Whether the quality check passed.
    reason
        Plain-English verdict: what passed or, on failure, every check that failed.
    seconds
        Wall time of the registration.
    overlap
        Share of the warped template brain lying on the scan's crude foreground (NaN when
        not measured).
    scales
        Principal scales (singular values) of the 3 x 3 part of ``matrix``.
    initial
        (4, 4) the centre-of-mass alignment the optimiser started from (template -> scan,
        translation only); a safe geometry when ``passed`` is False. None for
        ``"identity"``.
    """

    matrix: np.ndarray
    method: str
    metric: float
    passed: bool
    reason: str
    seconds: float
    overlap: float = float("nan")
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
    initial: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        matrix = check_affine(self.matrix, "matrix")
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)
        if self.initial is not None:
            initial = check_affine(self.initial, "initial")
            initial.setflags(write=False)
            object.__setattr__(self, "initial", initial)
        if self.method not in ("affine-mi", "identity"):
            raise ConfigError(
                f'"method" must be "affine-mi" or "identity", got {self.method!r}; use '
                "register_affine() or identity_registration()."
            )

    @property
    def resampling_matrix(self) -> np.ndarray:
        """The template-to-scan matrix to resample with.

        ``matrix`` when the check passed; otherwise ``initial`` (the centre-of-mass
        alignment, which trusts the scan's header orientation and assumes a template-sized
        head) when there is one, else ``matrix``.

        Returns
        -------
        numpy.ndarray
            (4, 4) float64, read-only.
        """
        if self.passed or self.initial is None:
            return self.matrix
        return self.initial

    def describe(self) -> str:
        """One plain-English line for the run's notes.

        Returns
        -------
        str
            E.g. ``"registered the template to the scan (affine, Mattes MI, metric -0.52,
            brain overlap 0.97, 4.1 s, passed)"``.
        """
        if self.method == "identity":
            return f"no registration: {self.reason}"
        verdict = "passed" if self.passed else f"FAILED: {self.reason}"
        return (
            "registered the template to the scan (affine, Mattes MI, "
            f"metric {self.metric:.3f}, brain overlap {self.overlap:.2f}, "
            f"{self.seconds:.1f} s, {verdict})"
        )


def identity_registration(
    reason: str = "the scan is already in template space (--registered)",
) -> Registration:
    """The registration of a scan that is already in template space.

    Parameters
    ----------
    reason
        Why no registration was run (kept in the result and the notes).

    Returns
    -------
    Registration
        ``matrix`` the identity, ``method`` ``"identity"``, ``passed`` True.

    Examples
    --------
    >>> r = identity_registration()
    >>> r.method, r.passed, r.matrix.tolist() == np.eye(4).tolist()
    ('identity', True, True)
    """
    return Registration(np.eye(4), "identity", float("nan"), True, reason, 0.0)


# ---------------------------------------------------------------------------------------
# helpers


def _itk_to_matrix(transform: sitk.Transform) -> np.ndarray:
    """(4, 4) LPS matrix of an ITK affine-like transform (fixed -> moving points)."""
    linear = np.array(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.array(transform.GetCenter(), dtype=np.float64)
    translation = np.array(transform.GetTranslation(), dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = translation + centre - linear @ centre
    return out


def _foreground(arr: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Crude foreground: valid voxels above 10 % of the 1st..99th percentile range."""
    values = arr[ok]
    if values.size == 0:
        return np.zeros(arr.shape, dtype=bool)
    low, high = np.percentile(values, [1.0, 99.0])
    return ok & (arr > low + _FOREGROUND_LEVEL * (high - low))


def _shrink_factors(
    spacing: np.ndarray, shape: tuple[int, ...], target: float, keep_axis: int | None
) -> list[int]:
    factors = [max(1, min(int(target / s + 0.5), n)) for s, n in zip(spacing, shape, strict=True)]
    if keep_axis is not None:
        factors[keep_axis] = 1
    return factors


def _bin_shrink(image: sitk.Image, factors: list[int], threads: int) -> sitk.Image:
    if all(f == 1 for f in factors):
        return image
    shrink = sitk.BinShrinkImageFilter()
    shrink.SetShrinkFactors(factors)
    shrink.SetNumberOfThreads(threads)
    return shrink.Execute(image)


@lru_cache(maxsize=4)
def _template_level(factor: int, threads: int) -> tuple[sitk.Image, sitk.Image]:
    """Template T1 and brain mask (float, 0..1) block-averaged by ``factor``."""
    template = load_template()
    t1 = affine_to_sitk(template["t1"], template["affine"])
    brain = affine_to_sitk(template["brain"].astype(np.float32), template["affine"])
    return (
        _bin_shrink(t1, [factor] * 3, threads),
        _bin_shrink(brain, [factor] * 3, threads),
    )


def _dilate(mask: np.ndarray, sparse_axis: int | None, iterations: int) -> np.ndarray:
    if iterations < 1:
        return mask
    structure = ndimage.generate_binary_structure(3, 1)
    if sparse_axis is not None:
        index = [slice(None)] * 3
        index[sparse_axis] = [0, 2]
        structure[tuple(index)] = False
    return ndimage.binary_dilation(mask, structure, iterations=iterations)


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(mask, axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
    return np.moveaxis(filled, 0, axis)


def _new_method(
    config: RegistrationConfig, fixed_mask: sitk.Image, max_step: float = 1.0
) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(config.threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.bins)
    method.SetMetricFixedMask(fixed_mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(config.sampling, config.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-3,
        numberOfIterations=config.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
        estimateLearningRate=method.Once,
        maximumStepSizeInPhysicalUnits=max_step,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _principal_scales(linear: np.ndarray) -> np.ndarray:
    return np.linalg.svd(linear, compute_uv=False)


# ---------------------------------------------------------------------------------------


def _global_threads(register):
    """Run ``register`` with SimpleITK's global thread count set to ``config.threads``.

    Filters created inside ITK's metric and optimiser use the global default, not the
    method's own setting, so one thread is only one thread (and reproducible) this way.
    """

    @wraps(register)
    def wrapper(*args, config: RegistrationConfig | None = None, **kwargs):
        threads = config.threads if isinstance(config, RegistrationConfig) else 1
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            return register(*args, config=config, **kwargs)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)

    return wrapper


@_global_threads
def register_affine(
    array: np.ndarray,
    affine: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    config: RegistrationConfig | None = None,
) -> Registration:
    """Register the bundled template to a scan: affine, Mattes mutual information.

    Steps: (1) a crude foreground of the scan (valid voxels above 10 % of its 1st..99th
    percentile range), dilated by 12 mm (in-plane only for sparse slices), bounds where the
    metric samples; (2) the start is the translation that puts the template brain's centre
    of mass on the foreground's; (3) a similarity stage (rotation, translation, one scale)
    at the coarsest level, then 12-dof affine stages at every level of ``config.levels``,
    each a regular-step gradient descent on the Mattes metric with parameter scales from
    physical shifts and steps of at most half the level's resolution; (4) the quality check:
    final metric, principal scales and anisotropy, mirroring, and the share of the warped
    template brain on the scan's foreground (holes filled slice by slice).

    Sheared scan affines (which an ITK image cannot hold) are split by :func:`split_shear`:
    the registration runs on the orthogonal part and the shear is put back in world space,
    exactly, since the map is affine anyway.

    Parameters
    ----------
    array
        (X, Y, Z) or (1, X, Y, Z) scan intensities, any MRI contrast.
    affine
        (4, 4) voxel-to-world matrix of the scan, RAS+ mm.
    valid
        Same spatial shape, bool: False at voxels without data; None: finite voxels.
    config
        Schedule and quality limits; None: :class:`RegistrationConfig` defaults.

    Returns
    -------
    Registration
        ``method="affine-mi"``; ``passed`` False with the failed checks in ``reason`` when
        the quality check fails or SimpleITK raises (registration problems are reported,
        not raised).

    Raises
    ------
    ConfigError
        If ``array`` is not 3-D or ``valid`` does not match it.
    InputDataError
        If ``affine`` is not an invertible (4, 4) matrix.
    TypeError
        If ``config`` is not a :class:`RegistrationConfig`.
    """
    start = time.perf_counter()
    cfg = RegistrationConfig() if config is None else config
    if not isinstance(cfg, RegistrationConfig):
        raise TypeError(
            f'"config" must be a RegistrationConfig, got {type(cfg).__name__}; pass '
            "RegistrationConfig(...) or None."
        )
    arr = _as_volume(array, "array").astype(np.float32)
    ok = np.isfinite(arr)
    if valid is not None:
        given = _as_volume(valid, "valid").astype(bool)
        if given.shape != arr.shape:
            raise ConfigError(
                f'"valid" must have the spatial shape of "array" {arr.shape}, got '
                f"{given.shape}; pass the scan's own valid mask."
            )
        ok &= given
    arr = np.where(ok, arr, 0.0).astype(np.float32)
    scan_affine = check_affine(affine)
    orthogonal, correction = split_shear(scan_affine)
    slice_axis, gaps = slice_geometry(scan_affine)
    spacing = np.linalg.norm(orthogonal[:3, :3], axis=0)
    # A slice axis much coarser than the finest level is never shrunk nor dilated along.
    sparse_axis = slice_axis if gaps[slice_axis] > 2.0 * min(cfg.levels) else None

    def failed(reason: str, matrix: np.ndarray, initial: np.ndarray | None) -> Registration:
        seconds = time.perf_counter() - start
        return Registration(
            matrix, "affine-mi", float("nan"), False, reason, seconds, initial=initial
        )

    foreground = _foreground(arr, ok)
    if foreground.sum() < 100:
        return failed(
            f"the scan has too little foreground ({int(foreground.sum())} voxels above 10 % "
            "of its intensity range, at least 100 needed): it is empty, flat or tiny",
            np.eye(4),
            None,
        )
    template = load_template()

    def centroid(mask: np.ndarray, vox2world: np.ndarray) -> np.ndarray:
        index = np.argwhere(mask).mean(axis=0)
        return vox2world[:3, :3] @ index + vox2world[:3, 3]

    scan_centre = centroid(foreground, orthogonal)  # RAS, orthogonal scan world
    template_centre = centroid(template["brain"], template["affine"])
    initial_o = np.eye(4)  # template RAS -> orthogonal scan RAS
    initial_o[:3, 3] = scan_centre - template_centre
    initial = correction @ initial_o

    flip = RAS_FROM_LPS[:3, :3]
    start_tx = sitk.Similarity3DTransform()
    start_tx.SetCenter(tuple(flip @ scan_centre))
    start_tx.SetTranslation(tuple(flip @ (template_centre - scan_centre)))

    fixed_full = affine_to_sitk(arr, orthogonal)
    mask_full = affine_to_sitk(foreground.astype(np.float32), orthogonal)
    transform: sitk.Transform = start_tx
    levels = []
    for target in cfg.levels:
        factors = _shrink_factors(spacing, arr.shape, target, sparse_axis)
        fixed = _bin_shrink(fixed_full, factors, cfg.threads)
        fg = sitk.GetArrayFromImage(_bin_shrink(mask_full, factors, cfg.threads)) > 0.5
        mask = sitk.GetImageFromArray(
            _dilate(
                fg, None if sparse_axis is None else 2 - sparse_axis, int(np.ceil(_MARGIN / target))
            ).astype(np.uint8)
        )
        mask.CopyInformation(fixed)
        moving, brain = _template_level(max(1, int(target + 0.5)), cfg.threads)
        levels.append((fixed, mask, moving, brain, fg, target * _STEP))

    try:
        first = _new_method(cfg, levels[0][1], levels[0][5])
        first.SetInitialTransform(start_tx, inPlace=True)
        first.Execute(levels[0][0], levels[0][2])
        affine_tx = sitk.AffineTransform(3)
        affine_tx.SetCenter(start_tx.GetCenter())
        affine_tx.SetMatrix(start_tx.GetMatrix())
        affine_tx.SetTranslation(start_tx.GetTranslation())
        for fixed, mask, moving, _, _, step in levels:
            method = _new_method(cfg, mask, step)
            method.SetInitialTransform(affine_tx, inPlace=True)
            method.Execute(fixed, moving)
        transform = affine_tx
        fixed, mask, moving, brain, fg, _ = levels[-1]
        final = _new_method(cfg, mask)
        final.SetMetricSamplingStrategy(final.NONE)
        final.SetInitialTransform(transform, inPlace=False)
        metric = float(final.MetricEvaluate(fixed, moving))
        warped = sitk.Resample(brain, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    except RuntimeError as error:
        return failed(f"SimpleITK failed: {str(error).strip().splitlines()[-1]}", initial, initial)

    lps = _itk_to_matrix(transform)  # orthogonal scan LPS -> template LPS
    matrix = correction @ np.linalg.inv(RAS_FROM_LPS @ lps @ RAS_FROM_LPS)
    scales = _principal_scales(matrix[:3, :3])
    warped_brain = sitk.GetArrayFromImage(warped) > 0.5
    fg_filled = _fill_slices(fg, 2 - slice_axis)
    n_brain = int(warped_brain.sum())
    overlap = float((warped_brain & fg_filled).sum() / n_brain) if n_brain else 0.0

    problems = []
    if not np.isfinite(metric) or metric > cfg.max_metric:
        problems.append(
            f"the Mattes metric {metric:.3f} is above {cfg.max_metric}: the template and the "
            "scan share too little information (an unrelated image?)"
        )
    low, high = cfg.scale_range
    if scales.min() < low or scales.max() > high:
        problems.append(f"the principal scales {np.round(scales, 2).tolist()} leave {low}..{high}")
    if scales.max() > cfg.max_anisotropy * scales.min():
        problems.append(
            f"the scales differ by a factor {scales.max() / scales.min():.2f} > "
            f"{cfg.max_anisotropy} (shear or uneven stretch)"
        )
    if np.linalg.det(matrix[:3, :3]) <= 0:
        problems.append("the map mirrors the template")
    if n_brain == 0:
        problems.append("the warped template brain misses the scan's field of view")
    elif overlap < cfg.min_overlap:
        problems.append(
            f"only {overlap:.2f} of the warped template brain lies on the scan's foreground "
            f"(< {cfg.min_overlap})"
        )
    seconds = time.perf_counter() - start
    common = dict(overlap=overlap, scales=tuple(float(s) for s in scales), initial=initial)
    if problems:
        return Registration(
            matrix, "affine-mi", metric, False, "; ".join(problems), seconds, **common
        )
    reason = (
        f"metric {metric:.3f} <= {cfg.max_metric}, scales {np.round(scales, 2).tolist()}, "
        f"brain overlap {overlap:.2f} >= {cfg.min_overlap}"
    )
    return Registration(matrix, "affine-mi", metric, True, reason, seconds, **common)
