"""The paper's synthetic images (its Section 5.1; issue 3, "The paper's synthetic experiments").

``iid``: every pixel N(0, 1). ``corr``: the flattened image is N(0, S) with
S_ij = 0.5^|i - j| over row-major pixel indices (:meth:`medsi.si.Dense.autoregressive`). For
power, a square of side ``size // 3`` at a uniformly random position gets ``+signal``.
"""

import math
import numbers

import numpy as np

from medsi.errors import ConfigError
from medsi.si.covariance import MAX_DENSE_SIZE, Dense

__all__ = ["synthetic_images", "SYNTHETIC_KINDS", "CORR_RHO"]

SYNTHETIC_KINDS = ("iid", "corr")
"""The noise models of :func:`synthetic_images`."""

CORR_RHO = 0.5
"""Correlation of neighbouring flattened pixel indices in the ``corr`` setting."""


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'"{name}" must be an int, got {type(value).__name__}; pass an integer.')
    if value < 1:
        raise ConfigError(f'"{name}" must be an integer >= 1, got {value}; pass a larger value.')
    return int(value)


def synthetic_images(
    kind: str,
    size: int,
    n: int,
    rng: np.random.Generator,
    signal: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the paper's synthetic noise images, optionally with a square signal.

    The noise of all ``n`` images is drawn first, then (when ``signal`` > 0) the top-left
    corner of each image's square, row then column, from ``rng.integers``; the same ``rng``
    state therefore gives the same images.

    Parameters
    ----------
    kind
        ``"iid"`` (pixels N(0, 1)) or ``"corr"`` (flattened pixels N(0, S), S_ij = 0.5^|i - j|).
    size
        Side of the square images, in pixels; ``size * size`` at most 4096 for ``"corr"``.
    n
        Number of images.
    rng
        The generator every draw comes from (no global random state is used).
    signal
        Mean shift added to a square of side ``size // 3`` at a random position in each image;
        0 (the default) gives null images with empty masks.

    Returns
    -------
    images : numpy.ndarray
        (n, size, size), float64.
    masks : numpy.ndarray
        (n, size, size), bool: the pixels that got the signal (all False when ``signal`` is 0).

    Raises
    ------
    ConfigError
        If ``kind`` is unknown, ``size`` or ``n`` is < 1, ``signal`` is negative or not finite,
        ``signal`` > 0 with ``size`` < 3 (no room for a square), or ``kind`` is ``"corr"`` with
        more than 4096 pixels.
    TypeError
        If ``size`` or ``n`` is not an int, ``signal`` is not a real number or ``rng`` is not a
        ``numpy.random.Generator``.

    Examples
    --------
    >>> import numpy as np
    >>> images, masks = synthetic_images("iid", 9, 2, np.random.default_rng(0), signal=2.0)
    >>> images.shape, masks.sum(axis=(1, 2)).tolist()
    ((2, 9, 9), [9, 9])
    """
    if kind not in SYNTHETIC_KINDS:
        raise ConfigError(
            f'"kind" must be one of {", ".join(SYNTHETIC_KINDS)}, got {kind!r}; pass "iid" for '
            'independent N(0, 1) pixels or "corr" for correlated ones.'
        )
    size = _count("size", size)
    n = _count("n", n)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f'"rng" must be a numpy.random.Generator, got {type(rng).__name__}; '
            "pass numpy.random.default_rng(seed)."
        )
    if isinstance(signal, bool) or not isinstance(signal, numbers.Real):
        raise TypeError(
            f'"signal" must be a real number, got {type(signal).__name__}; pass e.g. 2.0.'
        )
    signal = float(signal)
    if not (math.isfinite(signal) and signal >= 0.0):
        raise ConfigError(
            f'"signal" must be finite and >= 0, got {signal!r}; pass 0 for null images or a '
            "positive mean shift such as 1, 2, 3 or 4."
        )
    side = size // 3
    if signal > 0.0 and side == 0:
        raise ConfigError(
            f'"size" must be >= 3 when "signal" > 0 (the square has side size // 3), got '
            f"{size}; use larger images or signal 0."
        )

    match kind:
        case "iid":
            images = rng.standard_normal((n, size, size))
        case "corr":
            if size * size > MAX_DENSE_SIZE:
                raise ConfigError(
                    f'"size" must be at most {math.isqrt(MAX_DENSE_SIZE)} for "corr" images '
                    f"(a dense {MAX_DENSE_SIZE}-pixel covariance), got {size}; use smaller "
                    'images or kind "iid".'
                )
            covariance = Dense.autoregressive((size, size), rho=CORR_RHO)
            images = covariance.sample((size, size), rng, n)
        case _:
            raise ValueError(f"unhandled synthetic kind {kind!r}")

    masks = np.zeros((n, size, size), dtype=bool)
    if signal > 0.0:
        corners = rng.integers(0, size - side + 1, size=(n, 2))
        for mask, (row, col) in zip(masks, corners, strict=True):
            mask[row : row + side, col : col + side] = True
        images = images + signal * masks
    return np.ascontiguousarray(images, dtype=np.float64), masks
