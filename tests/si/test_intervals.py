import numpy as np
import pytest

from medsi.errors import ConfigError
from medsi.si.intervals import (
    as_intervals,
    complement,
    contains,
    intersect,
    length,
    merge,
    union,
)

INF = np.inf
EMPTY = np.empty((0, 2))


def _assert_union_equal(got, expected):
    got = np.asarray(got)
    assert got.dtype == np.float64
    assert got.shape == np.asarray(expected, dtype=float).reshape(-1, 2).shape
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=float).reshape(-1, 2))


def _assert_normalised(arr, allow_touching=False):
    """Sorted, lower <= upper, and disjoint (strictly separated unless allow_touching)."""
    assert arr.ndim == 2 and arr.shape[1] == 2
    assert (arr[:, 0] <= arr[:, 1]).all()
    gaps = arr[1:, 0] - arr[:-1, 1]
    assert (gaps >= 0).all() if allow_touching else (gaps > 0).all()


# --- as_intervals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "intervals, expected",
    [
        ([], EMPTY),
        (np.empty((0, 2)), EMPTY),
        ([0, 1], [[0, 1]]),
        ([[0, 1]], [[0, 1]]),
        ([[2, 3], [0, 1]], [[2, 3], [0, 1]]),  # not merged, order kept
        ([[1, 1]], [[1, 1]]),
        ([[-INF, INF]], [[-INF, INF]]),
        (np.array([[0, 1]], dtype=np.int64), [[0, 1]]),
    ],
    ids=[
        "empty_list",
        "empty_array",
        "flat_pair",
        "one_row",
        "unsorted_kept",
        "point",
        "whole_line",
        "integers",
    ],
)
def test_as_intervals_converts(intervals, expected):
    _assert_union_equal(as_intervals(intervals), expected)


@pytest.mark.parametrize(
    "intervals, match",
    [
        ([0, 1, 2], r'"intervals" must have shape \(m, 2\), got \(3,\)'),
        ([[0, 1, 2]], r'"intervals" must have shape \(m, 2\), got \(1, 3\)'),
        ([[[0, 1]], [[2, 3]]], r'"intervals" must have shape \(m, 2\), got \(2, 1, 2\)'),
        ([[1, 0]], r'"intervals" must have lower <= upper and no NaN; got \[\[1\.0, 0\.0\]\]'),
        ([[0, 1], [np.nan, 2]], r"must have lower <= upper and no NaN; got \[\[nan, 2\.0\]\]"),
        ([[0, np.nan]], r"must have lower <= upper and no NaN"),
        ([[INF, -INF]], r"must have lower <= upper and no NaN; got \[\[inf, -inf\]\]"),
    ],
    ids=[
        "flat_three",
        "three_columns",
        "three_dims",
        "reversed",
        "nan_lower",
        "nan_upper",
        "reversed_infinite",
    ],
)
def test_as_intervals_refuses(intervals, match):
    with pytest.raises(ConfigError, match=match):
        as_intervals(intervals)


@pytest.mark.parametrize(
    "call",
    [
        lambda bad: merge(bad),
        lambda bad: union([[0, 1]], bad),
        lambda bad: complement(bad, 0, 1),
        lambda bad: intersect([[0, 1]], bad),
        lambda bad: intersect(bad, [[0, 1]]),
        lambda bad: contains(bad, 0.5),
        lambda bad: length(bad),
    ],
    ids=[
        "merge",
        "union",
        "complement",
        "intersect_second",
        "intersect_first",
        "contains",
        "length",
    ],
)
@pytest.mark.parametrize(
    "bad, match",
    [([[1, 0]], "lower <= upper"), ([[0, 1, 2]], r"shape \(m, 2\)")],
    ids=["reversed", "bad_shape"],
)
def test_every_operation_validates(call, bad, match):
    with pytest.raises(ConfigError, match=match):
        call(bad)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        as_intervals([[1, 0]])


# --- merge / union -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "intervals, expected",
    [
        ([], EMPTY),
        ([[0, 1]], [[0, 1]]),
        ([[2, 3], [0, 1]], [[0, 1], [2, 3]]),
        ([[0, 1], [1, 2]], [[0, 2]]),
        ([[1, 2], [0, 1]], [[0, 2]]),
        ([[0, 1], [0.5, 2]], [[0, 2]]),
        ([[0, 10], [2, 3], [4, 5]], [[0, 10]]),
        ([[0, 10], [2, 3], [11, 12]], [[0, 10], [11, 12]]),
        ([[0, 1], [0, 1]], [[0, 1]]),
        ([[1, 1]], [[1, 1]]),
        ([[1, 1], [0, 2]], [[0, 2]]),
        ([[0, 1], [1, 1], [1, 2]], [[0, 2]]),
        ([[0, 1], [1.5, 1.5], [3, 4]], [[0, 1], [1.5, 1.5], [3, 4]]),
        ([[0, 1], [np.nextafter(1, 2), 2]], [[0, 1], [np.nextafter(1, 2), 2]]),
        ([[-INF, 0], [-1, 1]], [[-INF, 1]]),
        ([[0, INF], [1, 2]], [[0, INF]]),
        ([[-INF, 0], [1, INF]], [[-INF, 0], [1, INF]]),
        ([[-INF, 0], [0, INF]], [[-INF, INF]]),
        ([[-INF, INF], [0, 1]], [[-INF, INF]]),
        ([[-INF, -INF]], [[-INF, -INF]]),
    ],
    ids=[
        "empty",
        "single",
        "unsorted",
        "touching",
        "touching_unsorted",
        "overlapping",
        "nested_two",
        "nested_then_disjoint",
        "duplicate",
        "point",
        "point_inside",
        "point_bridges_touching",
        "point_alone",
        "next_float_apart",
        "infinite_lower",
        "infinite_upper",
        "two_rays",
        "rays_touching",
        "whole_line_absorbs",
        "point_at_minus_inf",
    ],
)
def test_merge(intervals, expected):
    out = merge(intervals)
    _assert_union_equal(out, expected)
    _assert_normalised(out)


def test_merge_returns_a_copy():
    arr = np.array([[0.0, 1.0]])
    out = merge(arr)
    out[0, 0] = 5.0
    assert arr[0, 0] == 0.0


@pytest.mark.parametrize(
    "unions, expected",
    [
        ((), EMPTY),
        (([],), EMPTY),
        (([], []), EMPTY),
        (([[0, 1]], []), [[0, 1]]),
        (([], [[0, 1]]), [[0, 1]]),
        (([[0, 1]], [[2, 3]]), [[0, 1], [2, 3]]),
        (([[2, 3]], [[0, 1]]), [[0, 1], [2, 3]]),
        (([[0, 1]], [[1, 2]]), [[0, 2]]),
        (([[0, 1], [2, 3]], [[1, 2]]), [[0, 3]]),
        (([[0, 5]], [[1, 2], [3, 4]]), [[0, 5]]),
        (([[0, 1]], [[2, 3]], [[0.5, 2.5]]), [[0, 3]]),
        (([[-INF, 0]], [[0, 1]], [[5, INF]]), [[-INF, 1], [5, INF]]),
        (([[-INF, 0]], [[0, INF]]), [[-INF, INF]]),
    ],
    ids=[
        "no_arguments",
        "one_empty",
        "two_empty",
        "empty_right",
        "empty_left",
        "disjoint",
        "disjoint_reversed",
        "touching",
        "bridge",
        "nested",
        "three_way_bridge",
        "infinite_ends",
        "whole_line",
    ],
)
def test_union(unions, expected):
    out = union(*unions)
    _assert_union_equal(out, expected)
    _assert_normalised(out)


# --- complement --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "intervals, lower, upper, expected",
    [
        ([], -INF, INF, [[-INF, INF]]),
        ([], 0, 1, [[0, 1]]),
        ([[0, 1]], -INF, INF, [[-INF, 0], [1, INF]]),
        ([[0, 1], [2, 3]], -1, 4, [[-1, 0], [1, 2], [3, 4]]),
        ([[2, 3], [0, 1]], -1, 4, [[-1, 0], [1, 2], [3, 4]]),
        ([[0, 1], [1, 2]], -1, 3, [[-1, 0], [2, 3]]),
        ([[0, 1], [2, 3]], 0, 3, [[1, 2]]),
        ([[0, 1], [2, 3]], 0.5, 2.5, [[1, 2]]),
        ([[0, 1], [2, 3]], -5, -1, [[-5, -1]]),
        ([[0, 1], [2, 3]], 4, 5, [[4, 5]]),
        ([[0, 1], [2, 3]], 1.2, 1.8, [[1.2, 1.8]]),
        ([[0, 10]], 2, 3, EMPTY),
        ([[0, 10]], 0, 10, EMPTY),
        ([[0, 1]], 1, 2, [[1, 2]]),
        ([[-5, 0], [2, 10]], -1, 4, [[0, 2]]),
        ([[-INF, 0]], -INF, INF, [[0, INF]]),
        ([[0, INF]], -INF, INF, [[-INF, 0]]),
        ([[-INF, 0], [1, INF]], -INF, INF, [[0, 1]]),
        ([[-INF, INF]], -INF, INF, EMPTY),
        ([[-INF, INF]], 0, 1, EMPTY),
        ([[0, 1]], -INF, 5, [[-INF, 0], [1, 5]]),
        ([[0, 1]], -5, INF, [[-5, 0], [1, INF]]),
        ([[-INF, 0]], -3, 3, [[0, 3]]),
        ([[3, INF]], -3, 3, [[-3, 3]]),
        ([[1, 2]], 3, 0, EMPTY),
    ],
    ids=[
        "empty_whole_line",
        "empty_finite_bounds",
        "one_interval_whole_line",
        "two_intervals",
        "unsorted",
        "touching_merged_first",
        "bounds_at_ends",
        "bounds_inside_intervals",
        "all_left_of_union",
        "all_right_of_union",
        "inside_a_gap",
        "inside_an_interval",
        "bounds_equal_interval",
        "touching_bound_only",
        "intervals_cross_bounds",
        "left_ray",
        "right_ray",
        "two_rays",
        "whole_line",
        "whole_line_finite_bounds",
        "finite_upper_bound",
        "finite_lower_bound",
        "ray_crosses_lower_bound",
        "ray_starts_at_upper_bound",
        "reversed_bounds",
    ],
)
def test_complement(intervals, lower, upper, expected):
    out = complement(intervals, lower, upper)
    _assert_union_equal(out, expected)
    _assert_normalised(out, allow_touching=True)
    assert (out[:, 1] > out[:, 0]).all()  # zero-length gaps dropped


def test_complement_default_bounds_are_the_whole_line():
    _assert_union_equal(complement([[0, 1]]), [[-INF, 0], [1, INF]])


def test_complement_twice_restores_a_finite_union():
    u = [[-3, -1], [0, 1], [2.5, 4]]
    _assert_union_equal(complement(complement(u)), u)


# --- intersect ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second, expected",
    [
        ([], [], EMPTY),
        ([], [[0, 1]], EMPTY),
        ([[0, 1]], [], EMPTY),
        ([[0, 1]], [[0, 1]], [[0, 1]]),
        ([[0, 2], [3, 5]], [[1, 4]], [[1, 2], [3, 4]]),
        ([[1, 4]], [[0, 2], [3, 5]], [[1, 2], [3, 4]]),
        ([[0, 1]], [[2, 3]], EMPTY),
        ([[0, 10]], [[2, 3]], [[2, 3]]),
        ([[2, 3]], [[0, 10]], [[2, 3]]),
        ([[0, 2]], [[1, 3]], [[1, 2]]),
        ([[0, 2]], [[0, 1]], [[0, 1]]),
        ([[0, 1]], [[1, 2]], EMPTY),  # a single shared point has zero length and is dropped
        ([[0, 1], [1, 2]], [[0.5, 1.5]], [[0.5, 1.5]]),  # merged before intersecting
        ([[0, 1], [2, 3], [4, 5]], [[0.5, 4.5]], [[0.5, 1], [2, 3], [4, 4.5]]),
        ([[0, 1], [2, 3]], [[0, 1], [2, 3]], [[0, 1], [2, 3]]),
        ([[1, 1]], [[0, 2]], EMPTY),
        ([[-INF, INF]], [[0, 1]], [[0, 1]]),
        ([[-INF, INF]], [[-INF, INF]], [[-INF, INF]]),
        ([[-INF, 0]], [[-INF, 5]], [[-INF, 0]]),
        ([[-INF, 0], [1, INF]], [[-1, 2]], [[-1, 0], [1, 2]]),
        ([[-INF, 0]], [[0, INF]], EMPTY),
        ([[-INF, 1]], [[0, INF]], [[0, 1]]),
        ([[5, INF]], [[0, INF]], [[5, INF]]),
    ],
    ids=[
        "both_empty",
        "first_empty",
        "second_empty",
        "identical",
        "docstring",
        "swapped",
        "disjoint",
        "nested",
        "nested_swapped",
        "overlap",
        "common_lower_end",
        "touching_point_dropped",
        "touching_first_merged",
        "spanning_three",
        "identical_two",
        "point_dropped",
        "whole_line_and_finite",
        "whole_line_twice",
        "left_rays",
        "rays_and_finite",
        "opposite_rays_touch",
        "opposite_rays_overlap",
        "right_rays",
    ],
)
def test_intersect(first, second, expected):
    out = intersect(first, second)
    _assert_union_equal(out, expected)
    _assert_normalised(out)
    _assert_union_equal(intersect(second, first), expected)


# --- contains / length -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "intervals, z, expected",
    [
        ([], 0.0, False),
        ([[0, 1]], 0.5, True),
        ([[0, 1]], 0.0, True),
        ([[0, 1]], 1.0, True),
        ([[0, 1]], np.nextafter(1, 2), False),
        ([[0, 1]], np.nextafter(0, -1), False),
        ([[0, 1], [2, 3]], 1.5, False),
        ([[0, 1], [2, 3]], 2.5, True),
        ([[2, 3], [0, 1]], 0.5, True),
        ([[1, 1]], 1.0, True),
        ([[-INF, 0]], -1e300, True),
        ([[-INF, 0]], -INF, True),
        ([[0, INF]], INF, True),
        ([[0, 1]], INF, False),
        ([[-INF, INF]], 0.0, True),
        ([[-INF, INF]], np.nan, False),
    ],
    ids=[
        "empty",
        "inside",
        "lower_end",
        "upper_end",
        "just_above",
        "just_below",
        "in_gap",
        "second_interval",
        "unsorted",
        "point",
        "far_left_on_ray",
        "minus_inf_on_ray",
        "plus_inf_on_ray",
        "inf_outside",
        "whole_line",
        "nan",
    ],
)
def test_contains(intervals, z, expected):
    assert contains(intervals, z) is expected


@pytest.mark.parametrize(
    "intervals, expected",
    [
        ([], 0.0),
        ([[0, 1]], 1.0),
        ([[1, 1]], 0.0),
        ([[0, 1], [2, 4]], 3.0),
        ([[0, 2], [1, 3]], 3.0),
        ([[0, 10], [2, 3]], 10.0),
        ([[0, 1], [1, 2]], 2.0),
        ([[0, 1], [0, 1]], 1.0),
        ([[-INF, 0]], INF),
        ([[0, INF]], INF),
        ([[-INF, INF]], INF),
    ],
    ids=[
        "empty",
        "unit",
        "point",
        "disjoint",
        "overlap_counted_once",
        "nested",
        "touching",
        "duplicate",
        "left_ray",
        "right_ray",
        "whole_line",
    ],
)
def test_length(intervals, expected):
    got = length(intervals)
    assert isinstance(got, float)
    assert got == expected


# --- randomized property test against a brute-force grid ---------------------------------------

# Ends lie on multiples of 1/4 in [-5, 5] (or are infinite). Grid points at odd multiples of
# 1/16 never coincide with an end, so open/closed questions do not arise there, and two grid
# points per 1/4 cell make the brute-force length exact: (number inside) * 1/8.
GRID = (np.arange(-48, 48) * 2 + 1) / 16.0  # -5.9375 ... 5.9375, step 1/8
ENDS = np.arange(-20, 21) / 4.0


def _random_union(rng, allow_infinite):
    m = int(rng.integers(0, 6))
    rows = []
    for _ in range(m):
        lo, hi = np.sort(rng.choice(ENDS, size=2))
        if rng.random() < 0.15:
            hi = lo  # a point
        if allow_infinite and rng.random() < 0.15:
            lo = -INF
        if allow_infinite and rng.random() < 0.15:
            hi = INF
        rows.append([lo, hi])
    return np.array(rows, dtype=float).reshape(-1, 2)


def _member(intervals, points):
    """Brute force: (P,) bool, whether each point lies in some row of the raw input."""
    arr = np.asarray(intervals, dtype=float).reshape(-1, 2)
    points = np.asarray(points, dtype=float)
    if not len(arr):
        return np.zeros(len(points), bool)
    return ((arr[None, :, 0] <= points[:, None]) & (points[:, None] <= arr[None, :, 1])).any(1)


@pytest.mark.parametrize("seed", range(4))
def test_set_algebra_matches_brute_force_on_a_grid(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        allow_inf = bool(rng.random() < 0.5)
        u, v, w = (_random_union(rng, allow_inf) for _ in range(3))
        in_u, in_v, in_w = _member(u, GRID), _member(v, GRID), _member(w, GRID)

        merged = merge(u)
        _assert_normalised(merged)
        np.testing.assert_array_equal(_member(merged, GRID), in_u)
        # merge is the same closed set: also at every end point, where closedness matters.
        ends = np.unique(u[np.isfinite(u)]) if len(u) else np.empty(0)
        np.testing.assert_array_equal(_member(merged, ends), _member(u, ends))

        joined = union(u, v, w)
        _assert_normalised(joined)
        np.testing.assert_array_equal(_member(joined, GRID), in_u | in_v | in_w)

        both = intersect(u, v)
        _assert_normalised(both)
        np.testing.assert_array_equal(_member(both, GRID), in_u & in_v)

        lower = -INF if rng.random() < 0.3 else float(rng.choice(ENDS))
        upper = INF if rng.random() < 0.3 else float(rng.choice(ENDS[ENDS >= lower]))
        gaps = complement(u, lower, upper)
        _assert_normalised(gaps, allow_touching=True)
        in_bounds = (lower <= GRID) & (GRID <= upper)
        np.testing.assert_array_equal(_member(gaps, GRID), in_bounds & ~in_u)

        for p in GRID[::7]:
            assert contains(u, p) == contains(merged, p) == bool(_member(u, [p])[0])

        if np.isfinite(u).all():
            assert length(u) == pytest.approx(in_u.sum() / 8.0, abs=0)
        else:
            assert length(u) == INF
