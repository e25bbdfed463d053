"""One p-value over fronts, processes or a Dask cluster is the sequential sweep's p-value."""

import numpy as np
import pytest

from medsi.errors import ConfigError
from medsi.selftest import make_random_score
from medsi.si import (
    DaskLineEvaluator,
    Isotropic,
    LineEvaluator,
    ProcessLineEvaluator,
    SelectiveTest,
    connected_regions,
)
from medsi.si.parallel import split_points

THRESHOLD = 1.2
TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def score():
    return make_random_score(seed=3)


@pytest.fixture(scope="module")
def processes(score):
    with ProcessLineEvaluator(score, THRESHOLD, workers=2) as evaluator:
        yield evaluator


@pytest.fixture(scope="module")
def dask_local(score):
    pytest.importorskip("distributed")
    with DaskLineEvaluator(score, THRESHOLD, scheduler="local", workers=2) as evaluator:
        yield evaluator


def _null_pair(seed, shift=1.0, shape=(8, 8)):
    test = SelectiveTest(make_random_score(seed=3), THRESHOLD)
    rng = np.random.default_rng(seed)
    while True:
        x, r = rng.normal(size=shape), rng.normal(size=shape)
        x[..., 2:5, 3:6] += shift
        if test.select(x).any():
            return x, r


def _joined(intervals):
    """Neighbouring pieces joined where they meet: their shared end is computed from two
    different points and may differ in the last bits (a gap or overlap of ~1e-15)."""
    out = [list(intervals[0])]
    for lo, hi in intervals[1:]:
        if lo - out[-1][1] <= TOLERANCE * max(1.0, abs(lo)):
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return np.array(out)


def _same_sets(one, other):
    for a, b in (
        (one.intervals_full, other.intervals_full),
        (one.intervals_component, other.intervals_component),
    ):
        a, b = _joined(a), _joined(b)
        assert a.shape == b.shape
        finite = np.isfinite(a)
        assert np.array_equal(finite, np.isfinite(b))
        np.testing.assert_allclose(a[finite], b[finite], rtol=TOLERANCE, atol=0)


def _same_p(one, other):
    for name in ("p_full", "p_component", "p_oc"):
        assert getattr(one, name) == pytest.approx(getattr(other, name), rel=TOLERANCE, abs=1e-300)


def test_split_points_covers_the_batch_in_order():
    for k in (1, 2, 7, 64):
        for parts in (1, 2, 3, 8):
            chunks = split_points(k, parts)
            assert chunks[0].start == 0 and chunks[-1].stop == k
            assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))
            sizes = [c.stop - c.start for c in chunks]
            assert len(chunks) == min(parts, k) and max(sizes) - min(sizes) <= 1
    assert len(split_points(10, 4, min_points=4)) == 2


def test_worker_pieces_equal_the_local_pieces(score, processes):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    z = np.linspace(-3, 3, 11)
    local = LineEvaluator(score, THRESHOLD).evaluate(a, b, z)
    remote = processes.evaluate(a, b, z)
    np.testing.assert_allclose(remote.lower, local.lower, rtol=TOLERANCE, atol=1e-15)
    np.testing.assert_allclose(remote.upper, local.upper, rtol=TOLERANCE, atol=1e-15)
    assert np.array_equal(remote.selected, local.selected)
    assert np.array_equal(remote.degenerate, local.degenerate)
    # per-point lines and masks are cut with their points
    lines_a, lines_b = rng.normal(size=(5, 8, 8)), rng.normal(size=(5, 8, 8))
    masks = rng.random((5, 8, 8)) > 0.3
    z5 = rng.normal(size=5)
    local = LineEvaluator(score, THRESHOLD).evaluate(lines_a, lines_b, z5, mask=masks)
    remote = processes.evaluate(lines_a, lines_b, z5, mask=masks)
    np.testing.assert_allclose(remote.lower, local.lower, rtol=TOLERANCE, atol=1e-15)
    assert np.array_equal(remote.selected, local.selected)


@pytest.mark.parametrize("seed", [1, 2])
def test_fronts_and_processes_give_the_sequential_sweep(score, processes, seed):
    """Exhaustive search: one front at a time vs 64 fronts vs 64 fronts over 2 processes."""
    x, r = _null_pair(seed)
    sequential = SelectiveTest(score, THRESHOLD, covariance=Isotropic(1.0)).run(x, r, batch_size=1)
    fronts = SelectiveTest(score, THRESHOLD, covariance=Isotropic(1.0)).run(x, r, batch_size=64)
    pooled = SelectiveTest(processes, THRESHOLD, covariance=Isotropic(1.0)).run(x, r, batch_size=64)
    assert sequential.evaluations > 10  # a real sweep, not one piece
    for other in (fronts, pooled):
        _same_sets(sequential, other)
        _same_p(sequential, other)
    # the parallel runs evaluate the same batches, so they see the same points
    assert pooled.evaluations == fronts.evaluations


def test_precision_termination_is_identical_over_processes(score, processes):
    x, r = _null_pair(5)
    local = SelectiveTest(score, THRESHOLD).run(x, r, termination="precision", batch_size=16)
    pooled = SelectiveTest(processes, THRESHOLD).run(x, r, termination="precision", batch_size=16)
    assert local.evaluations == pooled.evaluations
    assert local.p_bounds == pytest.approx(pooled.p_bounds, rel=TOLERANCE, abs=1e-300)


def test_a_multislice_lesion_over_processes(score, processes):
    test = SelectiveTest(score, THRESHOLD)
    rng = np.random.default_rng(11)
    for _ in range(200):
        x, r = rng.normal(size=(3, 8, 8)), rng.normal(size=(3, 8, 8))
        x[:, 2:5, 2:5] += 1.5
        spanning = [
            c for c in connected_regions(test.select(x), 1) if c.any(axis=(1, 2)).sum() >= 2
        ]
        if spanning:
            break
    local = test.run(x, r, region=spanning[0], batch_size=32)
    pooled = SelectiveTest(processes, THRESHOLD).run(x, r, region=spanning[0], batch_size=32)
    _same_sets(local, pooled)
    _same_p(local, pooled)


def test_dask_local_cluster_gives_the_sequential_sweep(score, dask_local):
    x, r = _null_pair(3)
    sequential = SelectiveTest(score, THRESHOLD).run(x, r, batch_size=1)
    on_cluster = SelectiveTest(dask_local, THRESHOLD).run(x, r, batch_size=32)
    _same_sets(sequential, on_cluster)
    _same_p(sequential, on_cluster)


def test_dask_by_scheduler_address(score):
    distributed = pytest.importorskip("distributed")
    x, r = _null_pair(4)
    local = SelectiveTest(score, THRESHOLD).run(x, r, batch_size=16)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        with DaskLineEvaluator(score, THRESHOLD, scheduler=cluster.scheduler_address) as ev:
            assert ev.workers == 2
            remote = SelectiveTest(ev, THRESHOLD).run(x, r, batch_size=16)
    _same_sets(local, remote)
    _same_p(local, remote)


def test_bad_executor_options_are_refused(score):
    with pytest.raises(ConfigError, match="scheduler"):
        DaskLineEvaluator(score, THRESHOLD, scheduler=42)
    with pytest.raises(ConfigError, match="workers"):
        ProcessLineEvaluator(score, THRESHOLD, workers=0)
