"""Parametric search: cover the line with intervals of constant decisions (DESIGN.md section 2).

The search evaluates K points per batch. Each evaluation returns the interval of
constant decisions around its point and whether each conditioning event holds there.
Points go to the ends of the still uncovered gaps (*sweep fronts*) and, when there are
more slots than fronts, to mass quantiles inside the gaps (*seeds*, which open new
fronts); gaps are served in order of their weight, the null probability mass they
hold relative to the mass already known to be in the truncation set on the same side
of the observed statistic. So the search starts at the observed statistic and grows
outward by probability mass, and with K > 1 one p-value fills a batched forward pass.
With ``decision`` and ``precision`` the seeds first go near the truncation set found so far
(within 3 sigma^2 / |z_obs|, where the null density changes by e^3), since a statistic far
in the tail is decided by how far that set reaches; once that window is covered, seeds
follow the mass of whole gaps again.

Termination:

* ``exhaustive``: on each side of z_obs, the null mass of the gaps left open is below
  1e-12 times the mass known to be in the truncation set on that side (for every event).
  Gaps narrower than floating point can resolve (1e-13 relative) are left out of that
  rule but always counted in the reported bounds.
* ``precision``: p_upper - p_lower < eps for every event.
* ``decision``: p_upper < alpha or p_lower >= alpha for every event.
* ``oc``: stop after the first evaluation; the over-conditioned p (truncation to the piece
  holding z_obs) is exact, the selective p only known within its bounds.

With ``on_budget="stop"`` a search that reaches ``max_evaluations`` stops there and says so
(``SearchOutcome.complete`` is False) instead of raising: its bounds are still honest.

Bounds treat every open gap as possibly in or out of the truncation set, so they are
honest whatever the termination.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import special

from medsi.errors import ConfigError, InferenceError
from medsi.si import intervals as iv
from medsi.si.options import Alternative, Termination, coerce_option
from medsi.si.truncnorm import (
    log_standard_normal_mass,
    selective_p_value,
    selective_p_value_bounds,
)

__all__ = ["SearchSettings", "SearchOutcome", "parametric_search", "EXHAUSTIVE_RELATIVE_MASS"]

EXHAUSTIVE_RELATIVE_MASS = 1e-12
_STEP = 1e-10  # how far past an interval end the next point goes, relative to max(|z|, sigma)
_UNRESOLVABLE = 1e-13  # gaps narrower than this (relative) are below floating-point resolution
_MAX_RETRIES = 4
_SEED_WINDOW = 3.0  # decision/precision seeds first go within 3 sigma^2/|z_obs| of the set


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Options of the parametric search.

    Parameters
    ----------
    termination
        ``"exhaustive"``, ``"precision"`` or ``"decision"``.
    alternative
        ``"two-sided"``, ``"greater"`` or ``"less"``.
    alpha
        Significance level for ``decision``.
    precision
        Width of the p bounds for ``precision``.
    batch_size
        K, points per batched evaluation.
    max_evaluations
        Budget of model evaluations: line points, or what the evaluator's ``cost`` counts
        (slice images for a stack of slices, see :func:`parametric_search`).
    on_budget
        ``"raise"``: needing more raises :class:`~medsi.errors.InferenceError`; ``"stop"``:
        the search stops at the budget with honest bounds and ``complete`` False.
    """

    termination: Termination | str = Termination.EXHAUSTIVE
    alternative: Alternative | str = Alternative.TWO_SIDED
    alpha: float = 0.05
    precision: float = 1e-3
    batch_size: int = 32
    max_evaluations: int = 200_000
    on_budget: str = "raise"

    def __post_init__(self):
        object.__setattr__(
            self, "termination", coerce_option(Termination, self.termination, "termination")
        )
        object.__setattr__(
            self, "alternative", coerce_option(Alternative, self.alternative, "alternative")
        )
        if not 0 < self.alpha < 1:
            raise ConfigError(
                f'"alpha" must be in (0, 1), got {self.alpha}; pass a significance level such '
                "as 0.05."
            )
        if not 0 < self.precision < 1:
            raise ConfigError(
                f'"precision" must be in (0, 1), got {self.precision}; pass e.g. 1e-3.'
            )
        if int(self.batch_size) < 1:
            raise ConfigError(
                f'"batch_size" must be a positive integer, got {self.batch_size}; pass e.g. 32.'
            )
        if int(self.max_evaluations) < 1:
            raise ConfigError(
                f'"max_evaluations" must be a positive integer, got {self.max_evaluations}.'
            )
        if self.on_budget not in ("raise", "stop"):
            raise ConfigError(f'"on_budget" must be "raise" or "stop", got {self.on_budget!r}.')


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    """What the search found on the line.

    Attributes
    ----------
    pieces
        (P, 2) every evaluated interval of constant decisions, sorted.
    flags
        (P, E) bool, whether each event holds on each piece.
    truncation_sets
        Per event, the union of pieces where it holds (normalised (m, 2) arrays).
    unknown
        (u, 2) the gaps left open (including the infinite tails).
    observed_piece
        (2,) the piece containing z_obs: the over-conditioned truncation set.
    p_values, p_lower, p_upper
        (E,) the selective p (open gaps counted as outside) and its bounds.
    evaluations
        Model evaluations spent: line points, or what the evaluator's ``cost`` counts.
    batches
        Number of batched evaluations.
    complete
        False when the search stopped at its budget (``on_budget="stop"``) before its
        termination rule was met; the bounds hold either way.
    """

    pieces: np.ndarray
    flags: np.ndarray
    truncation_sets: tuple[np.ndarray, ...]
    unknown: np.ndarray
    observed_piece: np.ndarray
    p_values: np.ndarray
    p_lower: np.ndarray
    p_upper: np.ndarray
    evaluations: int
    batches: int
    complete: bool = True


# evaluate(z) -> (lower, upper, flags (K, E) bool, degenerate (K,) bool); it may also have
# evaluate.cost(z) -> (K,) int, the model evaluations each point would take (default 1 each)
Evaluate = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _unit_cost(points: np.ndarray) -> np.ndarray:
    return np.ones(len(points), dtype=int)


def _scale(z: np.ndarray, sigma: float) -> np.ndarray:
    finite = np.where(np.isfinite(z), np.abs(z), 0.0)
    return np.maximum(finite, sigma)


def _log_mass(lower: np.ndarray, upper: np.ndarray, sigma: float) -> np.ndarray:
    return log_standard_normal_mass(np.asarray(lower) / sigma, np.asarray(upper) / sigma)


def _split_masses(intervals: np.ndarray, z_obs: float, sigma: float):
    """Per interval, log null masses of its parts below and above z_obs: two (m,) arrays."""
    if not len(intervals):
        return np.empty(0), np.empty(0)
    lo, hi = intervals[:, 0], intervals[:, 1]
    below = np.full(len(lo), -np.inf)
    above = np.full(len(lo), -np.inf)
    has_below = lo < z_obs
    has_above = hi > z_obs
    if has_below.any():
        below[has_below] = _log_mass(lo[has_below], np.minimum(hi[has_below], z_obs), sigma)
    if has_above.any():
        above[has_above] = _log_mass(np.maximum(lo[has_above], z_obs), hi[has_above], sigma)
    return below, above


def _side_masses(sets: np.ndarray, z_obs: float, sigma: float) -> tuple[float, float]:
    """Log null masses of a union below and above z_obs."""
    below, above = _split_masses(sets, z_obs, sigma)
    if not len(below):
        return -np.inf, -np.inf
    return float(special.logsumexp(below)), float(special.logsumexp(above))


def _quantiles_in_gap(lower: float, upper: float, fractions: np.ndarray, sigma: float):
    """Points splitting the null mass of [lower, upper] at the given fractions."""
    lo, hi = lower / sigma, upper / sigma
    if lo >= 0 or hi <= 0:
        sign = 1.0 if lo >= 0 else -1.0
        near, far = (lo, hi) if sign > 0 else (-hi, -lo)
        # survival-side log arithmetic: s = S(near) - f * (S(near) - S(far))
        log_near = special.log_ndtr(-near)
        log_mass = float(log_standard_normal_mass(np.array([near]), np.array([far]))[0])
        log_s = log_near + np.log1p(-fractions * np.exp(log_mass - log_near))
        return sign * -special.ndtri_exp(log_s) * sigma
    cdf_lo, cdf_hi = special.ndtr(lo), special.ndtr(hi)
    return special.ndtri(cdf_lo + fractions * (cdf_hi - cdf_lo)) * sigma


def parametric_search(
    evaluate: Evaluate,
    z_obs: float,
    sigma: float,
    settings: SearchSettings,
    n_events: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> SearchOutcome:
    """Cover the line around the null distribution with intervals of constant decisions.

    Parameters
    ----------
    evaluate
        Called with a (K,) array of points; returns ``(lower, upper, flags, degenerate)``
        with the interval of constant decisions around each point, (K, E) bool event
        flags, and (K,) bool flags for points lying exactly on a decision boundary. If it
        has a ``cost`` method, ``evaluate.cost(points)`` gives the (K,) model evaluations
        each point would take now (a stack of slices evaluates only the slices whose known
        pieces miss the point); the budget counts those, otherwise one per point. The
        observed point is evaluated whatever the budget when ``on_budget="stop"``.
    z_obs
        The observed statistic, a point of every event's truncation set.
    sigma
        Null standard deviation of the statistic (the null mean is 0).
    settings
        Termination rule and budget.
    n_events
        E, the number of events evaluated together.
    on_batch
        Called after each batched evaluation with the number of points it evaluated
        (e.g. to advance a progress bar).

    Returns
    -------
    SearchOutcome
        Pieces, truncation sets, p-values with bounds and evaluation counts.

    Raises
    ------
    InferenceError
        If an interval misses its point, the observed point fails its own event, a
        decision boundary cannot be stepped past, the search stalls, or the budget is spent.
    """
    if not (np.isfinite(z_obs) and np.isfinite(sigma) and sigma > 0):
        raise ConfigError(
            f"the statistic and its standard deviation must be finite with sigma > 0, got "
            f"z={z_obs}, sigma={sigma}; check the region and the covariance."
        )
    k_max = int(settings.batch_size)
    all_pieces: list[np.ndarray] = []
    all_flags: list[np.ndarray] = []
    evaluations = 0
    batches = 0
    unresolvable: set[tuple[float, float]] = set()
    retries: list[tuple[float, float, int]] = []  # (point, direction, attempt)

    cost_of = getattr(evaluate, "cost", _unit_cost)

    def run(
        points: np.ndarray, cost: int | None = None, check_budget: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        nonlocal evaluations, batches
        cost = int(cost_of(points).sum()) if cost is None else cost
        if check_budget and evaluations + cost > settings.max_evaluations:
            raise InferenceError(
                f"the search needs more than max_evaluations={settings.max_evaluations} model "
                f"evaluations (spent {evaluations}); raise the budget, or use termination "
                "'decision' or 'precision'."
            )
        lower, upper, flags, degenerate = evaluate(points)
        evaluations += cost
        if on_batch is not None:
            on_batch(len(points))
        batches += 1
        lower, upper = np.asarray(lower, float), np.asarray(upper, float)
        ok = (lower <= points) & (points <= upper)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise InferenceError(
                f"the interval [{lower[bad]}, {upper[bad]}] returned for z={points[bad]} does not "
                "contain its point; the model is not evaluated consistently along the line."
            )
        return lower, upper, np.asarray(flags, bool).reshape(len(points), n_events), degenerate

    lower, upper, flags, degenerate = run(
        np.array([z_obs]), check_budget=settings.on_budget != "stop"
    )
    if degenerate[0]:
        raise InferenceError(
            f"the observed statistic z={z_obs} lies exactly on a decision boundary of the model; "
            "the test is not defined there (this has probability zero for continuous data)."
        )
    if not flags[0].all():
        raise InferenceError(
            "the observed point does not satisfy its own selection event; the model is not "
            "deterministic (check that its random draws are fixed and it is in eval mode)."
        )
    observed_piece = np.array([lower[0], upper[0]])
    all_pieces.append(np.stack([lower, upper], 1))
    all_flags.append(flags)

    complete = True
    while True:
        pieces = np.concatenate(all_pieces)
        piece_flags = np.concatenate(all_flags)
        sets = tuple(iv.merge(pieces[piece_flags[:, e]]) for e in range(n_events))
        gaps = iv.complement(pieces)
        if _finished(sets, gaps, unresolvable, z_obs, sigma, settings):
            break
        window = None
        if settings.termination in (Termination.DECISION, Termination.PRECISION):
            window = _seed_window(sets, z_obs, sigma)
        points, directions = _choose_points(
            gaps, unresolvable, retries, sets[0], z_obs, sigma, k_max, window
        )
        if not len(points):
            break  # only gaps below floating-point resolution are left
        costs = cost_of(points)
        if settings.on_budget == "stop" and evaluations + costs.sum() > settings.max_evaluations:
            # the points are in order of priority: keep those that fit
            keep = int(np.searchsorted(np.cumsum(costs), settings.max_evaluations - evaluations,
                                       side="right"))  # fmt: skip
            points, directions, costs = points[:keep], directions[:keep], costs[:keep]
            if not len(points):
                complete = False
                break
        # points that are retries of a point on a boundary carry their attempt count
        attempts = np.zeros(len(points), dtype=int)
        attempts[: min(len(retries), len(points))] = [r[2] for r in retries][: len(points)]
        retries = []
        lower, upper, flags, degenerate = run(points, int(costs.sum()))
        good = ~np.asarray(degenerate, bool)
        for point, direction, attempt in zip(
            points[~good], directions[~good], attempts[~good] + 1, strict=True
        ):
            if attempt > _MAX_RETRIES:
                raise InferenceError(
                    f"the search could not step past a decision boundary at z={point}; the "
                    "model may have a flat region exactly on the threshold."
                )
            step = 4 * _STEP * float(_scale(np.array([point]), sigma)[0]) * direction
            retries.append((point + step, direction, int(attempt)))
        new = np.stack([lower[good], upper[good]], 1)
        covered_before = gaps
        all_pieces.append(new)
        all_flags.append(flags[good])
        _mark_stalled_gaps(covered_before, new, points[good], unresolvable, sigma)

    pieces = np.concatenate(all_pieces)
    piece_flags = np.concatenate(all_flags)
    order = np.argsort(pieces[:, 0], kind="stable")
    pieces, piece_flags = pieces[order], piece_flags[order]
    _check_consistent(pieces, piece_flags, sigma)
    sets = tuple(iv.merge(pieces[piece_flags[:, e]]) for e in range(n_events))
    unknown = iv.complement(pieces)
    p, lo, hi = _p_values(sets, unknown, z_obs, sigma, settings.alternative)
    return SearchOutcome(
        pieces=pieces,
        flags=piece_flags,
        truncation_sets=sets,
        unknown=unknown,
        observed_piece=observed_piece,
        p_values=p,
        p_lower=lo,
        p_upper=hi,
        evaluations=evaluations,
        batches=batches,
        complete=complete,
    )


def _p_values(sets, unknown, z_obs, sigma, alternative):
    p = np.array([selective_p_value(s, z_obs, sigma, alternative=alternative) for s in sets])
    bounds = np.array(
        [selective_p_value_bounds(s, unknown, z_obs, sigma, alternative=alternative) for s in sets]
    )
    return p, bounds[:, 0], bounds[:, 1]


def _resolvable(gaps: np.ndarray, unresolvable: set, sigma: float) -> np.ndarray:
    width = gaps[:, 1] - gaps[:, 0]
    scale = np.maximum(_scale(gaps[:, 0], sigma), _scale(gaps[:, 1], sigma))
    keep = width > _UNRESOLVABLE * scale
    if unresolvable:
        keep &= np.array([(g[0], g[1]) not in unresolvable for g in gaps], dtype=bool)
    return keep


def _finished(sets, gaps, unresolvable, z_obs, sigma, settings) -> bool:
    match settings.termination:
        case Termination.EXHAUSTIVE:
            open_gaps = gaps[_resolvable(gaps, unresolvable, sigma)]
            u_below, u_above = _side_masses(open_gaps, z_obs, sigma)
            limit = np.log(EXHAUSTIVE_RELATIVE_MASS)
            for s in sets:
                a_below, a_above = _side_masses(s, z_obs, sigma)
                if u_below > a_below + limit or u_above > a_above + limit:
                    return False
            return True
        case Termination.OC:
            return True
        case Termination.PRECISION | Termination.DECISION:
            _, lo, hi = _p_values(sets, gaps, z_obs, sigma, settings.alternative)
            if settings.termination is Termination.PRECISION:
                return bool(((hi - lo) < settings.precision).all())
            return bool(((hi < settings.alpha) | (lo >= settings.alpha)).all())
        case _:
            raise ConfigError(f"unknown termination {settings.termination!r}")


def _seed_window(sets, z_obs: float, sigma: float) -> tuple[float, float]:
    """Where the seeds of ``decision`` and ``precision`` go first: near the truncation set.

    A statistic far in the tail is decided by how far the truncation set reaches from it:
    the null density changes by a factor e^c over c sigma^2 / |z_obs| there, so mass quantiles
    of a whole gap (near 0) would spend the budget where the p bounds barely move. Seeds go
    within that distance (c = 3) of the known truncation set, as parallel fronts walking
    outward; once the window is covered, gaps get seeds by mass again.
    """
    known = [s for s in sets if len(s)]
    lower = min(float(s[0, 0]) for s in known) if known else z_obs
    upper = max(float(s[-1, 1]) for s in known) if known else z_obs
    reach = _SEED_WINDOW * sigma**2 / max(abs(z_obs), sigma)
    return lower - reach, upper + reach


def _choose_points(gaps, unresolvable, retries, in_set, z_obs, sigma, k_max, window=None):
    """Up to k_max points: retries first, then fronts and seeds by gap weight.

    ``window``: (lower, upper) to which the seeds of each gap are confined where the gap
    overlaps it widely enough; None places seeds over whole gaps.
    """
    points = [r[0] for r in retries][:k_max]
    directions = [r[1] for r in retries][:k_max]
    gaps = gaps[_resolvable(gaps, unresolvable, sigma)]
    if not len(gaps) or len(points) >= k_max:
        return np.array(points), np.array(directions)
    # A side with no known mass yet (a point-like piece) gets a finite floor, so that its gaps
    # rank first rather than producing inf - inf.
    a_below, a_above = (max(v, -1e300) for v in _side_masses(in_set, z_obs, sigma))
    m_below, m_above = _split_masses(gaps, z_obs, sigma)
    weights = np.logaddexp(m_below - a_below, m_above - a_above)
    order = np.argsort(-weights, kind="stable")
    step = _STEP * np.maximum(_scale(gaps[:, 0], sigma), _scale(gaps[:, 1], sigma))
    # Fronts: both ends of each gap (one point in the middle of a very narrow gap).
    for i in order:
        lo, hi = gaps[i]
        if hi - lo <= 2 * step[i]:
            candidates = [(0.5 * (lo + hi), 1.0)]
        else:
            candidates = []
            if np.isfinite(lo):
                candidates.append((lo + step[i], 1.0))
            if np.isfinite(hi):
                candidates.append((hi - step[i], -1.0))
        for point, direction in candidates:
            if len(points) < k_max:
                points.append(point)
                directions.append(direction)
    # Seeds: spare slots go to mass quantiles of the heaviest gaps, in proportion to weight.
    spare = k_max - len(points)
    if spare > 0:
        wide = order[(gaps[order, 1] - gaps[order, 0]) > 64 * step[order]]
        if len(wide):
            share = np.exp(weights[wide] - weights[wide].max())
            counts = np.floor(spare * share / share.sum()).astype(int)
            counts[0] += spare - counts.sum()
            for i, count in zip(wide, counts, strict=True):
                if count <= 0:
                    continue
                fractions = np.arange(1, count + 1) / (count + 1)
                lo, hi = gaps[i]
                if window is not None:
                    near = max(lo, window[0]), min(hi, window[1])
                    if near[1] - near[0] > 64 * step[i]:
                        lo, hi = near
                seeds = _quantiles_in_gap(lo, hi, fractions, sigma)
                seeds = seeds[(seeds > gaps[i, 0]) & (seeds < gaps[i, 1]) & np.isfinite(seeds)]
                points.extend(seeds.tolist())
                directions.extend([1.0] * len(seeds))
    return np.array(points, dtype=float), np.array(directions, dtype=float)


def _mark_stalled_gaps(gaps, new_pieces, points, unresolvable, sigma) -> None:
    """A narrow gap whose point did not shrink it is left open for good, and counted in bounds.

    Each point lies strictly inside its gap, so its piece covers part of the gap unless
    the piece has zero length.
    """
    flat = new_pieces[:, 1] <= new_pieces[:, 0]
    for point in points[flat]:
        inside = np.flatnonzero((gaps[:, 0] < point) & (point < gaps[:, 1]))
        if not len(inside):
            continue
        g = gaps[inside[0]]
        scale = float(max(_scale(g, sigma)))
        if g[1] - g[0] > 4 * _STEP * scale:
            raise InferenceError(
                f"the search stalled: evaluating z={point} did not cover any of the gap "
                f"[{g[0]}, {g[1]}]; the model's intervals are inconsistent."
            )
        unresolvable.add((float(g[0]), float(g[1])))


def _check_consistent(pieces, flags, sigma) -> None:
    """Overlapping pieces must agree on the events (up to rounding at their ends)."""
    if len(pieces) < 2:
        return
    overlap = pieces[:-1, 1] - pieces[1:, 0]
    scale = np.maximum(_scale(pieces[1:, 0], sigma), _scale(pieces[:-1, 1], sigma))
    clash = (overlap > 1e-8 * scale) & (flags[:-1] != flags[1:]).any(1)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise InferenceError(
            f"two overlapping intervals of constant decisions, {pieces[i].tolist()} and "
            f"{pieces[i + 1].tolist()}, disagree on the selection event; the model is not "
            "evaluated consistently along the line."
        )
