"""Noise covariance models of the selective test (DESIGN.md section 2, "Covariance").

The image model is X = s + e with e ~ N(0, S) for an image of shape (H, W), its pixels
flattened row-major into a vector of length n = H * W (DESIGN.md section 1). The engine only
ever needs S v and v^T S v for one image-shaped vector v (v = eta restricted to one image), so
the structured kinds never build the n x n matrix S:

- :class:`Isotropic`: S = variance * I (the paper's iid setting);
- :class:`Diagonal`: a per-pixel variance map;
- :class:`Stationary`: a spatial autocovariance kernel, applied by convolution;
- :class:`Dense`: an explicit n x n matrix for small images, e.g. the paper's ``corr`` setting
  S_ij = rho^|i - j| (:meth:`Dense.autoregressive`).

A reference image that averages ``count`` independent images has covariance
``S.scaled(1 / count)``.

Examples
--------
>>> import numpy as np
>>> from medsi.si.covariance import Isotropic, Stationary
>>> v = np.zeros((4, 5))
>>> v[1, 2] = 1.0
>>> Isotropic(2.0).quadratic(v)
2.0
>>> cov = Stationary(np.array([[0.0, 0.25, 0.0], [0.25, 1.0, 0.25], [0.0, 0.25, 0.0]]))
>>> cov.apply(v)[1, 1:4]
array([0.25, 1.  , 0.25])
>>> cov.scaled(0.5).quadratic(v)
0.5
"""

from __future__ import annotations

import abc
import numbers
import warnings

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.optimize
import scipy.signal

from medsi.errors import ConfigError

__all__ = ["MAX_DENSE_SIZE", "Covariance", "Isotropic", "Diagonal", "Stationary", "Dense"]

MAX_DENSE_SIZE = 4096
"""Largest number of pixels n for which an n x n matrix is built (64 x 64 images)."""

# A spectrum or eigenvalue below -_PSD_RTOL times its scale is "clearly negative"; smaller
# negative values are round-off and are treated as zero.
_PSD_RTOL = 1e-10
# Relative tolerance of the symmetry checks (point reflection of kernels, transpose of matrices).
_SYMMETRY_RTOL = 1e-10


# --------------------------------------------------------------------------- validation helpers


def _positive_scalar(value, name: str, hint: str) -> float:
    """Return ``value`` as a float after checking it is a finite number > 0.

    Parameters
    ----------
    value
        The number to check.
    name
        The argument's name, used in the error message.
    hint
        What to do instead, the last part of the error message.

    Returns
    -------
    float
        ``value`` as a Python float.

    Raises
    ------
    TypeError
        If ``value`` is not a real number (bool counts as not a number).
    ConfigError
        If ``value`` is not finite or not > 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'"{name}" must be a real number, got {type(value).__name__}; {hint}.')
    result = float(value)
    if not (np.isfinite(result) and result > 0):
        raise ConfigError(f'"{name}" must be finite and > 0, got {value!r}; {hint}.')
    return result


def real_array(value, name: str) -> np.ndarray:
    """Return ``value`` as a float64 array after checking it is a real numpy array.

    Parameters
    ----------
    value
        The array to check.
    name
        The argument's name, used in the error message.

    Returns
    -------
    numpy.ndarray
        ``value`` as float64 (not copied when it already is).

    Raises
    ------
    TypeError
        If ``value`` is not a numpy array of integer or floating dtype.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f'"{name}" must be a numpy.ndarray, got {type(value).__name__}; '
            "convert it with numpy.asarray (or tensor.numpy() for a torch tensor)."
        )
    if value.dtype == np.bool_ or not (
        np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
    ):
        raise TypeError(
            f'"{name}" must have a real (integer or floating) dtype, got {value.dtype}; '
            "pass a float64 array."
        )
    return value.astype(np.float64, copy=False)


def _frozen(array: np.ndarray) -> np.ndarray:
    """Return a read-only float64 copy of ``array``."""
    result = np.array(array, dtype=np.float64, copy=True)
    result.setflags(write=False)
    return result


def _as_shape(shape) -> tuple[int, int]:
    """Return ``shape`` as a tuple (H, W) of positive ints.

    Parameters
    ----------
    shape
        An image shape (H, W), as a tuple or list of two ints.

    Returns
    -------
    tuple of int
        (H, W).

    Raises
    ------
    TypeError
        If ``shape`` is not a tuple or list of ints.
    ConfigError
        If ``shape`` does not have two entries or an entry is < 1.
    """
    if not isinstance(shape, tuple | list):
        raise TypeError(
            f'"shape" must be a tuple (H, W), got {type(shape).__name__}; pass e.g. (64, 64).'
        )
    if len(shape) != 2:
        raise ConfigError(
            f'"shape" must have two entries (H, W), got {tuple(shape)!r}; '
            "pass the shape of one 2-D image, e.g. (64, 64)."
        )
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(
                f'"shape" entries must be ints, got {tuple(shape)!r}; pass e.g. (64, 64).'
            )
    if min(shape) < 1:
        raise ConfigError(
            f'"shape" entries must be >= 1, got {tuple(shape)!r}; pass the shape of a '
            "non-empty image."
        )
    return int(shape[0]), int(shape[1])


def _psd_root(matrix: np.ndarray, name: str) -> np.ndarray:
    """Return R with R R^T = ``matrix`` for a symmetric positive semidefinite matrix.

    Uses the Cholesky factor when the matrix is positive definite and the symmetric
    eigendecomposition (negative round-off eigenvalues set to zero) when it is singular.

    Parameters
    ----------
    matrix
        A symmetric (n, n) float64 matrix.
    name
        What the matrix is, used in the error message.

    Returns
    -------
    numpy.ndarray
        (n, n) float64, lower triangular when the Cholesky factor exists.

    Raises
    ------
    ConfigError
        If ``matrix`` has a clearly negative eigenvalue.
    """
    try:
        return np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        pass
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    scale = max(float(np.abs(eigenvalues).max()), np.finfo(np.float64).tiny)
    if eigenvalues[0] < -_PSD_RTOL * scale:
        raise ConfigError(
            f"{name} must be positive semidefinite, got smallest eigenvalue "
            f"{eigenvalues[0]:.3g} (largest {eigenvalues[-1]:.3g}); pass a valid covariance."
        )
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


# --------------------------------------------------------------------------------- base class


class Covariance(abc.ABC):
    """Covariance S of the noise of one image of shape (H, W) (DESIGN.md section 2).

    Pixels are flattened row-major: pixel (y, x) has index y * W + x. Subclasses are
    immutable; their arrays are read-only copies.
    """

    __slots__ = ()

    # -- public API ---------------------------------------------------------------------------

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Check that this covariance can serve images of shape ``shape``.

        Parameters
        ----------
        shape
            Image shape (H, W).

        Raises
        ------
        TypeError
            If ``shape`` is not a tuple or list of ints.
        ConfigError
            If ``shape`` is not a valid (H, W) or does not fit this covariance (a
            :class:`Diagonal` map or a :class:`Dense` matrix of another size).
        """
        self._check_fits(_as_shape(shape))

    def apply(self, v: np.ndarray) -> np.ndarray:
        """Return S v for an image-shaped vector v.

        Parameters
        ----------
        v
            (H, W), real; read as the row-major flattened vector of length H * W.

        Returns
        -------
        numpy.ndarray
            (H, W), float64: S v reshaped to the image.

        Raises
        ------
        TypeError
            If ``v`` is not a real numpy array.
        ConfigError
            If ``v`` is not 2-D or its shape does not fit this covariance.
        """
        v = self._checked_image(v)
        return self._apply(v)

    def quadratic(self, v: np.ndarray) -> float:
        """Return the quadratic form v^T S v for an image-shaped vector v.

        Parameters
        ----------
        v
            (H, W), real; read as the row-major flattened vector of length H * W.

        Returns
        -------
        float
            v^T S v (>= 0 up to round-off).

        Raises
        ------
        TypeError
            If ``v`` is not a real numpy array.
        ConfigError
            If ``v`` is not 2-D or its shape does not fit this covariance.
        """
        v = self._checked_image(v)
        return self._quadratic(v)

    def scaled(self, factor: float) -> Covariance:
        """Return the covariance factor * S, of the same kind.

        A reference image that is the mean of ``count`` independent images with covariance S
        has covariance ``S.scaled(1 / count)``.

        Parameters
        ----------
        factor
            Positive finite multiplier.

        Returns
        -------
        Covariance
            A new object of the same class; ``self`` is unchanged.

        Raises
        ------
        TypeError
            If ``factor`` is not a real number.
        ConfigError
            If ``factor`` is not finite or not > 0.
        """
        factor = _positive_scalar(factor, "factor", "pass a positive multiplier such as 1 / count")
        return self._scaled(factor)

    def to_dense(self, shape: tuple[int, int]) -> np.ndarray:
        """Return the n x n matrix S for images of shape ``shape``.

        For small images and tests only: the engine never needs this matrix, and it takes
        8 n^2 bytes (128 MiB at 64 x 64).

        Parameters
        ----------
        shape
            Image shape (H, W); n = H * W must not exceed :data:`MAX_DENSE_SIZE`.

        Returns
        -------
        numpy.ndarray
            (n, n), float64, symmetric; entry (i, j) is Cov(pixel i, pixel j) with pixels
            flattened row-major.

        Raises
        ------
        TypeError
            If ``shape`` is not a tuple or list of ints.
        ConfigError
            If ``shape`` does not fit this covariance or n > :data:`MAX_DENSE_SIZE`.
        """
        shape = _as_shape(shape)
        self._check_fits(shape)
        n = shape[0] * shape[1]
        if n > MAX_DENSE_SIZE:
            raise ConfigError(
                f'"shape" must have at most {MAX_DENSE_SIZE} pixels for a dense matrix, got '
                f"{shape!r} ({n} pixels); use apply and quadratic, which need no matrix."
            )
        return self._dense(shape)

    def sample(
        self,
        shape: tuple[int, int],
        rng: np.random.Generator,
        size: int | None = None,
    ) -> np.ndarray:
        """Draw noise images e ~ N(0, S).

        Parameters
        ----------
        shape
            Image shape (H, W).
        rng
            The generator to draw from (no global random state is used).
        size
            Number of independent images; None for one image without a leading axis.

        Returns
        -------
        numpy.ndarray
            (H, W) when ``size`` is None, else (size, H, W); float64.

        Raises
        ------
        TypeError
            If ``shape`` is not a tuple or list of ints, ``rng`` is not a
            ``numpy.random.Generator`` or ``size`` is not an int.
        ConfigError
            If ``shape`` does not fit this covariance, ``size`` < 1, or (:class:`Stationary`
            only) the kernel cannot be sampled because it is not positive semidefinite on
            this shape.
        """
        shape = _as_shape(shape)
        self._check_fits(shape)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f'"rng" must be a numpy.random.Generator, got {type(rng).__name__}; '
                "pass numpy.random.default_rng(seed)."
            )
        if size is None:
            return self._sample(shape, rng, 1)[0]
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(
                f'"size" must be an int or None, got {type(size).__name__}; '
                "pass the number of images to draw."
            )
        if size < 1:
            raise ConfigError(
                f'"size" must be >= 1, got {size}; pass the number of images to draw, '
                "or None for one image."
            )
        return self._sample(shape, rng, int(size))

    # -- hooks for subclasses -----------------------------------------------------------------

    def _check_fits(self, shape: tuple[int, int]) -> None:
        """Raise ConfigError if this covariance cannot serve images of the valid ``shape``."""
        return None

    @abc.abstractmethod
    def _apply(self, v: np.ndarray) -> np.ndarray:
        """Return S v for a checked float64 image ``v`` of shape (H, W)."""

    def _quadratic(self, v: np.ndarray) -> float:
        """Return v^T S v for a checked float64 image ``v`` of shape (H, W)."""
        return float(np.vdot(v, self._apply(v)))

    @abc.abstractmethod
    def _scaled(self, factor: float) -> Covariance:
        """Return factor * S for a checked positive finite ``factor``."""

    @abc.abstractmethod
    def _dense(self, shape: tuple[int, int]) -> np.ndarray:
        """Return the (n, n) matrix for a checked ``shape`` with n <= MAX_DENSE_SIZE."""

    @abc.abstractmethod
    def _sample(self, shape: tuple[int, int], rng: np.random.Generator, count: int) -> np.ndarray:
        """Return ``count`` draws of shape (count, H, W) for a checked ``shape``."""

    # -- helpers ------------------------------------------------------------------------------

    def _checked_image(self, v) -> np.ndarray:
        """Return ``v`` as a float64 (H, W) array after checking its type and shape."""
        v = real_array(v, "v")
        if v.ndim != 2:
            raise ConfigError(
                f'"v" must be a 2-D image (H, W), got an array of shape {v.shape}; '
                "pass one image-shaped vector at a time."
            )
        self.check_shape(v.shape)
        return v

    def _new(self, **attributes) -> Covariance:
        """Return a new object of this class with the given (already valid) attributes."""
        result = object.__new__(type(self))
        for key, value in attributes.items():
            object.__setattr__(result, key, value)
        return result

    def __setattr__(self, key, value):
        raise AttributeError(f"{type(self).__name__} is immutable; build a new object instead.")

    def __delattr__(self, key):
        raise AttributeError(f"{type(self).__name__} is immutable; build a new object instead.")


# ---------------------------------------------------------------------------------- isotropic


class Isotropic(Covariance):
    """Independent pixels of equal variance: S = variance * I.

    Parameters
    ----------
    variance
        Noise variance of every pixel, in squared image intensity units; finite and > 0.

    Raises
    ------
    TypeError
        If ``variance`` is not a real number.
    ConfigError
        If ``variance`` is not finite or not > 0.
    """

    __slots__ = ("_variance",)

    def __init__(self, variance: float):
        object.__setattr__(
            self,
            "_variance",
            _positive_scalar(variance, "variance", "pass the noise variance, e.g. 1.0"),
        )

    @property
    def variance(self) -> float:
        """Noise variance of every pixel."""
        return self._variance

    def __repr__(self) -> str:
        return f"Isotropic(variance={self._variance!r})"

    def _apply(self, v):
        return self._variance * v

    def _quadratic(self, v):
        return self._variance * float(np.vdot(v, v))

    def _scaled(self, factor):
        return self._new(_variance=factor * self._variance)

    def _dense(self, shape):
        return self._variance * np.eye(shape[0] * shape[1])

    def _sample(self, shape, rng, count):
        return np.sqrt(self._variance) * rng.standard_normal((count, *shape))


# ----------------------------------------------------------------------------------- diagonal


class Diagonal(Covariance):
    """Independent pixels, each with its own variance: S = diag(variance_map, flattened).

    Parameters
    ----------
    variance_map
        (H, W), real; the noise variance of each pixel, all finite and > 0. The covariance
        serves images of exactly this shape.

    Raises
    ------
    TypeError
        If ``variance_map`` is not a real numpy array.
    ConfigError
        If ``variance_map`` is not 2-D, is empty, or has a value that is not finite or not > 0.
    """

    __slots__ = ("_variance_map",)

    def __init__(self, variance_map: np.ndarray):
        variance_map = real_array(variance_map, "variance_map")
        if variance_map.ndim != 2 or variance_map.size == 0:
            raise ConfigError(
                f'"variance_map" must be a non-empty 2-D array (H, W), got shape '
                f"{variance_map.shape}; pass one variance per pixel of the image."
            )
        bad = ~(np.isfinite(variance_map) & (variance_map > 0))
        if bad.any():
            y, x = (int(i) for i in np.argwhere(bad)[0])
            raise ConfigError(
                '"variance_map" must be finite and > 0 everywhere, got '
                f"{float(variance_map[y, x])!r} at pixel ({y}, {x}) ({int(bad.sum())} bad "
                "pixels); give pixels outside the brain a positive variance too, e.g. the "
                "median of the map."
            )
        object.__setattr__(self, "_variance_map", _frozen(variance_map))

    @property
    def variance_map(self) -> np.ndarray:
        """(H, W), float64, read-only: the noise variance of each pixel."""
        return self._variance_map

    @property
    def shape(self) -> tuple[int, int]:
        """The image shape (H, W) this covariance serves."""
        return self._variance_map.shape

    def __repr__(self) -> str:
        vmap = self._variance_map
        return f"Diagonal(shape={vmap.shape}, variance in [{vmap.min():.4g}, {vmap.max():.4g}])"

    def _check_fits(self, shape):
        if tuple(shape) != self._variance_map.shape:
            raise ConfigError(
                f"Diagonal covariance serves images of shape {self._variance_map.shape}, got "
                f"{tuple(shape)}; pass an image of that shape or a variance map of shape "
                f"{tuple(shape)}."
            )

    def _apply(self, v):
        return self._variance_map * v

    def _quadratic(self, v):
        return float(np.sum(self._variance_map * v * v))

    def _scaled(self, factor):
        return self._new(_variance_map=_frozen(factor * self._variance_map))

    def _dense(self, shape):
        return np.diag(self._variance_map.ravel())

    def _sample(self, shape, rng, count):
        return np.sqrt(self._variance_map) * rng.standard_normal((count, *shape))


# --------------------------------------------------------------------------------- stationary


class Stationary(Covariance):
    """Stationary spatial autocovariance given by a kernel, applied by convolution.

    Cov(pixel (y, x), pixel (y + dy, x + dx)) = kernel[h + dy, w + dx] when |dy| <= h and
    |dx| <= w, and 0 otherwise. S v is the convolution of v with the kernel, zero padded,
    cropped to the image (``scipy.signal.convolve``, ``mode="same"``), so S is the restriction
    of the stationary process to the image and no n x n matrix is built.

    :meth:`sample` draws by circulant embedding: the kernel is wrapped onto a periodic grid
    of at least (H + h, W + w) pixels, whose covariance has the FFT of the wrapped kernel as
    eigenvalues; white noise filtered by their square roots and cropped to (H, W) has exactly
    the covariance S. When the kernel is not positive semidefinite (some eigenvalue clearly
    negative) it falls back to the factor of the dense matrix, for n <= :data:`MAX_DENSE_SIZE`.

    Parameters
    ----------
    kernel
        (2h + 1, 2w + 1), real, finite; kernel[h, w] is the pixel variance (> 0). It must
        be symmetric under point reflection (kernel == kernel[::-1, ::-1]), as every
        autocovariance is; it is symmetrised exactly after the check.

    Raises
    ------
    TypeError
        If ``kernel`` is not a real numpy array.
    ConfigError
        If ``kernel`` is not 2-D with odd sizes, not finite, not symmetric under point
        reflection, or its centre is not > 0.

    Warns
    -----
    UserWarning
        If the kernel is not positive semidefinite: its 2-D Fourier transform, sampled on a
        grid padded to four times the kernel size, has a clearly negative value. Such a
        kernel is no autocovariance; S may still be positive semidefinite on small images.
    """

    __slots__ = ("_kernel",)

    def __init__(self, kernel: np.ndarray):
        kernel = real_array(kernel, "kernel")
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ConfigError(
                f'"kernel" must be a 2-D array of odd sizes (2h + 1, 2w + 1), got shape '
                f"{kernel.shape}; pad it with zeros so that the centre is the zero offset."
            )
        if not np.isfinite(kernel).all():
            raise ConfigError(
                '"kernel" must be finite, got NaN or inf values; pass a finite autocovariance.'
            )
        h, w = kernel.shape[0] // 2, kernel.shape[1] // 2
        if not kernel[h, w] > 0:
            raise ConfigError(
                f'"kernel" centre (the pixel variance) must be > 0, got {kernel[h, w]!r}; '
                "put the variance at kernel[h, w]."
            )
        reflected = kernel[::-1, ::-1]
        asymmetry = float(np.abs(kernel - reflected).max())
        if asymmetry > _SYMMETRY_RTOL * float(np.abs(kernel).max()):
            raise ConfigError(
                '"kernel" must be symmetric under point reflection (kernel == '
                f"kernel[::-1, ::-1]), got a largest difference of {asymmetry:.3g}; "
                "average it with its reflection, (kernel + kernel[::-1, ::-1]) / 2."
            )
        kernel = _frozen(0.5 * (kernel + reflected))
        object.__setattr__(self, "_kernel", kernel)
        spectrum = _kernel_spectrum(kernel, (4 * kernel.shape[0], 4 * kernel.shape[1]))
        tolerance = _PSD_RTOL * float(np.abs(kernel).sum())
        if spectrum.min() < -tolerance:
            warnings.warn(
                '"kernel" is not positive semidefinite: its Fourier transform reaches '
                f"{spectrum.min():.3g} (largest {spectrum.max():.3g}), so it is no "
                "autocovariance and S may have negative eigenvalues; use "
                "Stationary.gaussian or a kernel estimated with a positive taper.",
                UserWarning,
                stacklevel=2,
            )

    @classmethod
    def gaussian(cls, variance: float, correlation_length: float, radius: int) -> Stationary:
        """Build a Gaussian-shaped kernel that is exactly positive semidefinite.

        The kernel is variance * g(dy) g(dx) on offsets |dy|, |dx| <= radius, with g close to
        the Gaussian correlation exp(-d^2 / (2 l^2)), l the correlation length. It is
        separable, so it is positive semidefinite exactly when the 1-D profile g is. g is the
        truncated Gaussian itself when that is positive semidefinite (a check of its Fourier
        transform with a bound between grid points); otherwise, as happens for l above about
        1.5 pixels, g is the autocorrelation of a filter of radius + 1 taps fitted to the
        Gaussian by least squares, positive semidefinite by construction (within about 1% of
        the Gaussian when radius >= 3 l). Radius 0 gives an isotropic kernel.

        Parameters
        ----------
        variance
            Pixel variance, finite and > 0.
        correlation_length
            l, in pixels, finite and > 0.
        radius
            Half-width of the kernel in pixels (>= 0); the kernel is
            (2 radius + 1, 2 radius + 1) and the covariance is 0 beyond it.

        Returns
        -------
        Stationary
            The covariance with that kernel.

        Raises
        ------
        TypeError
            If an argument has the wrong type.
        ConfigError
            If ``variance`` or ``correlation_length`` is not finite and > 0, or ``radius`` < 0.

        Warns
        -----
        UserWarning
            If the radius is too small for the correlation length: the profile then differs
            from the Gaussian by more than 0.05 (times ``variance``) at some offset.

        Examples
        --------
        >>> cov = Stationary.gaussian(2.0, correlation_length=1.0, radius=3)
        >>> cov.kernel.shape
        (7, 7)
        >>> float(cov.kernel[3, 3])
        2.0
        """
        variance = _positive_scalar(variance, "variance", "pass the pixel variance, e.g. 1.0")
        length = _positive_scalar(
            correlation_length, "correlation_length", "pass a length in pixels, e.g. 1.5"
        )
        if isinstance(radius, bool) or not isinstance(radius, numbers.Integral):
            raise TypeError(
                f'"radius" must be an int, got {type(radius).__name__}; pass a half-width in '
                "pixels such as 3 * correlation_length rounded up."
            )
        if radius < 0:
            raise ConfigError(
                f'"radius" must be >= 0, got {radius}; pass a half-width in pixels such as '
                "3 * correlation_length rounded up."
            )
        radius = int(radius)
        profile, deviation = _gaussian_profile(length, radius)
        if deviation > 0.05:
            warnings.warn(
                f'"radius" {radius} is too small for "correlation_length" {length}: the kernel '
                f"differs from the Gaussian by up to {deviation:.3f} times the variance; use a "
                "radius of at least 3 * correlation_length.",
                UserWarning,
                stacklevel=2,
            )
        return cls(variance * np.outer(profile, profile))

    @property
    def kernel(self) -> np.ndarray:
        """(2h + 1, 2w + 1), float64, read-only: the autocovariance kernel."""
        return self._kernel

    @property
    def variance(self) -> float:
        """The pixel variance, the kernel's centre."""
        h, w = self._kernel.shape[0] // 2, self._kernel.shape[1] // 2
        return float(self._kernel[h, w])

    def __repr__(self) -> str:
        return f"Stationary(kernel shape={self._kernel.shape}, variance={self.variance:.4g})"

    def _apply(self, v):
        return scipy.signal.convolve(v, self._kernel, mode="same")

    def _scaled(self, factor):
        return self._new(_kernel=_frozen(factor * self._kernel))

    def _dense(self, shape):
        h, w = self._kernel.shape[0] // 2, self._kernel.shape[1] // 2
        ys, xs = np.indices(shape).reshape(2, -1)
        dy = ys[None, :] - ys[:, None]
        dx = xs[None, :] - xs[:, None]
        inside = (np.abs(dy) <= h) & (np.abs(dx) <= w)
        values = self._kernel[np.clip(h + dy, 0, 2 * h), np.clip(w + dx, 0, 2 * w)]
        return np.where(inside, values, 0.0)

    def _sample(self, shape, rng, count):
        h, w = self._kernel.shape[0] // 2, self._kernel.shape[1] // 2
        grid = (
            scipy.fft.next_fast_len(max(shape[0] + h, 2 * h + 1), real=True),
            scipy.fft.next_fast_len(max(shape[1] + w, 2 * w + 1), real=True),
        )
        eigenvalues = _kernel_spectrum(self._kernel, grid, half=True)
        tolerance = _PSD_RTOL * float(np.abs(self._kernel).sum())
        if eigenvalues.min() < -tolerance:
            return self._sample_dense(shape, rng, count)
        root = np.sqrt(np.clip(eigenvalues, 0.0, None))
        noise = rng.standard_normal((count, *grid))
        field = scipy.fft.irfft2(root * scipy.fft.rfft2(noise), s=grid)
        return field[:, : shape[0], : shape[1]]

    def _sample_dense(self, shape, rng, count):
        """Draw through the factor of the dense matrix (kernel not positive semidefinite)."""
        n = shape[0] * shape[1]
        if n > MAX_DENSE_SIZE:
            raise ConfigError(
                '"kernel" must be positive semidefinite to sample images of more than '
                f"{MAX_DENSE_SIZE} pixels, got a kernel with negative spectrum and shape "
                f"{shape!r}; use Stationary.gaussian or a positive semidefinite kernel."
            )
        root = _psd_root(self._dense(shape), f"The covariance on shape {shape!r}")
        return (rng.standard_normal((count, n)) @ root.T).reshape(count, *shape)


def _gaussian_profile(length: float, radius: int) -> tuple[np.ndarray, float]:
    """Return a positive semidefinite 1-D profile close to exp(-d^2 / (2 length^2)).

    See :meth:`Stationary.gaussian`. Positive semidefinite means that the trigonometric
    polynomial p(w) = g(0) + 2 sum_d g(d) cos(d w) is >= 0 for every w. It is evaluated by FFT
    on N points; between grid points p cannot drop by more than (pi / N) max|p'|, and
    max|p'| <= 2 sum_d d |g(d)|.

    Parameters
    ----------
    length
        Correlation length l in pixels, > 0.
    radius
        Half-width r >= 0 of the profile.

    Returns
    -------
    profile : numpy.ndarray
        (2 r + 1,), float64, symmetric, centre 1: g(-r) ... g(r).
    deviation : float
        Largest absolute difference between the profile and the Gaussian.
    """
    offsets = np.arange(radius + 1)
    target = np.exp(-(offsets**2) / (2 * length**2))
    size = 1 << int(np.ceil(np.log2(1024 * (radius + 1))))
    wrapped = np.zeros(size)
    wrapped[: radius + 1] = target
    wrapped[size - radius :] = target[:0:-1]
    margin = np.pi / size * 2 * float(np.sum(offsets * target))
    if scipy.fft.rfft(wrapped).real.min() - margin >= 0:
        half = target
    else:
        # g = q * q (autocorrelation of the taps q), fitted to the Gaussian; start from the
        # continuum answer, a Gaussian filter of standard deviation l / sqrt(2).
        positions = offsets - radius / 2
        start = np.exp(-(positions**2) / length**2)
        start /= np.sqrt(np.dot(start, start))

        def residual(taps):
            return np.correlate(taps, taps, mode="full")[radius:] - target

        def jacobian(taps):
            # d/dq_k of sum_j q_j q_(j + d) = q_(k + d) + q_(k - d).
            result = np.zeros((radius + 1, radius + 1))
            for d in range(radius + 1):
                result[d, : radius + 1 - d] += taps[d:]
                result[d, d:] += taps[: radius + 1 - d]
            return result

        taps = scipy.optimize.least_squares(
            residual, start, jac=jacobian, xtol=1e-14, ftol=1e-14, gtol=1e-14
        ).x
        half = np.correlate(taps, taps, mode="full")[radius:]
        half = half / half[0]
    profile = np.concatenate([half[:0:-1], half])
    return profile, float(np.abs(half - target).max())


def _kernel_spectrum(kernel: np.ndarray, grid: tuple[int, int], half: bool = False) -> np.ndarray:
    """Return the real 2-D DFT of ``kernel`` wrapped onto a periodic grid.

    Offset (dy, dx) goes to grid cell (dy mod M1, dx mod M2); the grid must be at least the
    kernel's size. For a kernel symmetric under point reflection the DFT is real: these are
    the eigenvalues of the circulant covariance on the grid, and samples of the kernel's
    Fourier transform (its spectral density).

    Parameters
    ----------
    kernel
        (2h + 1, 2w + 1), float64, symmetric under point reflection.
    grid
        (M1, M2) with M1 >= 2h + 1 and M2 >= 2w + 1.
    half
        Return the half spectrum of ``scipy.fft.rfft2`` (M1, M2 // 2 + 1) instead of the
        full (M1, M2).

    Returns
    -------
    numpy.ndarray
        The spectrum, float64.
    """
    h, w = kernel.shape[0] // 2, kernel.shape[1] // 2
    wrapped = np.zeros(grid)
    wrapped[: kernel.shape[0], : kernel.shape[1]] = kernel
    wrapped = np.roll(wrapped, (-h, -w), axis=(0, 1))
    transform = scipy.fft.rfft2(wrapped) if half else scipy.fft.fft2(wrapped)
    return transform.real


# -------------------------------------------------------------------------------------- dense


class Dense(Covariance):
    """An explicit n x n covariance matrix, for small images only.

    Parameters
    ----------
    matrix
        (n, n), real, finite, symmetric, positive semidefinite, with a positive diagonal;
        n <= :data:`MAX_DENSE_SIZE`. Entry (i, j) is Cov(pixel i, pixel j) with pixels
        flattened row-major; it serves every image shape (H, W) with H * W = n. It is
        symmetrised exactly after the check.

    Raises
    ------
    TypeError
        If ``matrix`` is not a real numpy array.
    ConfigError
        If ``matrix`` is not square 2-D, is larger than :data:`MAX_DENSE_SIZE`, is not
        finite, not symmetric, has a diagonal entry <= 0, or is not positive semidefinite.
    """

    __slots__ = ("_matrix", "_root")

    def __init__(self, matrix: np.ndarray):
        matrix = real_array(matrix, "matrix")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ConfigError(
                f'"matrix" must be a non-empty square 2-D array (n, n), got shape '
                f"{matrix.shape}; pass the covariance of the flattened image."
            )
        n = matrix.shape[0]
        if n > MAX_DENSE_SIZE:
            raise ConfigError(
                f'"matrix" must be at most {MAX_DENSE_SIZE} x {MAX_DENSE_SIZE}, got {n} x {n}; '
                "use Diagonal or Stationary for larger images."
            )
        if not np.isfinite(matrix).all():
            raise ConfigError(
                '"matrix" must be finite, got NaN or inf values; pass a finite covariance.'
            )
        asymmetry = float(np.abs(matrix - matrix.T).max())
        if asymmetry > _SYMMETRY_RTOL * float(np.abs(matrix).max()):
            raise ConfigError(
                f'"matrix" must be symmetric, got a largest |M - M^T| of {asymmetry:.3g}; '
                "pass (M + M.T) / 2 if the asymmetry is round-off."
            )
        diagonal = np.diag(matrix)
        if not (diagonal > 0).all():
            i = int(np.argmin(diagonal))
            raise ConfigError(
                f'"matrix" must have a positive diagonal (every pixel has noise), got '
                f"{diagonal[i]!r} at index {i}; pass a covariance with positive variances."
            )
        matrix = _frozen(0.5 * (matrix + matrix.T))
        root = _frozen(_psd_root(matrix, '"matrix"'))
        object.__setattr__(self, "_matrix", matrix)
        object.__setattr__(self, "_root", root)

    @classmethod
    def autoregressive(
        cls, shape: tuple[int, int], rho: float = 0.5, variance: float = 1.0
    ) -> Dense:
        """Build the paper's ``corr`` setting S_ij = variance * rho^|i - j|.

        i and j are pixel indices of the row-major flattened image (DESIGN.md section 2), so
        the last pixel of a row is correlated with the first pixel of the next.

        Parameters
        ----------
        shape
            Image shape (H, W), with H * W <= :data:`MAX_DENSE_SIZE`.
        rho
            Correlation of neighbouring indices, in (-1, 1); the paper uses 0.5.
        variance
            Pixel variance, finite and > 0.

        Returns
        -------
        Dense
            The (H * W) x (H * W) covariance.

        Raises
        ------
        TypeError
            If an argument has the wrong type.
        ConfigError
            If ``shape`` is invalid or too large, ``rho`` is not in (-1, 1), or ``variance``
            is not finite and > 0.

        Examples
        --------
        >>> Dense.autoregressive((1, 3), rho=0.5).matrix
        array([[1.  , 0.5 , 0.25],
               [0.5 , 1.  , 0.5 ],
               [0.25, 0.5 , 1.  ]])
        """
        shape = _as_shape(shape)
        n = shape[0] * shape[1]
        if n > MAX_DENSE_SIZE:
            raise ConfigError(
                f'"shape" must have at most {MAX_DENSE_SIZE} pixels for a dense matrix, got '
                f"{shape!r} ({n} pixels); use Stationary for larger images."
            )
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
            raise TypeError(
                f'"rho" must be a real number, got {type(rho).__name__}; pass e.g. 0.5.'
            )
        if not -1 < float(rho) < 1:
            raise ConfigError(
                f'"rho" must be in (-1, 1), got {rho!r}; pass a correlation such as 0.5.'
            )
        variance = _positive_scalar(variance, "variance", "pass the pixel variance, e.g. 1.0")
        column = variance * float(rho) ** np.arange(n)
        return cls(scipy.linalg.toeplitz(column))

    @property
    def matrix(self) -> np.ndarray:
        """(n, n), float64, read-only: the covariance of the row-major flattened image."""
        return self._matrix

    @property
    def size(self) -> int:
        """n, the number of pixels of the images this covariance serves."""
        return self._matrix.shape[0]

    def __repr__(self) -> str:
        return f"Dense(n={self.size})"

    def _check_fits(self, shape):
        if shape[0] * shape[1] != self.size:
            raise ConfigError(
                f"Dense covariance serves images of {self.size} pixels, got shape "
                f"{tuple(shape)} ({shape[0] * shape[1]} pixels); pass an image with "
                f"{self.size} pixels or build the matrix for this shape."
            )

    def _apply(self, v):
        return (self._matrix @ v.ravel()).reshape(v.shape)

    def _scaled(self, factor):
        return self._new(
            _matrix=_frozen(factor * self._matrix), _root=_frozen(np.sqrt(factor) * self._root)
        )

    def _dense(self, shape):
        return self._matrix.copy()

    def _sample(self, shape, rng, count):
        noise = rng.standard_normal((count, self.size))
        return (noise @ self._root.T).reshape(count, *shape)
