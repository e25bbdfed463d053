"""The selective test of a region found by a piecewise-linear score (DESIGN.md sections 1-2).

A test image x and a reference image r (independent noise, covariances S and S_R) are
stacked as Y = [x; r]. For a region C of the selected set O(x) = {score(x) > lambda},
the statistic is eta^T Y = mean_C(x) - mean_C(r), with sigma^2 = eta^T Xi eta and
Xi = blockdiag(S, S_R). Along the line Y(z) = a + b z (b = Xi eta / sigma^2) the
selection event holds on a union of intervals Z; the selective p-value is the
truncated-normal tail of the observed z on Z.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from medsi.errors import ConfigError
from medsi.si import events as ev
from medsi.si.baselines import bonferroni_p_value, permutation_p_value
from medsi.si.covariance import Covariance, Isotropic
from medsi.si.line import LineEvaluator
from medsi.si.options import Alternative, Event, Termination, coerce_option
from medsi.si.search import SearchOutcome, SearchSettings, parametric_search
from medsi.si.stack import StackedLine
from medsi.si.truncnorm import naive_p_value, selective_p_value

__all__ = ["SelectiveTest", "SelectiveResult", "RegionLine"]


@dataclasses.dataclass(frozen=True)
class SelectiveResult:
    """The outcome of one selective test, with its provenance.

    Attributes
    ----------
    statistic
        Observed eta^T [x; r]: mean over the region of x minus that of the reference.
    sigma
        Null standard deviation of the statistic, sqrt(eta^T Xi eta).
    event
        The event whose p-value is ``p_selective``.
    p_selective
        Selective p-value under ``event``.
    p_full, p_component
        Selective p-values under the two events (both from one search).
    p_bounds
        (lower, upper) bounds of ``p_selective`` given the unsearched parts of the line.
    p_bounds_full, p_bounds_component
        The same for each event.
    p_oc
        Over-conditioned p-value (truncation to the piece containing the statistic).
    p_naive
        Untruncated p-value (invalid after selection; for comparison).
    p_bonferroni
        Bonferroni over 2^n regions.
    p_permutation
        Permutation p-value, or ``None`` unless permutations were asked for.
    intervals
        Truncation set of ``event`` as (m, 2) intervals in the statistic's scale.
    intervals_full, intervals_component
        Truncation sets of each event.
    oc_interval
        (2,) the piece of constant decisions containing the statistic.
    evaluations
        Slice images the model evaluated (for a single image: the line points searched).
    region
        (H, W) or (S, H, W) bool, the tested region.
    alternative, termination
        Options used.
    settings
        The search settings and test options, for the record.
    complete
        False when the search stopped at its budget before its termination rule was met
        (``on_budget="stop"``): ``p_oc`` is exact, the selective p-values are known within
        their bounds only.
    """

    statistic: float
    sigma: float
    event: Event
    p_selective: float
    p_full: float
    p_component: float
    p_bounds: tuple[float, float]
    p_bounds_full: tuple[float, float]
    p_bounds_component: tuple[float, float]
    p_oc: float
    p_naive: float
    p_bonferroni: float
    p_permutation: float | None
    intervals: np.ndarray
    intervals_full: np.ndarray
    intervals_component: np.ndarray
    oc_interval: np.ndarray
    evaluations: int
    region: np.ndarray
    alternative: Alternative
    termination: Termination
    settings: dict
    complete: bool = True

    def reject(self, alpha: float = 0.05) -> bool:
        """Whether the selective p-value is below ``alpha``."""
        return self.p_selective < alpha


@dataclasses.dataclass(frozen=True)
class RegionLine:
    """The line of one region's test: Y(z) = a + b z through the observed data.

    Attributes
    ----------
    line
        The slices that move, as a :class:`~medsi.si.stack.StackedLine`; ``line(z)`` gives,
        per point, the piece of constant decisions around it and the (full, component)
        event flags on that piece.
    statistic
        Observed z: mean over the region of x minus that of the reference.
    sigma
        Null standard deviation of the statistic.
    region, observed
        Bool, shaped like the test image: the tested region and the observed selection.
    """

    line: StackedLine
    statistic: float
    sigma: float
    region: np.ndarray
    observed: np.ndarray


class SelectiveTest:
    """Selective test of regions selected by ``score(x) > threshold``.

    Parameters
    ----------
    score
        Torch module mapping (B, 1, H, W) images to (B, 1, H, W) scores, piecewise
        linear in the images (e.g. the averaged absolute difference between an image and
        its diffusion reconstruction). Checked before use. A
        :class:`~medsi.si.LineEvaluator` built with the same threshold and no mask may be
        passed instead, to share one float64 copy of the model between many tests.
    threshold
        lambda; pixels with a score strictly above it are selected.
    covariance
        Noise covariance S of one test slice (H, W), or a sequence with one per slice of a
        stack. Slices of a stack are independent (the covariance is block diagonal).
    reference_covariance
        Noise covariance S_R of the reference slice (or one per slice); default: the same as
        ``covariance``.
    mask
        (H, W) bool, pixels that may be selected (e.g. the brain), or (S, H, W) for stacks
        of S slices; default all.
    connectivity
        Neighbourhood defining connected regions: 1 (faces) up to the image's dimension
        (2 in a slice: with corners; 3 in a stack: with edges and corners).
    device
        Torch device for the model; default where its parameters are.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from medsi.si import SelectiveTest, Isotropic
    >>> score = torch.nn.Conv2d(1, 1, 1, bias=False)
    >>> _ = torch.nn.init.ones_(score.weight)
    >>> test = SelectiveTest(score, threshold=2.0, covariance=Isotropic(1.0))
    >>> x = np.zeros((4, 4)); x[1, 1] = 3.0
    >>> res = test.run(x, np.zeros((4, 4)))
    >>> round(res.statistic, 6), res.evaluations >= 1
    (3.0, True)
    """

    def __init__(
        self,
        score: nn.Module,
        threshold: float,
        covariance: Covariance | None = None,
        reference_covariance: Covariance | None = None,
        mask: np.ndarray | None = None,
        connectivity: int = 1,
        device=None,
    ):
        self.covariance = Isotropic(1.0) if covariance is None else covariance
        self.reference_covariance = (
            self.covariance if reference_covariance is None else reference_covariance
        )
        for name, cov in (
            ("covariance", self.covariance),
            ("reference_covariance", self.reference_covariance),
        ):
            for c in cov if isinstance(cov, list | tuple) else [cov]:
                if not isinstance(c, Covariance):
                    raise TypeError(
                        f'"{name}" must be a medsi.si Covariance (or a sequence of them), got '
                        f"{type(c).__name__}"
                    )
        self.mask = None if mask is None else np.asarray(mask, bool)
        slice_mask = self.mask if self.mask is None or self.mask.ndim == 2 else None
        if isinstance(score, LineEvaluator):
            # an evaluator already built (float64 copy, checked) for this score and threshold:
            # many tests on one scan share it instead of copying the model each time
            if score.threshold != float(threshold) or score.mask is not None:
                raise ConfigError(
                    f'"score" is a LineEvaluator with threshold {score.threshold} and a mask; '
                    f"pass one built with threshold {float(threshold)} and no mask."
                )
            self.evaluator = score
        else:
            self.evaluator = LineEvaluator(score, threshold, mask=slice_mask, device=device)
        self.threshold = float(threshold)
        self.connectivity = int(connectivity)

    def select(self, x: np.ndarray) -> np.ndarray:
        """The selected set of an image (H, W), or of each slice of a stack (S, H, W)."""
        return self.evaluator.select(x, mask=self.mask)

    def regions(self, x: np.ndarray) -> list[np.ndarray]:
        """Connected components of the selected set of x, largest first."""
        return ev.connected_regions(self.select(x), self.connectivity)

    def _check_images(self, x, reference) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        reference = np.asarray(reference, dtype=np.float64)
        if x.ndim not in (2, 3) or reference.shape != x.shape:
            raise ConfigError(
                f"the test and reference images must be of one shape, (H, W) or a stack of "
                f"slices (S, H, W), got {x.shape} and {reference.shape}; pass matching arrays."
            )
        if self.mask is not None and self.mask.shape not in (x.shape, x.shape[-2:]):
            raise ConfigError(
                f'"mask" has shape {self.mask.shape} but the images are {x.shape}; pass a '
                "mask of the image's shape."
            )
        if not (np.isfinite(x).all() and np.isfinite(reference).all()):
            raise ConfigError(
                "the test or reference image holds NaN or infinite values; replace them "
                "(e.g. mask them out) before testing."
            )
        return x, reference

    def _per_slice(self, cov, name: str, n_slices: int, shape) -> list[Covariance]:
        covs = list(cov) if isinstance(cov, list | tuple) else [cov] * n_slices
        if len(covs) != n_slices:
            raise ConfigError(
                f'"{name}" holds {len(covs)} covariances but the stack has {n_slices} slices; '
                "pass one per slice, or one for all."
            )
        for c in covs:
            c.check_shape(shape)
        return covs

    def line(
        self,
        x: np.ndarray,
        reference: np.ndarray,
        region: np.ndarray | None = None,
        batch_size: int = 32,
    ) -> RegionLine:
        """The line along which a region's test moves the data (DESIGN.md section 1).

        Parameters
        ----------
        x, reference, region
            As :meth:`run`.
        batch_size
            Most slice images per batched model evaluation.

        Returns
        -------
        RegionLine
            The statistic, its sigma and the stacked line, callable at points z (as the
            search calls it: bounds of the piece around each point and the event flags).

        Raises
        ------
        ConfigError
            If the images or the region are unusable, or nothing is selected.
        """
        x, reference = self._check_images(x, reference)
        observed = self.select(x)
        if region is None:
            if not observed.any():
                raise ConfigError(
                    "nothing is selected in this image (no score above the threshold), so "
                    "there is no region to test; a scan without findings needs no p-value."
                )
            region = observed
        boundary = ev.check_region(region, observed, self.connectivity)
        region = np.asarray(region, bool)

        # Work on stacks (S, H, W); a single image is a stack of one slice.
        stack = x.ndim == 3
        xs, rs, obs_s, region_s, boundary_s = (
            a if stack else a[None] for a in (x, reference, observed, region, boundary)
        )
        n_slices, shape = len(xs), xs.shape[1:]
        covs = self._per_slice(self.covariance, "covariance", n_slices, shape)
        ref_covs = self._per_slice(
            self.reference_covariance, "reference_covariance", n_slices, shape
        )
        masks = None
        if self.mask is not None:
            masks = np.broadcast_to(self.mask, xs.shape)

        size = int(region.sum())
        eta = region_s / size  # eta_x = 1_C/|C|, eta_r = -1_C/|C|
        moving = np.flatnonzero(region_s.reshape(n_slices, -1).any(1))
        # Slices are independent, so the line moves only the slices the region touches.
        s_eta_x = np.stack([covs[s].apply(eta[s]) for s in moving])
        s_eta_r = np.stack([ref_covs[s].apply(eta[s]) for s in moving])
        variance = float((eta[moving] * s_eta_x).sum() + (eta[moving] * s_eta_r).sum())
        if not variance > 0:
            raise ConfigError(
                f"the statistic's variance eta^T Xi eta is {variance}, not positive; check "
                "the covariance models."
            )
        sigma = float(np.sqrt(variance))
        statistic = float(xs[region_s].mean() - rs[region_s].mean())
        b_x = s_eta_x / variance
        a_x = xs[moving] - b_x * statistic
        line = StackedLine(
            self.evaluator,
            a_x,
            b_x,
            None if masks is None else masks[moving],
            obs_s[moving],
            region_s[moving],
            boundary_s[moving],
            batch_size=batch_size,
        )
        return RegionLine(
            line=line, statistic=statistic, sigma=sigma, region=region, observed=observed
        )

    def run(
        self,
        x: np.ndarray,
        reference: np.ndarray,
        region: np.ndarray | None = None,
        event: Event | str = Event.FULL,
        termination: Termination | str = Termination.EXHAUSTIVE,
        alternative: Alternative | str = Alternative.TWO_SIDED,
        alpha: float = 0.05,
        precision: float = 1e-3,
        batch_size: int = 32,
        max_evaluations: int = 200_000,
        on_budget: str = "raise",
        permutations: int = 0,
        seed: int = 0,
        progress: bool = False,
    ) -> SelectiveResult:
        """Test one region of the selected set of ``x`` against ``reference``.

        Parameters
        ----------
        x, reference
            (H, W) test and reference images (float), or stacks of S slices (S, H, W) of
            one volume: a region spanning several slices is one test, whose line moves
            every slice it touches (:mod:`medsi.si.stack`).
        region
            Bool, shaped like ``x``: a union of connected components of the selected set
            (in 3-D for stacks); ``None`` tests the whole selected set, as the paper does.
        event
            ``"full"`` or ``"component"``: which event ``p_selective`` conditions on
            (both are always computed).
        termination
            ``"exhaustive"``, ``"precision"``, ``"decision"`` or ``"oc"`` (one evaluation:
            only ``p_oc`` is exact).
        alternative
            ``"two-sided"``, ``"greater"`` (region brighter than the reference) or ``"less"``.
        alpha
            Significance level for ``termination="decision"``.
        precision
            Width of the p bounds for ``termination="precision"``.
        batch_size
            Line points per batched model evaluation.
        max_evaluations
            Budget of model evaluations: slice images (a stack of S slices costs at most S
            per line point, less where a slice's known pieces already hold the point).
        on_budget
            ``"raise"`` (an :class:`~medsi.errors.InferenceError` when the budget is not
            enough) or ``"stop"`` (stop there; ``complete`` is False, bounds still hold).
        permutations
            Number of permutations for ``p_permutation`` (0: skip; single images only).
        seed
            Seed of the permutations.
        progress
            Show a progress bar of the model evaluations (searches can take minutes).

        Returns
        -------
        SelectiveResult
            p-values of every kind, bounds, truncation sets and evaluation count.

        Raises
        ------
        ConfigError
            If the images or the region are unusable, or nothing is selected.
        InferenceError
            If the search breaks a guard rail or runs over budget.
        """
        event = coerce_option(Event, event, "event")
        settings = SearchSettings(
            termination=termination,
            alternative=alternative,
            alpha=alpha,
            precision=precision,
            batch_size=batch_size,
            max_evaluations=max_evaluations,
            on_budget=on_budget,
        )
        x, reference = self._check_images(x, reference)
        test_line = self.line(x, reference, region, batch_size=settings.batch_size)
        line, statistic, sigma = test_line.line, test_line.statistic, test_line.sigma
        region, observed, stack = test_line.region, test_line.observed, x.ndim == 3

        with tqdm(desc="selective p-value", unit="eval", disable=not progress, leave=False) as bar:

            def evaluate(z: np.ndarray):
                before = line.evaluations
                pieces = line(z)
                bar.update(line.evaluations - before)
                return pieces

            evaluate.cost = line.cost  # the budget counts slice images, not line points

            outcome: SearchOutcome = parametric_search(evaluate, statistic, sigma, settings)
        alt = settings.alternative
        p_naive = naive_p_value(statistic, sigma, alternative=alt)
        n_pixels = int(x.size if self.mask is None else self.mask.sum())
        p_perm = None
        if permutations and stack:
            raise ConfigError(
                '"permutations" applies to single images, not to stacks of slices; pass 0.'
            )
        if permutations:
            whole = np.array_equal(region, observed)
            p_perm = permutation_p_value(
                self.select,
                x,
                reference,
                statistic,
                permutations,
                np.random.default_rng(seed),
                alternative=alt,
                mask=self.mask,
                per_component=None if whole else self.connectivity,
            )
        index = {Event.FULL: 0, Event.COMPONENT: 1}[event]
        bounds = [
            (float(lo), float(hi)) for lo, hi in zip(outcome.p_lower, outcome.p_upper, strict=True)
        ]
        return SelectiveResult(
            statistic=statistic,
            sigma=sigma,
            event=event,
            p_selective=float(outcome.p_values[index]),
            p_full=float(outcome.p_values[0]),
            p_component=float(outcome.p_values[1]),
            p_bounds=bounds[index],
            p_bounds_full=bounds[0],
            p_bounds_component=bounds[1],
            p_oc=selective_p_value(outcome.observed_piece[None], statistic, sigma, alternative=alt),
            p_naive=p_naive,
            p_bonferroni=bonferroni_p_value(p_naive, n_pixels),
            p_permutation=p_perm,
            intervals=outcome.truncation_sets[index],
            intervals_full=outcome.truncation_sets[0],
            intervals_component=outcome.truncation_sets[1],
            oc_interval=outcome.observed_piece,
            evaluations=line.evaluations,
            region=region,
            alternative=alt,
            termination=settings.termination,
            complete=outcome.complete,
            settings={
                "threshold": self.threshold,
                "connectivity": self.connectivity,
                "termination": settings.termination.value,
                "alternative": alt.value,
                "alpha": settings.alpha,
                "precision": settings.precision,
                "batch_size": settings.batch_size,
                "max_evaluations": settings.max_evaluations,
                "permutations": permutations,
                "seed": seed,
                "batches": outcome.batches,
                "on_budget": on_budget,
                "covariance": repr(self.covariance),
                "reference_covariance": repr(self.reference_covariance),
            },
        )
