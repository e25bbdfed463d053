"""Options of ``medsi run`` (one scan), checked once."""

from __future__ import annotations

import dataclasses
import math

from medsi.errors import ConfigError
from medsi.pipeline.inference import UNITS
from medsi.si.options import Alternative, Event, Termination, coerce_option

__all__ = ["RunSettings", "SCORES"]

SCORES = ("signed", "absolute")
"""``signed``: only voxels brighter than their reconstruction are selected (hyperintense
findings, the usual lesion on FLAIR: the default); ``absolute``: the paper's |x - f(x)|."""


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What ``medsi run`` does with one scan.

    Parameters
    ----------
    alpha
        Significance level of the decisions (after Holm's adjustment across lesions).
    threshold
        lambda on the anomaly score; None takes the bundle's.
    score
        ``"signed"`` (default) or ``"absolute"``.
    event
        ``"full"`` or ``"component"``: the event of the reported selective p.
    unit
        ``"lesion"`` (3-D components) or ``"slice"`` (components per plane).
    termination
        ``"decision"`` (default: the search stops once the p-value's side of alpha is
        certain), ``"precision"``, ``"exhaustive"``, or ``"oc"`` (one evaluation per lesion:
        the over-conditioned p decides; valid, less powerful, fastest).
    alternative
        ``"two-sided"`` or ``"greater"`` (lesion brighter than the reference).
    precision
        Width of the p bounds for ``"precision"``.
    batch_size
        Line points per batched model evaluation.
    max_evaluations
        Budget of model evaluations (slice images) per lesion; a search that reaches it
        stops there and its lesion is decided by the upper bound of its p (conservative,
        still valid).
    standardisation
        ``"median-mad"`` or ``"trimmed"``.
    device
        Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    search_workers
        Local worker processes that share each p-value's batches (1: in this process).
    search_scheduler
        A Dask scheduler address (or ``"local"``) whose workers share each p-value's
        batches; None for none. Executors change the time, never the p-values.
    seed
        Recorded for the run (the DDIM noise is fixed by the bundle).

    Raises
    ------
    ConfigError
        If a value is out of range.
    """

    alpha: float = 0.05
    threshold: float | None = None
    score: str = "signed"
    event: str = "full"
    unit: str = "lesion"
    termination: str = "decision"
    alternative: str = "two-sided"
    precision: float = 1e-3
    batch_size: int = 32
    max_evaluations: int = 1024
    standardisation: str = "median-mad"
    device: str = "cpu"
    search_workers: int = 1
    search_scheduler: str | None = None
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.alpha, float | int) and 0 < self.alpha < 1):
            raise ConfigError(f'"alpha" must be in (0, 1), got {self.alpha!r}; pass e.g. 0.05.')
        if self.threshold is not None and not math.isfinite(float(self.threshold)):
            raise ConfigError(f'"threshold" must be a finite number, got {self.threshold!r}.')
        if self.score not in SCORES:
            raise ConfigError(f'"score" must be signed or absolute, got {self.score!r}.')
        if self.unit not in UNITS:
            raise ConfigError(f'"unit" must be lesion or slice, got {self.unit!r}.')
        if not (isinstance(self.search_workers, int) and self.search_workers >= 1):
            raise ConfigError(
                f'"search_workers" must be a positive integer, got {self.search_workers!r}.'
            )
        object.__setattr__(self, "event", coerce_option(Event, self.event, "event").value)
        object.__setattr__(
            self, "termination", coerce_option(Termination, self.termination, "termination").value
        )
        object.__setattr__(
            self, "alternative", coerce_option(Alternative, self.alternative, "alternative").value
        )

    def to_dict(self) -> dict:
        """Plain values of every option, for the report."""
        return dataclasses.asdict(self)
