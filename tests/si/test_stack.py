"""A region spanning several slices of a volume is one test (medsi.si.stack)."""

import numpy as np
import pytest
from scipy import stats

from medsi.errors import ConfigError
from medsi.selftest import make_random_score
from medsi.si import Diagonal, Isotropic, SelectiveTest, connected_regions, event_flags
from medsi.si import intervals as iv
from medsi.si.events import outer_boundary
from medsi.si.stack import StackedLine

THRESHOLD = 1.2


@pytest.fixture(scope="module")
def score():
    return make_random_score(seed=3)


@pytest.fixture(scope="module")
def test(score):
    return SelectiveTest(score, THRESHOLD, covariance=Isotropic(1.0))


def _stack_with_multislice_region(test, seed, n_slices=3, shift=1.5):
    """A null-like stack whose largest 3-D component spans at least two slices."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        x = rng.normal(size=(n_slices, 8, 8))
        x[:, 2:5, 2:5] += shift
        r = rng.normal(size=(n_slices, 8, 8))
        regions = connected_regions(test.select(x), 1)
        spanning = [c for c in regions if c.any(axis=(1, 2)).sum() >= 2]
        if spanning:
            return x, r, spanning[0]
    raise AssertionError("no multi-slice region found")


def test_a_one_slice_stack_is_the_image_itself(test):
    rng = np.random.default_rng(0)
    while True:
        x, r = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
        if test.select(x).any():
            break
    flat = test.run(x, r)
    stacked = test.run(x[None], r[None])
    assert stacked.p_full == flat.p_full and stacked.p_component == flat.p_component
    assert stacked.evaluations == flat.evaluations
    assert np.array_equal(stacked.intervals_full, flat.intervals_full)
    assert np.array_equal(stacked.region[0], flat.region)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["stack0", "stack1", "stack2"])
@pytest.mark.parametrize("event_index", [0, 1], ids=["full", "component"])
def test_stack_truncation_set_matches_a_dense_grid(test, seed, event_index):
    x, r, region = _stack_with_multislice_region(test, seed)
    res = test.run(x, r, region=region)
    sets = (res.intervals_full, res.intervals_component)[event_index]
    # brute force: move every slice along its line and recompute the whole 3-D selection
    eta = region / region.sum()
    b = eta / res.sigma**2  # isotropic unit noise: S eta = eta
    a = x - b * res.statistic
    z = np.linspace(-8 * res.sigma, 8 * res.sigma, 6001)
    observed = test.select(x)
    boundary = outer_boundary(region, 1)
    sel = np.stack([test.select(a + b * v) for v in z])
    holds = event_flags(sel, observed, region, boundary)[:, event_index]
    inside = np.array([iv.contains(sets, v) for v in z])
    ends = np.concatenate([sets.ravel(), res.oc_interval])
    far = np.min(np.abs(z[:, None] - ends[None]), axis=1) > 1e-9 * res.sigma
    assert (inside == holds)[far].all()
    assert res.statistic == pytest.approx(x[region].mean() - r[region].mean())
    assert res.sigma == pytest.approx(np.sqrt(2 / region.sum()))


def test_each_slice_piece_is_evaluated_once(score, monkeypatch):
    """Cost is linear in the slices: a slice is never evaluated again inside a piece it
    already knows (points of one batch are chosen together, so they may share a piece)."""
    test = SelectiveTest(score, THRESHOLD, covariance=Isotropic(1.0))
    x, r, region = _stack_with_multislice_region(test, 1)
    seen = []  # (slice key, batch, z, lower, upper) of every slice evaluation
    batch = [0]
    evaluate = test.evaluator.evaluate
    call = StackedLine.__call__

    def counting(self, z):
        batch[0] += 1
        return call(self, z)

    def recording(a, b, z, mask=None):
        pieces = evaluate(a, b, z, mask=mask)
        for i in range(len(z)):
            seen.append((b[i].tobytes(), batch[0], z[i], pieces.lower[i], pieces.upper[i]))
        return pieces

    monkeypatch.setattr(StackedLine, "__call__", counting)
    test.evaluator.evaluate = recording
    res = test.run(x, r, region=region)
    assert len(seen) == res.evaluations
    by_slice = {}
    for key, k, z, lo, hi in seen:
        by_slice.setdefault(key, []).append((k, z, lo, hi))
    assert len(by_slice) == region.any(axis=(1, 2)).sum()  # only the moving slices
    for pieces in by_slice.values():
        for k, z, _, _ in pieces:
            assert not any(lo < z < hi for kk, _, lo, hi in pieces if kk < k)


def test_per_slice_reference_covariances_and_masks(score):
    rng = np.random.default_rng(5)
    mask = np.ones((3, 8, 8), bool)
    mask[:, 0, :] = False
    refs = [Isotropic(0.5), Isotropic(0.25), Isotropic(1.0)]
    test = SelectiveTest(
        score, THRESHOLD, covariance=Isotropic(1.0), reference_covariance=refs, mask=mask
    )
    x = rng.normal(size=(3, 8, 8))
    x[:, 2:5, 2:5] += 1.5
    assert not test.select(x)[:, 0].any()
    region = connected_regions(test.select(x), 1)[0]
    res = test.run(x, rng.normal(size=(3, 8, 8)), region=region)
    counts = region.sum(axis=(1, 2))
    expected = counts.sum() + sum(c * v.variance for c, v in zip(counts, refs, strict=True))
    assert res.sigma == pytest.approx(np.sqrt(expected) / counts.sum())
    with pytest.raises(ConfigError, match="holds 2 covariances but the stack has 3 slices"):
        SelectiveTest(score, THRESHOLD, reference_covariance=refs[:2]).run(x, x, region=region)
    with pytest.raises(ConfigError, match="single images"):
        test.run(x, x, region=region, permutations=10)


@pytest.mark.slow
def test_stack_null_p_values_are_uniform(score):
    """Null stacks of 3 slices, largest 3-D component tested: p uniform (KS at 0.01)."""
    test = SelectiveTest(score, THRESHOLD, covariance=Diagonal(np.full((8, 8), 1.0)))
    rng = np.random.default_rng(11)
    ps = []
    while len(ps) < 150:
        x, r = rng.normal(size=(3, 8, 8)), rng.normal(size=(3, 8, 8))
        regions = connected_regions(test.select(x), 1)
        if not regions:
            continue
        res = test.run(x, r, region=regions[0], termination="precision", precision=1e-3)
        ps.append(res.p_full)
    assert stats.kstest(ps, "uniform").pvalue > 0.01


def test_the_budget_counts_slice_images_and_the_cost_is_what_a_batch_takes(score):
    test = SelectiveTest(score, THRESHOLD, covariance=Isotropic(1.0))
    x, r, region = _stack_with_multislice_region(test, 1)
    moving = int(region.any(axis=(1, 2)).sum())
    assert moving >= 2
    line = test.line(x, r, region).line
    z = np.linspace(-1.0, 1.0, 7)
    predicted = line.cost(z)
    assert predicted.tolist() == [moving] * len(z)  # nothing known yet
    line(z)
    assert line.evaluations == predicted.sum()
    again = line.cost(z)  # every slice knows a piece around each of these points now
    assert again.tolist() == [0] * len(z)
    line(z)
    assert line.evaluations == predicted.sum()

    budget = 40
    res = test.run(x, r, region=region, termination="exhaustive", max_evaluations=budget,
                   on_budget="stop", batch_size=4)  # fmt: skip
    assert not res.complete and res.evaluations <= budget
    assert res.evaluations > budget - moving  # it stopped when the next point did not fit
    lo, hi = res.p_bounds
    exact = test.run(x, r, region=region, termination="exhaustive")
    assert lo <= exact.p_selective <= hi
