import math

import mpmath as mp
import numpy as np
import pytest

from medsi.errors import ConfigError
from medsi.si.truncnorm import (
    log_selective_p_value,
    log_standard_normal_mass,
    naive_p_value,
    selective_p_value,
    selective_p_value_bounds,
    truncated_normal_log_cdf,
)

INF = np.inf
RTOL = 1e-9  # probabilities and p-values against mpmath
MASS_RTOL = 1e-12  # what log_standard_normal_mass promises (measured at most 2.6e-13)


# --- mpmath reference (50 digits) --------------------------------------------------------------


def _mp_cdf(x) -> mp.mpf:
    if x == INF:
        return mp.mpf(1)
    if x == -INF:
        return mp.mpf(0)
    return mp.ncdf(x)


def _mp_mass(lo, hi) -> mp.mpf:
    """P(lo <= N(0, 1) <= hi) at 50 digits, formed on the side where it does not cancel."""
    if lo >= 0:
        return _mp_cdf(-lo) - _mp_cdf(-hi)
    if hi <= 0:
        return _mp_cdf(hi) - _mp_cdf(lo)
    return 1 - _mp_cdf(lo) - _mp_cdf(-hi)


def _mp_std(x, sigma, mean):
    if not math.isfinite(x):
        return x
    return (mp.mpf(x) - mp.mpf(mean)) / mp.mpf(sigma)


def _mp_below_above(intervals, z, sigma=1.0, mean=0.0) -> tuple[mp.mpf, mp.mpf]:
    below = above = mp.mpf(0)
    for lo, hi in np.asarray(intervals, dtype=float).reshape(-1, 2):
        if lo < z:
            below += _mp_mass(_mp_std(lo, sigma, mean), _mp_std(min(hi, z), sigma, mean))
        if hi > z:
            above += _mp_mass(_mp_std(max(lo, z), sigma, mean), _mp_std(hi, sigma, mean))
    return below, above


def _mp_cdf_pair(intervals, z, sigma=1.0, mean=0.0) -> tuple[mp.mpf, mp.mpf]:
    below, above = _mp_below_above(intervals, z, sigma, mean)
    return below / (below + above), above / (below + above)


def _mp_p(f, sf, alternative) -> mp.mpf:
    return {"two-sided": 2 * min(f, sf), "greater": sf, "less": f}[alternative]


def _rel(got_log: float, want: mp.mpf) -> float:
    """Relative error of exp(got_log) against want (both may be 0)."""
    if want == 0:
        return 0.0 if got_log == -INF else INF
    return float(abs(mp.exp(mp.mpf(got_log)) / want - 1))


@pytest.fixture(autouse=True)
def _mp_precision():
    old = mp.mp.dps
    mp.mp.dps = 50
    yield
    mp.mp.dps = old


# --- log_standard_normal_mass --------------------------------------------------------------------


def _regime_intervals(regime: str, rng: np.random.Generator, n: int = 60) -> np.ndarray:
    sign = rng.choice([-1.0, 1.0], size=n)
    match regime:
        case "far_tail":  # both ends 8..40 sigma, either sign
            a = rng.uniform(8, 40, n)
            b = np.minimum(a + 10 ** rng.uniform(-3, 1.5, n), 40.0)
        case "far_tail_to_inf":
            a, b = rng.uniform(8, 40, n), np.full(n, INF)
        case "straddle_zero":
            return np.column_stack([-(10 ** rng.uniform(-13, 1, n)), 10 ** rng.uniform(-13, 1, n)])
        case "narrow_near_zero":  # width 1e-12 .. 1e-3, at most 1e-2 from 0, may straddle it
            a = rng.uniform(-1e-2, 1e-2, n)
            b = a + 10 ** rng.uniform(-12, -3, n)
            return np.column_stack([a, b])
        case "narrow_body":
            a = rng.uniform(0, 6, n)
            b = a + 10 ** rng.uniform(-12, -3, n)
        case "narrow_tail":
            a = rng.uniform(8, 40, n)
            b = a + 10 ** rng.uniform(-12, -3, n)
        case "switch_point":  # widths around where the hazard integral is about 1
            a = rng.uniform(0, 40, n)
            b = a + rng.uniform(0.3, 3.0, n) / np.maximum(a, 1.0)
        case "wide_body":
            a = rng.uniform(0, 5, n)
            b = a + rng.uniform(0, 5, n)
        case _:
            raise ValueError(regime)
    lo, hi = np.where(sign > 0, a, -b), np.where(sign > 0, b, -a)
    return np.column_stack([lo, hi])


REGIMES = [
    "far_tail",
    "far_tail_to_inf",
    "straddle_zero",
    "narrow_near_zero",
    "narrow_body",
    "narrow_tail",
    "switch_point",
    "wide_body",
]


@pytest.mark.parametrize("seed, regime", list(enumerate(REGIMES)), ids=REGIMES)
def test_mass_matches_mpmath(seed, regime):
    iv = _regime_intervals(regime, np.random.default_rng(seed))
    got = log_standard_normal_mass(iv[:, 0], iv[:, 1])
    errors = [_rel(g, _mp_mass(lo, hi)) for (lo, hi), g in zip(iv, got, strict=True)]
    assert max(errors) < MASS_RTOL


@pytest.mark.parametrize(
    "lower, upper, want",
    [
        (-INF, INF, 0.0),
        (-INF, 0.0, math.log(0.5)),
        (0.0, INF, math.log(0.5)),
        (1.5, 1.5, -INF),
        (INF, INF, -INF),
        (-INF, -INF, -INF),
    ],
    ids=["whole_line", "lower_half", "upper_half", "point", "plus_inf_point", "minus_inf_point"],
)
def test_mass_special_values(lower, upper, want):
    assert log_standard_normal_mass(lower, upper) == pytest.approx(want, abs=1e-15)


def test_mass_broadcasts():
    out = log_standard_normal_mass(np.zeros((2, 1)), np.array([1.0, 2.0, INF]))
    assert out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(math.log(0.5), abs=1e-15)


def test_mass_mirror_symmetric():
    rng = np.random.default_rng(11)
    a = rng.uniform(-40, 40, 200)
    b = a + 10 ** rng.uniform(-12, 1, 200)
    np.testing.assert_allclose(
        log_standard_normal_mass(a, b), log_standard_normal_mass(-b, -a), rtol=1e-14
    )


# --- truncated_normal_log_cdf ------------------------------------------------------------------

CDF_CASES = {
    # name: (intervals, z, sigma, mean)
    "union_far_upper_tail": ([[8.0, 9.5], [12.0, 20.0], [25.0, 40.0]], 15.0, 1.0, 0.0),
    "union_far_upper_tail_z_in_last": ([[8.0, 9.5], [12.0, 20.0], [25.0, INF]], 38.0, 1.0, 0.0),
    "union_far_lower_tail": ([[-40.0, -30.0], [-22.0, -10.0], [-9.0, -8.0]], -21.0, 1.0, 0.0),
    "both_tails": ([[-INF, -12.0], [11.0, 11.5], [30.0, INF]], 11.2, 1.0, 0.0),
    "straddling_z_and_zero": ([[-0.3, 2.0], [3.0, 4.0]], 0.1, 1.0, 0.0),
    "z_at_left_end": ([[10.0, 11.0], [-INF, -10.0]], 10.0, 1.0, 0.0),
    "z_at_right_end": ([[10.0, 11.0]], 11.0, 1.0, 0.0),
    "z_on_shared_endpoint": ([[1.0, 2.0], [2.0, 3.0]], 2.0, 1.0, 0.0),
    "narrow_around_z_tail": ([[20.0, 20.0 + 1e-9], [21.0, 22.0]], 20.0 + 4e-10, 1.0, 0.0),
    "narrow_near_zero": ([[-1e-12, 2e-12], [5e-12, 6e-12]], 5.5e-12, 1.0, 0.0),
    "narrow_pieces_far": ([[-30.0 - 1e-6, -30.0], [-20.0, -20.0 + 1e-11]], -20.0 + 3e-12, 1.0, 0.0),
    "sigma_and_mean": ([[3.0, 3.5], [4.0, 60.0]], 10.0, 2.5, 1.0),
    "sigma_small_far_tail": ([[0.1, 0.12], [0.2, 0.4]], 0.3, 0.01, 0.0),
    "sigma_large_narrow": ([[100.0, 100.0 + 1e-7], [150.0, INF]], 100.0 + 2e-8, 7.0, -3.0),
    "whole_line": ([[-INF, INF]], -2.0, 1.0, 0.0),
    "unsorted": ([[25.0, 40.0], [8.0, 9.5], [12.0, 20.0]], 9.0, 1.0, 0.0),
}


@pytest.mark.parametrize("intervals, z, sigma, mean", CDF_CASES.values(), ids=CDF_CASES.keys())
def test_log_cdf_matches_mpmath(intervals, z, sigma, mean):
    log_f, log_sf = truncated_normal_log_cdf(np.array(intervals), z, sigma, mean)
    want_f, want_sf = _mp_cdf_pair(intervals, z, sigma, mean)
    assert _rel(log_f, want_f) < RTOL
    assert _rel(log_sf, want_sf) < RTOL


def _random_disjoint(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """n disjoint intervals with ends drawn on [low, high], in random order."""
    ends = np.sort(rng.uniform(low, high, 2 * n)).reshape(n, 2)
    return ends[rng.permutation(n)]


@pytest.mark.parametrize(
    "seed, low, high, sigma, mean",
    [
        (0, -4.0, 4.0, 1.0, 0.0),
        (1, 8.0, 40.0, 1.0, 0.0),
        (2, -40.0, -8.0, 1.0, 0.0),
        (3, -40.0, 40.0, 1.0, 0.0),
        (4, 5.0, 80.0, 2.0, 1.0),
        (5, -1e-3, 1e-3, 1e-4, 0.0),
    ],
    ids=["body", "upper_tail", "lower_tail", "both_tails", "sigma_mean", "small_sigma"],
)
def test_log_cdf_random_unions(seed, low, high, sigma, mean):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        iv = _random_disjoint(rng, int(rng.integers(1, 6)), low, high)
        row = iv[rng.integers(len(iv))]
        z = rng.uniform(row[0], row[1])
        log_f, log_sf = truncated_normal_log_cdf(iv, z, sigma, mean)
        want_f, want_sf = _mp_cdf_pair(iv, z, sigma, mean)
        assert _rel(log_f, want_f) < RTOL
        assert _rel(log_sf, want_sf) < RTOL


def test_log_cdf_endpoints():
    log_f, log_sf = truncated_normal_log_cdf([[1.0, 2.0]], 1.0)
    assert (log_f, log_sf) == (-INF, 0.0)
    log_f, log_sf = truncated_normal_log_cdf([[1.0, 2.0]], 2.0)
    assert (log_f, log_sf) == (0.0, -INF)


# --- selective p-values --------------------------------------------------------------------------

ALTERNATIVES = ["two-sided", "greater", "less"]


@pytest.mark.parametrize("alternative", ALTERNATIVES, ids=ALTERNATIVES)
@pytest.mark.parametrize(
    "name", ["union_far_upper_tail", "both_tails", "straddling_z_and_zero", "sigma_and_mean"]
)
def test_p_value_matches_mpmath(name, alternative):
    intervals, z, sigma, mean = CDF_CASES[name]
    want = _mp_p(*_mp_cdf_pair(intervals, z, sigma, mean), alternative)
    got = selective_p_value(intervals, z, sigma, mean, alternative)
    assert abs(got / float(want) - 1) < RTOL
    assert _rel(log_selective_p_value(intervals, z, sigma, mean, alternative), want) < RTOL


def test_two_sided_is_twice_the_smaller_tail():
    rng = np.random.default_rng(21)
    for _ in range(50):
        iv = _random_disjoint(rng, 3, -6.0, 6.0)
        row = iv[rng.integers(3)]
        z = rng.uniform(row[0], row[1])
        greater = selective_p_value(iv, z, alternative="greater")
        less = selective_p_value(iv, z, alternative="less")
        two = selective_p_value(iv, z)
        assert two == pytest.approx(min(1.0, 2 * min(greater, less)), rel=1e-12)
        assert greater + less == pytest.approx(1.0, rel=1e-12)


def test_tiny_p_value_in_log_space():
    # z at 45 sigma with Z = (-inf, -1] u [40, inf): p ~ 1e-441 underflows float64.
    iv, z = [[-INF, -1.0], [40.0, INF]], 45.0
    want = _mp_p(*_mp_cdf_pair(iv, z), "greater")
    assert _rel(log_selective_p_value(iv, z, alternative="greater"), want) < RTOL
    assert selective_p_value(iv, z, alternative="greater") == 0.0


def test_p_value_accepts_enum():
    from medsi.si.options import Alternative

    iv, z = [[1.0, 3.0]], 2.0
    assert selective_p_value(iv, z, alternative=Alternative.GREATER) == selective_p_value(
        iv, z, alternative="greater"
    )


def test_p_value_clipped_to_one():
    assert selective_p_value([[-INF, INF]], 0.0) == 1.0
    assert log_selective_p_value([[-1.0, 1.0]], 0.0) == 0.0


# --- bounds ------------------------------------------------------------------------------------


def _random_bounds_case(rng: np.random.Generator, low: float, high: float):
    """Disjoint intervals on [low, high] split into inside (one holds z), unknown and out."""
    n = int(rng.integers(3, 9))
    ends = np.sort(rng.uniform(low, high, 2 * n)).reshape(n, 2)
    if rng.uniform() < 0.3:
        ends[0, 0] = -INF
    if rng.uniform() < 0.3:
        ends[-1, 1] = INF
    role = rng.integers(0, 3, n)  # 0 inside, 1 unknown, 2 out
    k = int(rng.integers(n))
    role[k] = 0
    z = rng.uniform(ends[k, 0], ends[k, 1]) if np.isfinite(ends[k]).all() else None
    if z is None:
        z = ends[k, 1] - 1.0 if np.isfinite(ends[k, 1]) else ends[k, 0] + 1.0
    return ends[role == 0], ends[role == 1].reshape(-1, 2), z


def _random_completion(rng: np.random.Generator, inside: np.ndarray, unknown: np.ndarray):
    """inside plus random pieces of the unknown intervals (each cut at a random point)."""
    pieces = [inside]
    for lo, hi in unknown:
        cut = rng.uniform(max(lo, -50.0), min(hi, 50.0))
        for piece in ([lo, cut], [cut, hi]):
            if rng.uniform() < 0.5:
                pieces.append(np.array([piece]))
    return np.concatenate(pieces)


@pytest.mark.parametrize("alternative", ALTERNATIVES, ids=ALTERNATIVES)
@pytest.mark.parametrize(
    "seed, low, high",
    [(0, -3.0, 3.0), (1, 6.0, 30.0), (2, -30.0, -6.0), (3, -20.0, 20.0)],
    ids=["body", "upper_tail", "lower_tail", "wide"],
)
def test_bounds_contain_every_completion(seed, low, high, alternative):
    rng = np.random.default_rng(100 + seed)
    for _ in range(15):
        inside, unknown, z = _random_bounds_case(rng, low, high)
        p_lower, p_upper = selective_p_value_bounds(inside, unknown, z, alternative=alternative)
        assert 0.0 <= p_lower <= p_upper <= 1.0
        for _ in range(8):
            p = selective_p_value(
                _random_completion(rng, inside, unknown), z, alternative=alternative
            )
            assert p_lower * (1 - 1e-12) <= p <= p_upper * (1 + 1e-12)


@pytest.mark.parametrize("alternative", ALTERNATIVES, ids=ALTERNATIVES)
def test_bounds_are_attained(alternative):
    # Every unknown piece on one side of z joins Z: those two completions give F_max and F_min.
    rng = np.random.default_rng(7)
    for _ in range(30):
        inside, unknown, z = _random_bounds_case(rng, -4.0, 4.0)
        p_lower, p_upper = selective_p_value_bounds(inside, unknown, z, alternative=alternative)
        below = np.column_stack([unknown[:, 0], np.minimum(unknown[:, 1], z)])
        above = np.column_stack([np.maximum(unknown[:, 0], z), unknown[:, 1]])
        below, above = below[below[:, 0] < below[:, 1]], above[above[:, 0] < above[:, 1]]
        ends = [
            selective_p_value(np.concatenate([inside, part]), z, alternative=alternative)
            for part in (below, above)
        ]
        assert p_lower == pytest.approx(min(ends), rel=1e-12, abs=1e-300)
        if alternative != "two-sided":
            assert p_upper == pytest.approx(max(ends), rel=1e-12, abs=1e-300)
        else:
            assert p_upper >= max(ends) * (1 - 1e-12)


def test_bounds_match_mpmath_in_tail():
    inside, unknown, z = [[20.0, 21.0]], [[19.0, 20.0], [21.0, 25.0], [-INF, -30.0]], 20.5
    a_below, a_above = _mp_below_above(inside, z)
    u_below, u_above = _mp_below_above(unknown, z)
    f_max = (a_below + u_below) / (a_below + a_above + u_below)
    f_min = a_below / (a_below + a_above + u_above)
    p_lower, p_upper = selective_p_value_bounds(inside, unknown, z, alternative="greater")
    assert abs(p_lower / float(1 - f_max) - 1) < RTOL
    assert abs(p_upper / float(1 - f_min) - 1) < RTOL


def test_bounds_two_sided_peak():
    # Unknown mass on both sides lets F range across 0.5, so some completion has p = 1.
    p_lower, p_upper = selective_p_value_bounds([[0.0, 0.5]], [[-INF, 0.0], [0.5, INF]], 0.25)
    assert p_upper == 1.0
    assert p_lower < 1.0


@pytest.mark.parametrize("alternative", ALTERNATIVES, ids=ALTERNATIVES)
@pytest.mark.parametrize(
    "unknown", [np.empty((0, 2)), [], np.zeros((0, 2))], ids=["empty_0x2", "list", "zeros_0x2"]
)
def test_bounds_without_unknown_equal_p(unknown, alternative):
    inside, z = [[-INF, -12.0], [11.0, 11.5], [30.0, INF]], 11.2
    p = selective_p_value(inside, z, alternative=alternative)
    assert selective_p_value_bounds(inside, unknown, z, alternative=alternative) == (p, p)


# --- naive p -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alternative", ALTERNATIVES, ids=ALTERNATIVES)
@pytest.mark.parametrize(
    "z, sigma",
    [(0.0, 1.0), (1.3, 1.0), (-2.7, 0.5), (25.0, 0.7), (-70.0, 2.0)],
    ids=["zero", "body", "negative", "far_tail", "far_negative"],
)
def test_naive_p_matches_mpmath(z, sigma, alternative):
    t = mp.mpf(z) / mp.mpf(sigma)
    want = {
        "two-sided": min(mp.mpf(1), 2 * mp.ncdf(-abs(t))),
        "greater": mp.ncdf(-t),
        "less": mp.ncdf(t),
    }[alternative]
    got = naive_p_value(z, sigma, alternative)
    assert abs(got / float(want) - 1) < RTOL


def test_naive_equals_selective_on_whole_line():
    for alternative in ALTERNATIVES:
        assert naive_p_value(-1.7, 2.0, alternative) == pytest.approx(
            selective_p_value([[-INF, INF]], -1.7, 2.0, 0.0, alternative), rel=1e-13
        )


# --- errors ------------------------------------------------------------------------------------

ERROR_CASES = {
    # name: (call, match)
    "mass_lower_gt_upper": (lambda: log_standard_normal_mass(2.0, 1.0), '"lower" must be <='),
    "mass_nan": (lambda: log_standard_normal_mass(np.nan, 1.0), "must not be NaN"),
    "z_outside": (
        lambda: truncated_normal_log_cdf([[0.0, 1.0], [2.0, 3.0]], 1.5),
        r'"intervals" must contain "z".*got z=1\.5 outside all 2 intervals',
    ),
    "sigma_zero": (lambda: truncated_normal_log_cdf([[0.0, 1.0]], 0.5, 0.0), '"sigma" must be'),
    "sigma_negative": (lambda: selective_p_value([[0.0, 1.0]], 0.5, -1.0), "got -1.0"),
    "sigma_nan": (lambda: naive_p_value(1.0, np.nan), '"sigma" must be a finite'),
    "z_nan": (lambda: truncated_normal_log_cdf([[0.0, 1.0]], np.nan), '"z" must be finite'),
    "mean_inf": (lambda: truncated_normal_log_cdf([[0.0, 1.0]], 0.5, 1.0, INF), '"mean"'),
    "lower_gt_upper": (
        lambda: truncated_normal_log_cdf([[0.0, 1.0], [3.0, 2.0]], 0.5),
        r"lower <= upper, got row 1 = \[3\.0, 2\.0\]",
    ),
    "overlapping": (
        lambda: truncated_normal_log_cdf([[0.0, 2.0], [1.0, 3.0]], 0.5),
        r"must be disjoint intervals.*\[0\.0, 2\.0\] overlapping \[1\.0, 3\.0\]",
    ),
    "nan_end": (
        lambda: truncated_normal_log_cdf([[0.0, 1.0], [np.nan, 3.0]], 0.5),
        "must not contain NaN, got NaN in row 1",
    ),
    "bad_shape": (
        lambda: truncated_normal_log_cdf([0.0, 1.0, 2.0], 0.5),
        r"\(m, 2\) array.*got shape \(3,\)",
    ),
    "no_intervals": (lambda: truncated_normal_log_cdf(np.empty((0, 2)), 0.5), "m >= 1"),
    "zero_probability": (
        lambda: truncated_normal_log_cdf([[0.5, 0.5]], 0.5),
        "must have positive probability",
    ),
    "bad_alternative": (
        lambda: selective_p_value([[0.0, 1.0]], 0.5, alternative="both"),
        '"alternative" must be one of',
    ),
    "naive_bad_alternative": (
        lambda: naive_p_value(0.5, 1.0, alternative="two_sided"),
        '"alternative" must be one of',
    ),
    "bounds_z_outside_inside": (
        lambda: selective_p_value_bounds([[0.0, 1.0]], [[1.0, 2.0]], 1.5),
        '"inside" must contain "z"',
    ),
    "bounds_overlap": (
        lambda: selective_p_value_bounds([[0.0, 1.0]], [[0.5, 2.0]], 0.2),
        r'"inside" and "unknown" must be disjoint',
    ),
    "bounds_unknown_malformed": (
        lambda: selective_p_value_bounds([[0.0, 1.0]], [[3.0, 2.0]], 0.2),
        r'"unknown" rows must have lower <= upper',
    ),
    "bounds_zero_probability": (
        lambda: selective_p_value_bounds([[0.2, 0.2]], [[1.0, 2.0]], 0.2),
        '"inside" must have positive probability',
    ),
    "bounds_bad_alternative": (
        lambda: selective_p_value_bounds([[0.0, 1.0]], [], 0.2, alternative="up"),
        '"alternative" must be one of',
    ),
}


@pytest.mark.parametrize("call, match", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_error_message_has_a_remedy():
    with pytest.raises(ConfigError, match=r"; pass the intervals found for this z"):
        selective_p_value([[0.0, 1.0]], 2.0)
