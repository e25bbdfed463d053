"""Checks a user can run on their machine to see that medsi's p-values are valid.

``medsi selftest`` runs each check and prints a table. The same building blocks
(a small random piecewise-linear reconstruction, null images, the raw p-values)
serve the test suite, which runs them at larger sizes.
"""

from __future__ import annotations

import dataclasses
import time

import mpmath
import numpy as np
import torch
from scipy import stats
from torch import nn

from medsi.model.score import AnomalyScore
from medsi.si import Dense, Isotropic, LineEvaluator, SelectiveTest, log_standard_normal_mass

__all__ = [
    "CheckResult",
    "RandomReconstruction",
    "make_random_score",
    "null_p_values",
    "interval_exactness",
    "truncnorm_max_error",
    "bounds_contain_exhaustive",
    "run_selftest",
    "format_table",
]


class RandomReconstruction(nn.Module):
    """A small random piecewise-linear "reconstruction" of (B, 1, H, W) images.

    conv-ReLU, max pooling, conv-LeakyReLU, bilinear upsampling, conv, plus a skip
    connection: every kind of decision the engine must follow, at a cost small
    enough for statistical checks with hundreds of p-values. H and W must be even.
    Its output is small, like a good denoiser's on pure noise, so x - f(x) is mostly x
    and the signed score selects regions whose pixels are high: the setting where the
    naive p-value fails.
    """

    def __init__(self, channels: int = 4, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.encode = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.middle = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.decode = nn.Conv2d(2 * channels, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() > 1 else 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct x."""
        skip = self.encode(x)
        deep = self.up(self.middle(self.pool(skip)))
        return 0.1 * x + 0.05 * self.decode(torch.cat([skip, deep], dim=1))


def make_random_score(signed: bool = False, channels: int = 4, seed: int = 0) -> nn.Module:
    """The anomaly score A(|x - f(x)|) (or signed) of a :class:`RandomReconstruction`, float64."""
    return (
        AnomalyScore(RandomReconstruction(channels, seed), kernel_size=3, signed=signed)
        .double()
        .eval()
    )


def _covariance(kind: str, shape: tuple[int, int]):
    if kind == "iid":
        return Isotropic(1.0)
    if kind == "corr":
        return Dense.autoregressive(shape, rho=0.5)
    raise ValueError(f"unknown covariance kind {kind!r}")


def null_p_values(
    n: int,
    covariance: str = "iid",
    signed: bool = False,
    size: int = 8,
    threshold: float | None = None,
    seed: int = 0,
    termination: str = "exhaustive",
    batch_size: int = 128,
) -> dict[str, np.ndarray]:
    """Selective, oc and naive p-values of the whole selected set on null images.

    Test and reference images are drawn independently from N(0, S) (``"iid"``: S = I;
    ``"corr"``: S_ij = 0.5^|i-j| over the flattened pixels), so H0 holds. Images with an
    empty selection are skipped (the test is conditional on selecting something).

    Returns
    -------
    dict
        Arrays ``full``, ``component``, ``oc``, ``naive`` of length ``n``, and
        ``evaluations``.
    """
    shape = (size, size)
    cov = _covariance(covariance, shape)
    score = make_random_score(signed=signed, seed=seed)
    if threshold is None:
        threshold = 0.55 if signed else 1.2
    test = SelectiveTest(score, threshold, covariance=cov)
    rng = np.random.default_rng(seed + 1)
    out: dict[str, list] = {k: [] for k in ("full", "component", "oc", "naive", "evaluations")}
    attempts = 0
    while len(out["full"]) < n:
        attempts += 1
        if attempts > 20 * n:
            raise RuntimeError("too few null images select anything; lower the threshold")
        x, r = cov.sample(shape, rng), cov.sample(shape, rng)
        if not test.select(x).any():
            continue
        res = test.run(x, r, termination=termination, batch_size=batch_size)
        out["full"].append(res.p_full)
        out["component"].append(res.p_component)
        out["oc"].append(res.p_oc)
        out["naive"].append(res.p_naive)
        out["evaluations"].append(res.evaluations)
    return {k: np.asarray(v) for k, v in out.items()}


def interval_exactness(
    n_lines: int = 5, size: int = 8, points_inside: int = 50, seed: int = 0
) -> tuple[int, int, int]:
    """Check intervals of constant decisions against plain forward passes.

    For random lines through a random PL score, every interval the engine returns is
    probed at ``points_inside`` points strictly inside (all decisions must equal those at
    its own point) and just outside each finite end (some decision must differ).

    Returns
    -------
    tuple
        (intervals checked, interior mismatches, outside points with no change).
    """
    rng = np.random.default_rng(seed)
    evaluator = LineEvaluator(make_random_score(seed=seed), threshold=1.0)
    checked = inside_bad = outside_same = 0
    for _ in range(n_lines):
        a = rng.normal(size=(size, size))
        b = rng.normal(size=(size, size))
        z = np.sort(rng.uniform(-3, 3, size=8))
        pieces = evaluator.evaluate(a, b, z)
        for zk, lo, hi in zip(pieces.z, pieces.lower, pieces.upper, strict=True):
            ref = evaluator.patterns((a + b * zk)[None])[0]
            lo_f = lo if np.isfinite(lo) else zk - 10.0
            hi_f = hi if np.isfinite(hi) else zk + 10.0
            width = hi_f - lo_f
            inner = lo_f + width * (1e-6 + (1 - 2e-6) * rng.uniform(size=points_inside))
            pats = evaluator.patterns(a[None] + b[None] * inner[:, None, None])
            inside_bad += int((pats != ref[None]).any(1).sum())
            ends = [e for e in (lo, hi) if np.isfinite(e)]
            outside = [e + np.sign(e - zk) * 1e-7 * width for e in ends]
            if outside:
                pats = evaluator.patterns(a[None] + b[None] * np.array(outside)[:, None, None])
                outside_same += int((pats == ref[None]).all(1).sum())
            checked += 1
    return checked, inside_bad, outside_same


def truncnorm_max_error(n_cases: int = 40, seed: int = 0) -> float:
    """Largest relative error of interval masses against 50-digit arithmetic.

    Intervals are drawn in the body, 8-40 sigma into either tail, and very narrow.
    """
    rng = np.random.default_rng(seed)
    mpmath.mp.dps = 50
    worst = 0.0
    for i in range(n_cases):
        kind = i % 3
        if kind == 0:
            lo = rng.uniform(-4, 4)
            hi = lo + rng.uniform(0.01, 3)
        elif kind == 1:
            lo = rng.uniform(8, 40) * rng.choice([-1, 1])
            hi = lo + rng.uniform(1e-3, 1)
        else:
            lo = rng.uniform(-40, 40)
            hi = lo + 10 ** rng.uniform(-12, -4)
        log_got = float(log_standard_normal_mass(np.array([lo]), np.array([hi]))[0])
        if lo >= 0:  # upper tail: 1 - ncdf rounds to 0 even at 50 digits, so mirror it
            lo, hi = -hi, -lo
        exact = mpmath.ncdf(mpmath.mpf(hi)) - mpmath.ncdf(mpmath.mpf(lo))
        # compare in log space: masses 40 sigma out underflow float64
        error = abs(mpmath.expm1(mpmath.mpf(log_got) - mpmath.log(exact)))
        worst = max(worst, float(error))
    return worst


def bounds_contain_exhaustive(
    n_images: int = 5, seed: int = 0
) -> list[tuple[str, float, float, float]]:
    """P bounds of ``precision`` and ``decision`` searches next to the exhaustive p.

    Returns
    -------
    list
        (termination, p_lower, p_exhaustive, p_upper) for every image and event.
    """
    rng = np.random.default_rng(seed)
    test = SelectiveTest(make_random_score(seed=seed), 1.25, covariance=Isotropic(1.0))
    rows = []
    done = 0
    while done < n_images:
        x, r = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
        x[2:5, 2:5] += 1.5 * rng.uniform()  # spread the p-values over (0, 1)
        if not test.select(x).any():
            continue
        exact = test.run(x, r, termination="exhaustive")
        for term in ("precision", "decision"):
            res = test.run(x, r, termination=term, precision=1e-2, alpha=0.05)
            rows.append((term, res.p_bounds_full[0], exact.p_full, res.p_bounds_full[1]))
            rows.append(
                (term, res.p_bounds_component[0], exact.p_component, res.p_bounds_component[1])
            )
        done += 1
    return rows


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One line of the self-test table."""

    name: str
    passed: bool
    detail: str
    seconds: float


def run_selftest(quick: bool = True, seed: int = 0, progress: bool = False) -> list[CheckResult]:
    """Run every check; ``quick`` keeps the whole run to about a minute on two cores."""
    n_null = 100 if quick else 300
    results: list[CheckResult] = []

    def timed(name, fn):
        if progress:
            print(f"  running: {name} ...", flush=True)
        t0 = time.perf_counter()
        passed, detail = fn()
        results.append(CheckResult(name, passed, detail, time.perf_counter() - t0))

    def truncnorm():
        err = truncnorm_max_error(30 if quick else 120, seed)
        return err < 1e-9, f"max relative error vs mpmath {err:.1e} (limit 1e-9)"

    def exactness():
        checked, bad, same = interval_exactness(2 if quick else 10, seed=seed)
        return bad == 0 and same == 0, (
            f"{checked} intervals: {bad} interior mismatches, {same} ends without a change"
        )

    def bounds():
        rows = bounds_contain_exhaustive(2 if quick else 8, seed)
        bad = sum(1 for _, lo, p, hi in rows if not lo - 1e-12 <= p <= hi + 1e-12)
        return bad == 0, f"{len(rows)} bounds, {bad} not containing the exhaustive p"

    def uniformity(covariance, signed):
        def check():
            ps = null_p_values(n_null, covariance=covariance, signed=signed, seed=seed)
            ks = {k: stats.kstest(ps[k], "uniform").pvalue for k in ("full", "component", "oc")}
            naive = float((ps["naive"] < 0.05).mean())
            ok = min(ks.values()) > 0.01
            return ok, (
                f"KS p: full {ks['full']:.2f}, component {ks['component']:.2f}, oc {ks['oc']:.2f}"
                f" (n={n_null}); naive rejects {naive:.0%} at 0.05"
            )

        return check

    timed("truncated normal vs mpmath", truncnorm)
    timed("exact intervals", exactness)
    timed("precision/decision bounds", bounds)
    timed("null uniformity, iid, |x-f(x)|", uniformity("iid", False))
    timed("null uniformity, iid, signed", uniformity("iid", True))
    if not quick:
        timed("null uniformity, corr, |x-f(x)|", uniformity("corr", False))
        timed("null uniformity, corr, signed", uniformity("corr", True))
    return results


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table of check results."""
    width = max(len(r.name) for r in results)
    lines = [f"{'check'.ljust(width)}  result  time    detail"]
    for r in results:
        mark = "PASS" if r.passed else "FAIL"
        lines.append(f"{r.name.ljust(width)}  {mark:6}  {r.seconds:5.1f}s  {r.detail}")
    return "\n".join(lines)
