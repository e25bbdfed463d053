import numpy as np
import pytest

from medsi.pipeline.inference import assess_lesions, find_lesions
from medsi.selftest import make_random_score
from medsi.si import Isotropic, SelectiveTest

THRESHOLD = 1.2


@pytest.fixture(scope="module")
def score():
    return make_random_score(seed=3)


def _volume_with_a_three_plane_lesion(score, seed=0):
    rng = np.random.default_rng(seed)
    test = SelectiveTest(score, THRESHOLD)
    for _ in range(200):
        x = rng.normal(size=(5, 8, 8))
        x[1:4, 2:6, 2:6] += 2.5
        labels = find_lesions(test.select(x), "lesion")
        spans = [np.flatnonzero((labels == i).any(axis=(1, 2))) for i in range(1, labels.max() + 1)]
        if any(len(s) >= 3 for s in spans):
            return x, rng.normal(size=(5, 8, 8)), labels
    raise AssertionError("no three-plane lesion drawn")


def test_a_lesion_spanning_three_planes_gets_one_p_value(score):
    x, r, labels = _volume_with_a_three_plane_lesion(score)
    results = assess_lesions(
        score,
        THRESHOLD,
        x,
        r,
        np.ones(x.shape, bool),
        Isotropic(1.0),
        [Isotropic(1.0)] * len(x),
        labels,
        termination="exhaustive",
        max_evaluations=100_000,
        progress=False,
    )
    assert [les.lesion_id for les in results] == list(range(1, labels.max() + 1))
    multi = [les for les in results if len(les.planes) >= 3]
    assert multi, "the three-plane lesion must be one test"
    les = multi[0]
    assert les.result.complete and les.p_method == "selective"
    assert np.array_equal(les.mask, labels == les.lesion_id)
    # the same test run directly on the whole volume gives the same p
    direct = SelectiveTest(score, THRESHOLD).run(x, r, region=les.mask)
    assert les.result.p_full == pytest.approx(direct.p_full, abs=1e-12)
    per_slice = find_lesions(labels == les.lesion_id, "slice").max()
    assert per_slice >= 3  # as per-slice components it would have been several tests


def test_worker_processes_give_the_same_lesion_p_values(score):
    x, r, labels = _volume_with_a_three_plane_lesion(score, seed=1)
    common = dict(termination="exhaustive", max_evaluations=100_000, progress=False)
    args = (score, THRESHOLD, x, r, np.ones(x.shape, bool), Isotropic(1.0), [Isotropic(1.0)] * 5)
    here = assess_lesions(*args, labels, **common)
    pooled = assess_lesions(*args, labels, workers=2, **common)
    assert len(here) == len(pooled) == labels.max()
    for a, b in zip(here, pooled, strict=True):
        assert a.result.evaluations == b.result.evaluations
        assert b.result.p_full == pytest.approx(a.result.p_full, rel=1e-12, abs=1e-300)
        assert b.result.p_component == pytest.approx(a.result.p_component, rel=1e-12, abs=1e-300)
    assert assess_lesions(*args, np.zeros_like(labels), workers=2, **common) == []
