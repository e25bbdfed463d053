import numpy as np
import pytest

from medsi.errors import ConfigError
from medsi.si.events import check_region, connected_regions, event_flags, outer_boundary


def _mask(shape, *pixels):
    m = np.zeros(shape, dtype=bool)
    for p in pixels:
        m[p] = True
    return m


# --- outer_boundary ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, pixels, connectivity, count",
    [
        ((5, 5), [(2, 2)], 1, 4),
        ((5, 5), [(2, 2)], 2, 8),
        ((5, 5), [(0, 0)], 1, 2),
        ((5, 5), [(0, 0)], 2, 3),
        ((5, 5), [(0, 2)], 1, 3),
        ((5, 5), [(0, 2)], 2, 5),
        ((6, 6), [(2, 2), (2, 3), (3, 2), (3, 3)], 1, 8),
        ((6, 6), [(2, 2), (2, 3), (3, 2), (3, 3)], 2, 12),
        ((5, 5), [(1, 1), (3, 3)], 1, 8),
        ((5, 5), [(1, 1), (3, 3)], 2, 15),  # two 8-rings sharing (2, 2)
        ((5, 5, 5), [(2, 2, 2)], 1, 6),
        ((5, 5, 5), [(2, 2, 2)], 2, 18),
        ((5, 5, 5), [(2, 2, 2)], 3, 26),
        ((5, 5, 5), [(0, 0, 0)], 1, 3),
        ((5, 5, 5), [(0, 0, 0)], 2, 6),
        ((5, 5, 5), [(0, 0, 0)], 3, 7),
        ((5, 5), [], 1, 0),
        ((3, 3), [(i, j) for i in range(3) for j in range(3)], 2, 0),
    ],
    ids=[
        "2d_centre_c1",
        "2d_centre_c2",
        "2d_corner_c1",
        "2d_corner_c2",
        "2d_edge_c1",
        "2d_edge_c2",
        "2d_block_c1",
        "2d_block_c2",
        "2d_two_diagonal_c1",
        "2d_two_diagonal_c2",
        "3d_centre_c1",
        "3d_centre_c2",
        "3d_centre_c3",
        "3d_corner_c1",
        "3d_corner_c2",
        "3d_corner_c3",
        "empty",
        "whole_image",
    ],
)
def test_outer_boundary_counts(shape, pixels, connectivity, count):
    region = _mask(shape, *pixels)
    boundary = outer_boundary(region, connectivity)
    assert boundary.dtype == bool and boundary.shape == region.shape
    assert int(boundary.sum()) == count
    assert not (boundary & region).any()


@pytest.mark.parametrize(
    "connectivity, expected",
    [
        (1, [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]),
        (2, [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]),
    ],
    ids=["faces", "faces_and_corners"],
)
def test_outer_boundary_2d_exact(connectivity, expected):
    region = _mask((5, 5), (2, 2))
    np.testing.assert_array_equal(outer_boundary(region, connectivity), np.array(expected, bool))


def test_outer_boundary_default_connectivity_is_faces():
    region = _mask((5, 5), (2, 2))
    np.testing.assert_array_equal(outer_boundary(region), outer_boundary(region, 1))


def test_outer_boundary_3d_faces_exact():
    region = _mask((3, 3, 3), (1, 1, 1))
    expected = _mask((3, 3, 3), (0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2))
    np.testing.assert_array_equal(outer_boundary(region, 1), expected)


def test_outer_boundary_accepts_integer_masks():
    region = _mask((5, 5), (2, 2)).astype(np.uint8)
    assert int(outer_boundary(region, 1).sum()) == 4


@pytest.mark.parametrize(
    "shape, connectivity, match",
    [
        ((4, 4), 0, r'"connectivity" must be an integer in 1\.\.2 for 2-D images, got 0; pass 1'),
        ((4, 4), 3, r'"connectivity" must be an integer in 1\.\.2 for 2-D images, got 3'),
        ((4, 4), -1, r"in 1\.\.2 for 2-D images, got -1"),
        ((4, 4), "2", r"in 1\.\.2 for 2-D images, got '2'"),
        (
            (4, 4, 4),
            4,
            r'"connectivity" must be an integer in 1\.\.3 for 3-D images, got 4; '
            r"pass 1 \(faces\) or 3",
        ),
    ],
    ids=["zero", "too_large_2d", "negative", "string", "too_large_3d"],
)
def test_outer_boundary_refuses_bad_connectivity(shape, connectivity, match):
    with pytest.raises(ConfigError, match=match):
        outer_boundary(np.zeros(shape, bool), connectivity)


# --- connected_regions -------------------------------------------------------------------------


def test_connected_regions_largest_first():
    selected = np.zeros((7, 7), bool)
    selected[0, 0] = True  # size 1, first in raster order
    selected[2:4, 2:4] = True  # size 4
    selected[6, 5:7] = True  # size 2
    regions = connected_regions(selected)
    assert [int(r.sum()) for r in regions] == [4, 2, 1]
    assert regions[0][2:4, 2:4].all()
    assert regions[2][0, 0]
    for r in regions:
        assert r.dtype == bool and r.shape == selected.shape


def test_connected_regions_ties_keep_raster_order():
    selected = _mask((5, 5), (0, 4), (2, 0), (4, 2))  # three single pixels
    regions = connected_regions(selected)
    assert [tuple(np.argwhere(r)[0]) for r in regions] == [(0, 4), (2, 0), (4, 2)]


def test_connected_regions_partition_the_selected_set():
    rng = np.random.default_rng(0)
    selected = rng.random((12, 12)) < 0.35
    for connectivity in (1, 2):
        regions = connected_regions(selected, connectivity)
        sizes = [int(r.sum()) for r in regions]
        assert sizes == sorted(sizes, reverse=True)
        np.testing.assert_array_equal(np.sum(regions, axis=0), selected.astype(int))
        for r in regions:  # each region is a whole component: a valid region for check_region
            check_region(r, selected, connectivity)


@pytest.mark.parametrize(
    "connectivity, sizes",
    [(1, [1, 1]), (2, [2])],
    ids=["faces_split_diagonal", "corners_join_diagonal"],
)
def test_connected_regions_connectivity(connectivity, sizes):
    selected = _mask((4, 4), (1, 1), (2, 2))
    assert [int(r.sum()) for r in connected_regions(selected, connectivity)] == sizes


@pytest.mark.parametrize(
    "connectivity, sizes",
    [(1, [1, 1]), (2, [1, 1]), (3, [2])],
    ids=["faces", "edges", "corners"],
)
def test_connected_regions_3d(connectivity, sizes):
    selected = _mask((3, 3, 3), (0, 0, 0), (1, 1, 1))  # touch at a corner only
    assert [int(r.sum()) for r in connected_regions(selected, connectivity)] == sizes


def test_connected_regions_empty():
    assert connected_regions(np.zeros((4, 4), bool)) == []


def test_connected_regions_refuses_bad_connectivity():
    with pytest.raises(ConfigError, match=r'"connectivity" must be an integer in 1\.\.2'):
        connected_regions(np.ones((4, 4), bool), 3)


# --- check_region ------------------------------------------------------------------------------


@pytest.fixture
def observed():
    """Two 4-connected components: A (a 2x2 block) and B (an L), plus C touching B diagonally."""
    obs = np.zeros((8, 8), bool)
    obs[1:3, 1:3] = True  # A
    obs[5, 4:7] = True  # B
    obs[4, 6] = True  # B
    obs[6, 7] = True  # C: diagonal to (5, 6) in B
    return obs


def _component(observed, pixel, connectivity=1):
    return next(r for r in connected_regions(observed, connectivity) if r[pixel])


def test_check_region_returns_the_outer_boundary(observed):
    region = _component(observed, (1, 1))
    boundary = check_region(region, observed)
    np.testing.assert_array_equal(boundary, outer_boundary(region, 1))
    assert int(boundary.sum()) == 8


def test_check_region_accepts_a_union_of_components(observed):
    region = _component(observed, (1, 1)) | _component(observed, (5, 4))
    boundary = check_region(region, observed)
    np.testing.assert_array_equal(boundary, outer_boundary(region, 1))


def test_check_region_accepts_the_whole_selected_set(observed):
    boundary = check_region(observed, observed, 2)
    assert not (boundary & observed).any()


def test_check_region_accepts_integer_masks(observed):
    region = _component(observed, (1, 1)).astype(np.int64)
    np.testing.assert_array_equal(check_region(region, observed), outer_boundary(region != 0))


@pytest.mark.parametrize(
    "connectivity, accepted",
    [(1, True), (2, False)],
    ids=["faces_diagonal_neighbour_is_another_component", "corners_diagonal_neighbour_joins"],
)
def test_check_region_connectivity(observed, connectivity, accepted):
    region = _component(observed, (5, 4), 1)  # B alone, with C touching it diagonally
    if accepted:
        check_region(region, observed, connectivity)
    else:
        with pytest.raises(ConfigError, match="only part of a connected component"):
            check_region(region, observed, connectivity)


def test_check_region_3d():
    obs = np.zeros((4, 4, 4), bool)
    obs[0, 0, 0:2] = True
    obs[3, 3, 3] = True
    region = _component(obs, (0, 0, 0))
    boundary = check_region(region, obs, 3)
    assert int(boundary.sum()) == 10  # the clipped 2x2x3 box around a 1x1x2 bar, minus the bar
    with pytest.raises(ConfigError, match="only part of a connected component"):
        check_region(_mask(obs.shape, (0, 0, 0)), obs, 1)


def _partial(obs):
    r = np.zeros_like(obs)
    r[1, 1:3] = True  # the top row of the 2x2 block A
    return r


def _with_unselected(obs):
    r = _component(obs, (1, 1)).copy()
    r[0, 0] = True  # a pixel the model did not select
    return r


@pytest.mark.parametrize(
    "make_region, kwargs, match",
    [
        (
            lambda obs: np.zeros_like(obs),
            {},
            r'"region" is empty; pass a mask with at least one selected pixel\.',
        ),
        (
            lambda obs: np.zeros((7, 8), bool),
            {},
            r'"region" has shape \(7, 8\) but the image is \(8, 8\); pass a mask of the image',
        ),
        (
            lambda obs: np.ones((8, 8, 1), bool),
            {},
            r'"region" has shape \(8, 8, 1\) but the image is \(8, 8\)',
        ),
        (
            _with_unselected,
            {},
            r'"region" has 1 pixels that the model did not select; pass one of the connected',
        ),
        (lambda obs: ~obs, {}, r'"region" has 55 pixels that the model did not select'),
        (
            _partial,
            {},
            r'"region" is only part of a connected component of the selected set; pass whole '
            r"components \(see medsi\.si\.connected_regions\)\.",
        ),
        (
            lambda obs: _component(obs, (1, 1)),
            {"connectivity": 3},
            r'"connectivity" must be an integer in 1\.\.2 for 2-D images, got 3',
        ),
        (
            lambda obs: _component(obs, (1, 1)),
            {"connectivity": 0},
            r'"connectivity" must be an integer in 1\.\.2 for 2-D images, got 0',
        ),
    ],
    ids=[
        "empty",
        "wrong_shape",
        "extra_dimension",
        "unselected_pixel",
        "all_unselected",
        "partial_component",
        "connectivity_too_large",
        "connectivity_zero",
    ],
)
def test_check_region_refuses(observed, make_region, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_region(make_region(observed), observed, **kwargs)


# --- event_flags -------------------------------------------------------------------------------


def _changed(obs, on=(), off=()):
    s = obs.copy()
    for p in on:
        s[p] = True
    for p in off:
        s[p] = False
    return s


# Region A is the 2x2 block at rows 1-2, cols 1-2 of the `observed` fixture.
EVENT_CASES = [
    ("identical", {}, (True, True)),
    ("other_component_grows", {"on": [(5, 3)]}, (False, True)),
    ("other_component_shrinks", {"off": [(5, 4)]}, (False, True)),
    ("other_component_vanishes", {"off": [(5, 4), (5, 5), (5, 6), (4, 6)]}, (False, True)),
    ("new_component_far_away", {"on": [(7, 0)]}, (False, True)),
    ("diagonal_neighbour_selected", {"on": [(0, 0)]}, (False, True)),  # not a face neighbour
    ("region_shrinks", {"off": [(2, 2)]}, (False, False)),
    ("region_vanishes", {"off": [(1, 1), (1, 2), (2, 1), (2, 2)]}, (False, False)),
    ("region_grows", {"on": [(3, 1)]}, (False, False)),
    ("boundary_pixel_from_outside", {"on": [(0, 2)]}, (False, False)),
    ("region_grows_and_shrinks", {"on": [(1, 3)], "off": [(1, 1)]}, (False, False)),
    ("other_component_reaches_boundary", {"on": [(4, 4), (4, 3), (3, 3), (3, 2)]}, (False, False)),
]


@pytest.mark.parametrize(
    "change, expected", [c[1:] for c in EVENT_CASES], ids=[c[0] for c in EVENT_CASES]
)
def test_event_flags(observed, change, expected):
    region = _component(observed, (1, 1))
    boundary = check_region(region, observed)
    selected = _changed(observed, **change)
    flags = event_flags(selected[None], observed, region, boundary)
    assert flags.shape == (1, 2) and flags.dtype == bool
    assert tuple(flags[0].tolist()) == expected


def test_event_flags_batch_matches_single(observed):
    region = _component(observed, (1, 1))
    boundary = check_region(region, observed)
    selected = np.stack([_changed(observed, **c[1]) for c in EVENT_CASES])
    flags = event_flags(selected, observed, region, boundary)
    np.testing.assert_array_equal(flags, np.array([c[2] for c in EVENT_CASES], bool))


def test_event_flags_full_holds_only_for_the_identical_set():
    rng = np.random.default_rng(1)
    observed = rng.random((6, 6)) < 0.4
    region = connected_regions(observed)[0]
    boundary = check_region(region, observed)
    flips = np.eye(36, dtype=bool).reshape(36, 6, 6)  # every single-pixel change
    selected = np.concatenate([observed[None], observed[None] ^ flips])
    flags = event_flags(selected, observed, region, boundary)
    assert flags[0].all()
    assert not flags[1:, 0].any()
    # The component event fails exactly when the flipped pixel is in the region or its boundary.
    touched = (flips & (region | boundary)).reshape(36, -1).any(1)
    np.testing.assert_array_equal(flags[1:, 1], ~touched)


@pytest.mark.parametrize(
    "connectivity, expected_component",
    [(1, True), (2, False)],
    ids=["faces", "faces_and_corners"],
)
def test_event_flags_diagonal_neighbour_by_connectivity(observed, connectivity, expected_component):
    region = _component(observed, (1, 1), connectivity)
    boundary = check_region(region, observed, connectivity)
    selected = _changed(observed, on=[(3, 3)])  # diagonal to (2, 2)
    flags = event_flags(selected[None], observed, region, boundary)
    assert tuple(flags[0].tolist()) == (False, expected_component)


def test_event_flags_3d():
    observed = np.zeros((4, 4, 4), bool)
    observed[1:3, 1:3, 1:3] = True
    observed[0, 0, 3] = True
    region = _component(observed, (1, 1, 1))
    boundary = check_region(region, observed)
    same = observed.copy()
    other = _changed(observed, off=[(0, 0, 3)])
    grown = _changed(observed, on=[(0, 1, 1)])
    corner = _changed(observed, on=[(0, 0, 0)])  # a corner neighbour: not a face boundary
    flags = event_flags(np.stack([same, other, grown, corner]), observed, region, boundary)
    np.testing.assert_array_equal(
        flags, [[True, True], [False, True], [False, False], [False, True]]
    )
