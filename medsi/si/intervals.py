"""Set algebra on finite unions of closed intervals of the real line.

A union is an (m, 2) float array of rows ``[lower, upper]``; ends may be infinite.
Functions return *normalised* unions: sorted, disjoint, with touching intervals merged.
"""

from __future__ import annotations

import numpy as np

from medsi.errors import ConfigError

__all__ = ["as_intervals", "merge", "complement", "intersect", "union", "contains", "length"]


def as_intervals(intervals) -> np.ndarray:
    """Validate and convert to an (m, 2) float64 array (not merged).

    Parameters
    ----------
    intervals
        Array-like of ``[lower, upper]`` rows, or empty.

    Returns
    -------
    numpy.ndarray
        (m, 2) float64.

    Raises
    ------
    ConfigError
        If the shape is wrong, an end is NaN or some ``lower > upper``.
    """
    try:
        arr = np.asarray(intervals, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f'"intervals" must be numbers in rows [lower, upper], got {intervals!r}; '
            "pass an (m, 2) array."
        ) from e
    if arr.size == 0:
        return np.empty((0, 2))
    arr = arr.reshape(-1, 2) if arr.ndim == 1 and arr.size == 2 else arr
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ConfigError(
            f'"intervals" must have shape (m, 2), got {arr.shape}; pass rows [lower, upper].'
        )
    if np.isnan(arr).any() or (arr[:, 0] > arr[:, 1]).any():
        raise ConfigError(
            '"intervals" must have lower <= upper and no NaN; got '
            f"{arr[np.isnan(arr).any(1) | (arr[:, 0] > arr[:, 1])][:3].tolist()}; "
            "check the interval ends."
        )
    return arr


def merge(intervals) -> np.ndarray:
    """Normalise a union: sort, and merge intervals that overlap or touch.

    Examples
    --------
    >>> merge([[2, 3], [0, 1], [1, 1.5]]).tolist()
    [[0.0, 1.5], [2.0, 3.0]]
    """
    arr = as_intervals(intervals)
    if len(arr) <= 1:
        return arr.copy()
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    running_max = np.maximum.accumulate(arr[:, 1])
    starts = np.ones(len(arr), dtype=bool)
    starts[1:] = arr[1:, 0] > running_max[:-1]
    group = np.cumsum(starts) - 1
    lower = arr[starts, 0]
    upper = np.full(len(lower), -np.inf)
    np.maximum.at(upper, group, arr[:, 1])
    return np.stack([lower, upper], axis=1)


def union(*unions) -> np.ndarray:
    """Union of several unions, normalised."""
    parts = [as_intervals(u) for u in unions]
    return merge(np.concatenate(parts, axis=0) if parts else np.empty((0, 2)))


def complement(intervals, lower: float = -np.inf, upper: float = np.inf) -> np.ndarray:
    """The closure of ``[lower, upper]`` minus the union: the gaps, as intervals.

    Gaps are returned with their end points (closed), so a gap shares its ends with
    the neighbouring intervals. Zero-length gaps are dropped.

    Examples
    --------
    >>> complement([[0, 1], [2, 3]], -1, 4).tolist()
    [[-1.0, 0.0], [1.0, 2.0], [3.0, 4.0]]
    """
    arr = merge(intervals)
    arr = arr[(arr[:, 1] >= lower) & (arr[:, 0] <= upper)]
    starts = np.concatenate([[lower], arr[:, 1]])
    ends = np.concatenate([arr[:, 0], [upper]])
    gaps = np.stack([starts, ends], axis=1)
    return merge(gaps[gaps[:, 1] > gaps[:, 0]])


def intersect(first, second) -> np.ndarray:
    """Intersection of two unions, normalised.

    Examples
    --------
    >>> intersect([[0, 2], [3, 5]], [[1, 4]]).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    a, b = merge(first), merge(second)
    if not len(a) or not len(b):
        return np.empty((0, 2))
    # Sweep over the ends: inside both unions where the count of open intervals is 2.
    points = np.concatenate([a[:, 0], b[:, 0], a[:, 1], b[:, 1]])
    steps = np.concatenate([np.ones(len(a) + len(b)), -np.ones(len(a) + len(b))])
    order = np.lexsort((-steps, points))  # at equal points, openings first
    points, depth = points[order], np.cumsum(steps[order])
    opening = np.flatnonzero(depth == 2)
    out = np.stack([points[opening], points[opening + 1]], axis=1)
    return merge(out[out[:, 1] > out[:, 0]])


def contains(intervals, z: float) -> bool:
    """Whether the point ``z`` lies in the union."""
    arr = as_intervals(intervals)
    return bool(((arr[:, 0] <= z) & (z <= arr[:, 1])).any())


def length(intervals) -> float:
    """Total length of a union (overlaps counted once)."""
    arr = merge(intervals)
    return float((arr[:, 1] - arr[:, 0]).sum())
