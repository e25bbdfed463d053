"""Find lesions on the prepared slices and give each one a selective p-value (DESIGN.md §1-2).

Lesions are the connected components of the selected set: in 3-D across consecutive planes
(``unit="lesion"``, the default) or per plane (``unit="slice"``). A 3-D lesion is one test:
its line moves all of its planes and its truncation set is the intersection of the planes'
sets (:mod:`medsi.si.stack`). p-values of one scan are Holm-adjusted across its lesions.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from medsi.errors import ConfigError
from medsi.si import SelectiveResult, SelectiveTest
from medsi.si.covariance import Covariance

__all__ = ["LesionResult", "find_lesions", "assess_lesions", "holm_adjust", "UNITS"]

UNITS = ("lesion", "slice")
"""``lesion``: 3-D connected components across planes; ``slice``: components per plane."""


@dataclasses.dataclass(frozen=True)
class LesionResult:
    """One lesion on the model grid and its test.

    Attributes
    ----------
    lesion_id
        1, 2, ... in order of size (largest first).
    planes
        Model-grid planes the lesion spans.
    mask
        (P, H, W) bool on the model grid.
    result
        The selective test's result (statistic, sigma, every p-value, intervals, ...).
    p_method
        Which p decides: ``"oc"`` (over-conditioned, exact: termination ``oc``) or
        ``"selective"`` (the event's selective p, by its upper bound when the search
        stopped early).
    seconds
        Wall time of the test.
    """

    lesion_id: int
    planes: tuple[int, ...]
    mask: np.ndarray
    result: SelectiveResult
    seconds: float

    @property
    def p_method(self) -> str:
        """``"oc"`` or ``"selective"`` (see the class docstring)."""
        return "oc" if self.result.termination.value == "oc" else "selective"

    @property
    def p_decisive(self) -> float:
        """The p-value decisions use: ``p_oc``, or the selective p's upper bound."""
        if self.p_method == "oc":
            return self.result.p_oc
        return self.result.p_bounds[1]


def find_lesions(selected: np.ndarray, unit: str = "lesion") -> np.ndarray:
    """Label the lesions of a selected set (P, H, W): 0 background, 1.. largest first.

    Face connectivity (6 neighbours in 3-D, 4 in a plane).

    Examples
    --------
    >>> import numpy as np
    >>> s = np.zeros((2, 4, 4), bool); s[0, :2, :2] = s[1, :2, :2] = True; s[1, 3, 3] = True
    >>> find_lesions(s).max(), find_lesions(s, "slice").max()
    (2, 3)
    """
    selected = np.asarray(selected, dtype=bool)
    match unit:
        case "lesion":
            labels, count = ndimage.label(selected, ndimage.generate_binary_structure(3, 1))
        case "slice":
            structure = np.zeros((3, 3, 3), bool)
            structure[1] = ndimage.generate_binary_structure(2, 1)
            labels, count = ndimage.label(selected, structure)
        case _:
            raise ConfigError(f'"unit" must be "lesion" or "slice", got {unit!r}.')
    if count == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    relabel = np.zeros(count + 1, np.int32)
    relabel[order + 1] = np.arange(1, count + 1)
    return relabel[labels]


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control across lesions).

    Examples
    --------
    >>> holm_adjust([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def assess_lesions(
    score,
    threshold: float,
    slices: np.ndarray,
    references: np.ndarray,
    brain: np.ndarray,
    covariance: Covariance,
    reference_covariances: list[Covariance],
    labels: np.ndarray,
    *,
    unit: str = "lesion",
    event: str = "full",
    termination: str = "decision",
    alternative: str = "two-sided",
    alpha: float = 0.05,
    precision: float = 1e-3,
    batch_size: int = 32,
    max_evaluations: int = 200_000,
    device=None,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
) -> list[LesionResult]:
    """Test every lesion of ``labels`` against the reference.

    Parameters
    ----------
    score
        The bundle's score module (float64).
    threshold
        lambda.
    slices, references
        (P, H, W) standardised test slices and reference slices.
    brain
        (P, H, W) bool, voxels that may be selected.
    covariance
        Noise covariance of one test slice.
    reference_covariances
        Per plane, the covariance of the reference slice.
    labels
        (P, H, W) lesion ids from :func:`find_lesions` on the selection of ``slices``.
    unit
        The ``unit`` the labels were found with.
    event, termination, alternative, precision, batch_size
        As :meth:`medsi.si.SelectiveTest.run`.
    alpha
        Significance level of the scan's Holm procedure; ``termination="decision"`` searches
        each lesion until its p is certainly above or below ``alpha / m`` (m lesions), the
        level Holm's first step compares with.
    max_evaluations
        Budget of model evaluations (slice images) per lesion, so that the time per lesion
        is bounded whatever its extent; a search that reaches it stops there with honest
        bounds (``result.complete`` False).
    device
        Torch device of the model.
    workers, scheduler
        Where each search's batches are evaluated: in this process (1, None), over local
        worker processes (``workers`` > 1) or on a Dask cluster (``scheduler`` an address
        or ``"local"``); the p-values are the same (:mod:`medsi.si.parallel`).
    progress
        Show a progress bar over lesions.

    Returns
    -------
    list of LesionResult
        In lesion-id order.
    """
    from medsi.si.parallel import open_line_evaluator

    count = int(labels.max())
    if not count:
        return []
    search = {
        "event": event,
        "termination": termination,
        "alternative": alternative,
        # Holm compares the smallest p with alpha / m: a search that stops once its p is
        # certainly on one side of alpha / m decides what Holm needs of the strongest lesions
        "alpha": alpha / count,
        "precision": precision,
        "batch_size": batch_size,
        "on_budget": "stop",
    }
    results = []
    # one model copy (or one set of workers) for all lesions
    with open_line_evaluator(score, threshold, device, workers, scheduler) as evaluator:
        for lesion_id in tqdm(range(1, count + 1), desc="lesions", disable=not progress):
            mask = labels == lesion_id
            planes = np.flatnonzero(mask.any(axis=(1, 2)))
            if unit == "slice":
                lo, hi = planes[0], planes[0] + 1  # a component of its own plane
            else:
                # the lesion's planes and one more on each side, so the region is checked to
                # be a whole 3-D component; the planes outside do not move along the line
                lo, hi = max(planes[0] - 1, 0), min(planes[-1] + 2, len(slices))
            window = slice(lo, hi)
            test = SelectiveTest(
                evaluator,
                threshold,
                covariance=covariance,
                reference_covariance=list(reference_covariances[window]),
                mask=brain[window],
                connectivity=1,
                device=device,
            )
            start = time.perf_counter()
            result = test.run(
                slices[window],
                references[window],
                region=mask[window],
                # the budget counts slice images, so a lesion's time is bounded whatever its
                # extent (a slice is evaluated only where its known pieces miss the point)
                max_evaluations=max_evaluations,
                **search,
            )
            results.append(
                LesionResult(
                    lesion_id=lesion_id,
                    planes=tuple(int(p) for p in planes),
                    mask=mask,
                    result=result,
                    seconds=time.perf_counter() - start,
                )
            )
    return results
