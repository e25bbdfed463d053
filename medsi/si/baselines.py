"""The p-values a selective test is compared with (DESIGN.md section 1).

* naive: the untruncated normal p, invalid because the region was chosen from the data;
* over-conditioning (``oc``, the paper's w/o-pp): truncation to the single interval of
  constant decisions around the observed statistic (computed by the search);
* Bonferroni over the 2^n possible regions of n pixels;
* permutation: pooled pixels of test and reference shuffled, the region recomputed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medsi.errors import ConfigError, InferenceError
from medsi.si.events import connected_regions
from medsi.si.options import Alternative, coerce_option
from medsi.si.truncnorm import naive_p_value

__all__ = ["bonferroni_p_value", "permutation_p_value", "naive_p_value"]


def bonferroni_p_value(naive_p: float, n_pixels: int) -> float:
    """Bonferroni correction over the 2^n regions that n pixels can form.

    Parameters
    ----------
    naive_p
        The uncorrected p-value.
    n_pixels
        n, the number of pixels a region can be made of.

    Returns
    -------
    float
        min(1, 2^n p), computed in log space (2^n overflows for n > 1023).

    Examples
    --------
    >>> bonferroni_p_value(0.01, 3)
    0.08
    """
    if n_pixels < 0:
        raise ConfigError(f'"n_pixels" must be >= 0, got {n_pixels}; pass the pixel count.')
    if naive_p <= 0:
        return 0.0
    return float(np.exp(min(0.0, np.log(naive_p) + n_pixels * np.log(2.0))))


def permutation_p_value(
    select: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    reference: np.ndarray,
    statistic: float,
    n_permutations: int,
    rng: np.random.Generator,
    alternative: Alternative | str = Alternative.TWO_SIDED,
    mask: np.ndarray | None = None,
    max_redraws: int | None = None,
    batch_size: int = 64,
    per_component: int | None = None,
) -> float:
    """Permutation p-value of the selected region's mean difference.

    Each permutation shuffles the pooled pixels (within ``mask`` when given) of ``x`` and
    ``reference``, recomputes the selected set of the permuted test image with ``select``
    and its statistic mean(x*) - mean(r*) over that set. Permutations whose selected
    set is empty are redrawn, at most ``max_redraws`` times in all.

    Parameters
    ----------
    select
        Maps a batch of images (B, H, W) to their selected sets (B, H, W) bool.
    x, reference
        (H, W) test and reference images.
    statistic
        The observed statistic (mean difference over the observed region).
    n_permutations
        B, the number of permutations with a non-empty region.
    rng
        Source of the permutations.
    alternative
        Which deviations count.
    mask
        (H, W) bool; only pixels inside are permuted.
    max_redraws
        Cap on redrawn permutations (default 10 B).
    batch_size
        Permuted images per call of ``select``.
    per_component
        ``None`` to test the whole selected set; else the connectivity (1 or 2) of the
        components over which the most extreme statistic is taken.

    Returns
    -------
    float
        (1 + #{permuted statistic at least as extreme}) / (B + 1).

    Raises
    ------
    InferenceError
        If more than ``max_redraws`` permutations selected nothing.
    """
    alternative = coerce_option(Alternative, alternative, "alternative")
    if n_permutations < 1:
        raise ConfigError(f'"n_permutations" must be >= 1, got {n_permutations}; pass e.g. 1000.')
    max_redraws = 10 * n_permutations if max_redraws is None else max_redraws
    region = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    pooled = np.concatenate([x[region], reference[region]])
    m = int(region.sum())
    stats: list[float] = []
    redraws = 0
    while len(stats) < n_permutations:
        count = min(batch_size, n_permutations - len(stats))
        perms = np.stack([rng.permutation(pooled) for _ in range(count)])
        xs = np.repeat(x[None], count, axis=0)
        rs = np.repeat(reference[None], count, axis=0)
        xs[:, region], rs[:, region] = perms[:, :m], perms[:, m:]
        selected = np.asarray(select(xs), bool)
        for xi, ri, si in zip(xs, rs, selected, strict=True):
            if not si.any():
                redraws += 1
                if redraws > max_redraws:
                    raise InferenceError(
                        f"{redraws} permutations selected no pixel (cap {max_redraws}); the "
                        "permutation test is not defined for this threshold: lower it or "
                        "raise max_redraws."
                    )
                continue
            if per_component is None:
                stats.append(float(xi[si].mean() - ri[si].mean()))
            else:
                values = [xi[c].mean() - ri[c].mean() for c in connected_regions(si, per_component)]
                stats.append(float(_most_extreme(np.asarray(values), alternative)))
    perm = np.asarray(stats)
    match alternative:
        case Alternative.TWO_SIDED:
            extreme = np.abs(perm) >= abs(statistic)
        case Alternative.GREATER:
            extreme = perm >= statistic
        case Alternative.LESS:
            extreme = perm <= statistic
        case _:
            raise ConfigError(f"unknown alternative {alternative!r}")
    return float((1 + extreme.sum()) / (n_permutations + 1))


def _most_extreme(values: np.ndarray, alternative: Alternative) -> float:
    match alternative:
        case Alternative.TWO_SIDED:
            return float(values[np.argmax(np.abs(values))])
        case Alternative.GREATER:
            return float(values.max())
        case Alternative.LESS:
            return float(values.min())
        case _:
            raise ConfigError(f"unknown alternative {alternative!r}")
