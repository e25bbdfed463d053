"""Null p-values must be Uniform(0, 1): the central validity claim of the engine (DESIGN.md 6)."""

import numpy as np
import pytest
from scipy import stats

from medsi.selftest import null_p_values

N_NULL = 300
CASES = [
    ("iid", False),
    ("iid", True),
    ("corr", False),
    ("corr", True),
]


@pytest.fixture(
    scope="module", params=CASES, ids=[f"{c}-{'signed' if s else 'abs'}" for c, s in CASES]
)
def null_run(request):
    covariance, signed = request.param
    return covariance, signed, null_p_values(N_NULL, covariance=covariance, signed=signed, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "component", "oc"])
def test_selective_p_values_are_uniform_under_the_null(null_run, kind):
    _, _, ps = null_run
    assert len(ps[kind]) == N_NULL
    assert ((ps[kind] >= 0) & (ps[kind] <= 1)).all()
    assert stats.kstest(ps[kind], "uniform").pvalue > 0.01


@pytest.mark.slow
def test_component_event_p_is_from_a_larger_truncation_set(null_run):
    # Z_full is inside Z_component: both valid, and they differ on some images.
    _, _, ps = null_run
    assert not np.allclose(ps["full"], ps["component"])


@pytest.mark.slow
def test_naive_p_is_invalid_with_the_signed_score(null_run, record_property):
    covariance, signed, ps = null_run
    rate = float((ps["naive"] < 0.05).mean())
    record_property(f"naive_rejection_rate_{covariance}_{'signed' if signed else 'abs'}", rate)
    for kind in ("full", "component"):
        # the selective test keeps its level (binomial 99.9% upper limit for n=300 is ~0.09)
        assert (ps[kind] < 0.05).mean() < 0.095
    if signed:
        # the selection biases the statistic upward: the naive test rejects far too often
        assert rate > 0.10
