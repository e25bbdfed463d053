import numpy as np
import pytest
import torch
from scipy import stats

from medsi.errors import ConfigError, InferenceError, NotPiecewiseLinearError
from medsi.selftest import bounds_contain_exhaustive, make_random_score
from medsi.si import (
    Dense,
    Diagonal,
    Isotropic,
    SearchSettings,
    SelectiveTest,
    Stationary,
    event_flags,
    outer_boundary,
    parametric_search,
    selective_p_value,
)
from medsi.si import intervals as iv

THRESHOLD = 1.2


@pytest.fixture(scope="module")
def score():
    return make_random_score(seed=3)


@pytest.fixture(scope="module")
def test(score):
    return SelectiveTest(score, THRESHOLD, covariance=Isotropic(1.0))


def _null_pair(test, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    while True:
        x, r = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
        x[2:5, 3:6] += shift
        if test.select(x).any():
            return x, r


def _grid_truncation_set(test, x, r, res, event_index, half_width=9.0, n=40001):
    """Truncation set of an event from plain forward passes on a dense grid of z."""
    region = res.region
    observed = test.select(x)
    eta_var = res.sigma**2
    b = test.covariance.apply(region / region.sum()) / eta_var
    a = x - b * res.statistic
    z = np.linspace(-half_width * res.sigma, half_width * res.sigma, n)
    z = np.union1d(z, [res.statistic])
    holds = np.zeros(len(z), bool)
    boundary = outer_boundary(region)
    for start in range(0, len(z), 4096):
        chunk = z[start : start + 4096]
        sel = test.select(a[None] + b[None] * chunk[:, None, None])
        holds[start : start + 4096] = event_flags(sel, observed, region, boundary)[:, event_index]
    return z, holds


@pytest.mark.parametrize("seed", [0, 1, 2, 3], ids=["img0", "img1", "img2", "img3"])
@pytest.mark.parametrize("event_index", [0, 1], ids=["full", "component"])
def test_truncation_set_matches_a_dense_grid_of_plain_forward_passes(test, seed, event_index):
    x, r = _null_pair(test, seed, shift=0.8 * seed)
    res = test.run(x, r, termination="exhaustive")
    sets = (res.intervals_full, res.intervals_component)[event_index]
    z, holds = _grid_truncation_set(test, x, r, res, event_index)
    inside = np.array([iv.contains(sets, v) for v in z])
    # Grid points within rounding distance of an interval end may go either way.
    ends = np.concatenate([sets.ravel(), res.oc_interval])
    far_from_ends = np.min(np.abs(z[:, None] - ends[None]), axis=1) > 1e-9 * res.sigma
    assert (inside == holds)[far_from_ends].all()
    # and the p-value from the grid's cells agrees with the engine's to grid resolution
    step = z[1] - z[0]
    cells = np.stack([z[holds] - step / 2, z[holds] + step / 2], 1)
    p_grid = selective_p_value(iv.merge(cells), res.statistic, res.sigma)
    p = (res.p_full, res.p_component)[event_index]
    assert p == pytest.approx(p_grid, abs=5e-3)


def test_over_conditioned_interval_is_the_piece_around_the_statistic(test):
    x, r = _null_pair(test, 11)
    res = test.run(x, r)
    lo, hi = res.oc_interval
    assert lo <= res.statistic <= hi
    assert iv.contains(res.intervals_full, res.statistic)
    # the piece lies inside both truncation sets; Z_full lies inside Z_component
    assert iv.length(iv.intersect(res.intervals_full, [[lo, hi]])) == pytest.approx(hi - lo)
    assert iv.length(iv.intersect(res.intervals_full, res.intervals_component)) == pytest.approx(
        iv.length(res.intervals_full)
    )
    assert res.p_oc == pytest.approx(selective_p_value([[lo, hi]], res.statistic, res.sigma))


def test_statistic_sigma_and_naive_p(test):
    x, r = _null_pair(test, 5)
    res = test.run(x, r)
    c = res.region
    assert res.statistic == pytest.approx(x[c].mean() - r[c].mean())
    assert res.sigma == pytest.approx(np.sqrt(2.0 / c.sum()))
    assert res.p_naive == pytest.approx(2 * stats.norm.sf(abs(res.statistic) / res.sigma))
    assert res.p_bonferroni == pytest.approx(min(1.0, 2**64 * res.p_naive))
    assert res.p_selective == res.p_full
    assert res.p_bounds[0] <= res.p_full <= res.p_bounds[1]
    assert res.p_bounds[1] - res.p_bounds[0] < 1e-9


def test_the_region_line_passes_through_the_data_and_gives_the_run_its_pieces(test):
    x, r = _null_pair(test, 6)
    res = test.run(x, r, termination="oc")
    region_line = test.line(x, r)
    assert region_line.statistic == res.statistic and region_line.sigma == res.sigma
    assert np.array_equal(region_line.region, res.region)
    lower, upper, flags, _ = region_line.line(np.array([res.statistic]))
    assert (lower[0], upper[0]) == tuple(res.oc_interval)
    assert flags[0].all(), "the observed data satisfy both events"
    # just outside the piece around the statistic some decision changes, and the line's
    # image there is what a plain forward pass of a + b z selects
    line = region_line.line
    for z in (lower[0] - 1e-6 * res.sigma, upper[0] + 1e-6 * res.sigma):
        image = line.a[0] + line.b[0] * z
        _, _, outside_flags, _ = line(np.array([z]))
        full = np.array_equal(test.select(image), region_line.observed)
        assert outside_flags[0, 0] == full


@pytest.mark.parametrize(
    "covariance",
    [
        Isotropic(2.0),
        Diagonal(np.linspace(0.5, 2.0, 64).reshape(8, 8)),
        Stationary(np.array([[0.1, 0.2, 0.1], [0.2, 1.0, 0.2], [0.1, 0.2, 0.1]])),
        Dense.autoregressive((8, 8), rho=0.5),
    ],
    ids=["isotropic", "diagonal", "stationary", "dense-corr"],
)
def test_sigma_equals_the_dense_quadratic_form(score, covariance):
    test = SelectiveTest(
        score, THRESHOLD, covariance=covariance, reference_covariance=covariance.scaled(0.25)
    )
    x, r = _null_pair(test, 21)
    res = test.run(x, r, termination="decision")
    eta = res.region.ravel() / res.region.sum()
    dense = covariance.to_dense((8, 8))
    assert res.sigma**2 == pytest.approx(eta @ dense @ eta * 1.25, rel=1e-12)


def test_precision_and_decision_bounds_contain_the_exhaustive_p():
    rows = bounds_contain_exhaustive(n_images=4, seed=2)
    assert len(rows) == 16
    for term, lo, p, hi in rows:
        assert lo - 1e-12 <= p <= hi + 1e-12, term
    for term, lo, _, hi in rows:
        if term == "precision":
            assert hi - lo < 1e-2
        else:
            assert hi < 0.05 or lo >= 0.05


def test_decision_needs_fewer_evaluations_than_exhaustive(test):
    x, r = _null_pair(test, 8)
    full = test.run(x, r, termination="exhaustive")
    quick = test.run(x, r, termination="decision")
    assert quick.evaluations < full.evaluations


def test_batch_size_does_not_change_the_p_value(test):
    x, r = _null_pair(test, 9, shift=1.0)
    one = test.run(x, r, batch_size=1)
    many = test.run(x, r, batch_size=64)
    assert one.p_full == pytest.approx(many.p_full, rel=1e-9, abs=1e-15)
    assert one.p_component == pytest.approx(many.p_component, rel=1e-9, abs=1e-15)


def test_one_component_of_several(score):
    test = SelectiveTest(score, THRESHOLD, covariance=Isotropic(1.0))
    rng = np.random.default_rng(4)
    for _ in range(200):
        x, r = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
        regions = test.regions(x)
        if len(regions) >= 2 and regions[0].sum() >= 2:
            break
    else:
        pytest.fail("no image with two components")
    res = test.run(x, r, region=regions[1], event="component", permutations=50, seed=1)
    assert res.p_selective == res.p_component
    assert np.array_equal(res.region, regions[1])
    assert 0 < res.p_permutation <= 1
    partial = regions[0].copy()
    partial[tuple(np.argwhere(partial)[0])] = False
    with pytest.raises(ConfigError, match="only part of a connected component"):
        test.run(x, r, region=partial)


def test_whole_set_permutation_p(test):
    x, r = _null_pair(test, 12)
    res = test.run(x, r, permutations=99, seed=3, termination="decision")
    assert res.p_permutation is not None
    assert res.p_permutation * 100 == pytest.approx(round(res.p_permutation * 100))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"event": "partial"}, '"event" must be one of'),
        ({"termination": "fast"}, '"termination" must be one of'),
        ({"alternative": "bigger"}, '"alternative" must be one of'),
        ({"alpha": 1.5}, '"alpha" must be in'),
        ({"precision": 0}, '"precision" must be in'),
        ({"batch_size": 0}, '"batch_size" must be a positive integer'),
    ],
    ids=["event", "termination", "alternative", "alpha", "precision", "batch-size"],
)
def test_bad_options(test, kwargs, match):
    x, r = _null_pair(test, 0)
    with pytest.raises(ConfigError, match=match):
        test.run(x, r, **kwargs)


def test_bad_images(test):
    x, r = _null_pair(test, 0)
    with pytest.raises(ConfigError, match="must be of one shape"):
        test.run(x, r[:4])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="NaN or infinite"):
        test.run(bad, r)
    with pytest.raises(ConfigError, match="nothing is selected"):
        test.run(np.zeros((8, 8)), r)
    with pytest.raises(ConfigError, match="did not select"):
        test.run(x, r, region=~test.select(x))


def test_budget_overrun_raises_instead_of_returning_a_p(test):
    x, r = _null_pair(test, 0)
    with pytest.raises(InferenceError, match="max_evaluations=10"):
        test.run(x, r, max_evaluations=10)


def test_refuses_a_model_that_is_not_piecewise_linear():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.SiLU()).double()
    with pytest.raises(NotPiecewiseLinearError, match="SiLU"):
        SelectiveTest(model, 0.5)


def _fake(lower_off, upper_off, flags):
    def evaluate(z):
        k = len(z)
        return z + lower_off, z + upper_off, np.tile(flags, (k, 1)), np.zeros(k, bool)

    return evaluate


def test_search_guard_rail_interval_missing_its_point():
    with pytest.raises(InferenceError, match="does not contain its point"):
        parametric_search(_fake(0.1, 0.2, [True, True]), 0.0, 1.0, SearchSettings())


def test_search_guard_rail_observed_point_outside_its_event():
    with pytest.raises(InferenceError, match="does not satisfy its own selection event"):
        parametric_search(_fake(-0.1, 0.1, [False, True]), 0.0, 1.0, SearchSettings())


def test_search_on_a_known_piecewise_line():
    # pieces of width 0.5 on a grid; the event holds on [-1, 1] only
    def evaluate(z):
        lo = np.floor(z * 2) / 2
        hi = lo + 0.5
        inside = (lo >= -1) & (hi <= 1)
        return lo, hi, np.stack([inside, inside], 1), np.zeros(len(z), bool)

    out = parametric_search(evaluate, 0.3, 1.0, SearchSettings(batch_size=8))
    assert out.truncation_sets[0].tolist() == [[-1.0, 1.0]]
    expected = selective_p_value([[-1.0, 1.0]], 0.3, 1.0)
    assert out.p_values[0] == pytest.approx(expected, rel=1e-12)
    # exhaustive: everything within about 7.3 sigma of 0 has been looked at
    assert out.pieces[:, 0].min() < -7 and out.pieces[:, 1].max() > 7


def _grid_line(z):
    lo = np.floor(z * 2) / 2
    inside = (lo >= -1) & (lo + 0.5 <= 1)
    return lo, lo + 0.5, np.stack([inside, inside], 1), np.zeros(len(z), bool)


@pytest.mark.parametrize("on_budget", ["stop", "raise"])
def test_the_budget_counts_what_the_evaluator_says_each_point_costs(on_budget):
    points = []

    def evaluate(z):
        points.extend(z)
        return _grid_line(z)

    # each point costs 3 model evaluations (three slices that all move, say)
    evaluate.cost = lambda z: np.full(len(z), 3)
    settings = SearchSettings(batch_size=4, max_evaluations=20, on_budget=on_budget)
    if on_budget == "raise":
        with pytest.raises(InferenceError, match="max_evaluations=20"):
            parametric_search(evaluate, 0.3, 1.0, settings)
        return
    out = parametric_search(evaluate, 0.3, 1.0, settings)
    assert not out.complete
    assert out.evaluations == 3 * len(points) and out.evaluations <= 20
    assert len(points) == 6  # the observed point, then 5 more that fit in 20
    lo, hi = out.p_lower[0], out.p_upper[0]
    assert lo <= selective_p_value([[-1.0, 1.0]], 0.3, 1.0) <= hi


def test_points_that_cost_nothing_do_not_use_the_budget():
    def free(z):
        return _grid_line(z)

    free.cost = lambda z: np.zeros(len(z), dtype=int)
    out = parametric_search(free, 0.3, 1.0, SearchSettings(batch_size=8, max_evaluations=1))
    assert out.complete and out.evaluations == 0
    assert out.truncation_sets[0].tolist() == [[-1.0, 1.0]]


def test_search_guard_rail_stall():
    # zero-length intervals never cover anything: the search must stop with an error
    with pytest.raises(InferenceError, match="stalled"):
        parametric_search(_fake(0.0, 0.0, [True, True]), 0.0, 1.0, SearchSettings())


def test_search_steps_past_a_point_on_a_boundary():
    calls = []

    def evaluate(z):
        calls.append(z.copy())
        lo = np.floor(z * 2) / 2
        # the first front to the right lands exactly on a boundary once
        degenerate = (len(calls) == 2) & (z > 0.5) & (z < 0.5 + 1e-6)
        return lo, lo + 0.5, np.ones((len(z), 2), bool), degenerate

    out = parametric_search(evaluate, 0.25, 1.0, SearchSettings(batch_size=2))
    assert out.p_values[0] == pytest.approx(2 * stats.norm.sf(0.25), rel=1e-9)
    retried = [z for batch in calls[2:3] for z in batch]
    assert any(0.5 < z < 0.5 + 1e-6 for z in retried)


def test_search_gives_up_on_a_boundary_it_cannot_step_past():
    def evaluate(z):
        lo = np.floor(z * 2) / 2
        stuck = (z > 0.5) & (z < 0.5 + 1e-6)
        return lo, lo + 0.5, np.ones((len(z), 2), bool), stuck

    with pytest.raises(InferenceError, match="could not step past a decision boundary"):
        parametric_search(evaluate, 0.25, 1.0, SearchSettings(batch_size=2))


def test_oc_termination_is_one_evaluation_with_the_exact_oc_p(test):
    x, r = _null_pair(test, 4, shift=1.0)
    full = test.run(x, r, termination="exhaustive")
    fast = test.run(x, r, termination="oc")
    assert fast.evaluations == 1
    assert fast.p_oc == full.p_oc
    lo, hi = fast.p_bounds_full
    assert lo <= full.p_full <= hi


@pytest.mark.parametrize("budget", [1, 5, 40], ids=["b1", "b5", "b40"])
def test_stopping_at_the_budget_keeps_honest_bounds(test, budget):
    x, r = _null_pair(test, 5, shift=0.5)
    full = test.run(x, r, termination="exhaustive")
    assert full.evaluations > 40
    cut = test.run(x, r, max_evaluations=budget, on_budget="stop", batch_size=4)
    assert not cut.complete and cut.evaluations <= budget
    for p, (lo, hi) in (
        (full.p_full, cut.p_bounds_full),
        (full.p_component, cut.p_bounds_component),
    ):
        assert lo - 1e-12 <= p <= hi + 1e-12
    assert cut.p_oc == full.p_oc
    with pytest.raises(ConfigError, match='"on_budget" must be'):
        test.run(x, r, on_budget="sometimes")


def test_a_shared_evaluator_gives_the_same_result(score, test):
    from medsi.si import LineEvaluator

    x, r = _null_pair(test, 6)
    shared = SelectiveTest(LineEvaluator(score, THRESHOLD), THRESHOLD, covariance=Isotropic(1.0))
    a, b = test.run(x, r), shared.run(x, r)
    assert a.p_full == b.p_full and a.evaluations == b.evaluations
    with pytest.raises(ConfigError, match="LineEvaluator with threshold"):
        SelectiveTest(LineEvaluator(score, THRESHOLD), THRESHOLD + 1)
