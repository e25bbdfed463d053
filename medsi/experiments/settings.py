"""Settings of the paper's synthetic experiments (its Section 5.1 and Appendix F; issue 3).

The defaults are the paper's: ``iid`` and ``corr`` images of sides 8-64, signals 1-4 on a
square of side ``size // 3`` for power, lambda 0.8, k 3, alpha 0.05, B = 1000 permutations,
robustness noise at 1-Wasserstein distances 0.03-0.15. ``configs/synthetic.yaml`` writes
the same values out; its ``experiment`` section maps onto :class:`SyntheticSettings`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Mapping

from medsi.errors import ConfigError
from medsi.si.options import Termination, coerce_option

__all__ = ["SyntheticSettings", "METHODS", "SCORES"]

METHODS = ("proposed", "component", "oc", "naive", "bonferroni", "permutation")
"""Methods compared: selective p under the full event (the paper's proposed), under the
component event, over-conditioned (the paper's w/o-pp), naive z-test, Bonferroni over 2^n
regions, permutation test."""

SCORES = ("absolute", "signed")
"""Anomaly scores: the paper's A(|x - f(x)|) or the one-sided A(x - f(x)) (DESIGN.md §1)."""


def _positive_ints(name: str, values) -> tuple[int, ...]:
    if isinstance(values, numbers.Integral):
        values = (values,)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ConfigError(
                f'"{name}" must hold integers >= 1, got {v!r}; pass e.g. {name}: [8, 16].'
            )
        out.append(int(v))
    if not out:
        raise ConfigError(f'"{name}" must not be empty; give at least one value.')
    return tuple(out)


def _reals(name: str, values, minimum: float, open_low: bool) -> tuple[float, ...]:
    if isinstance(values, numbers.Real):
        values = (values,)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ConfigError(f'"{name}" must hold finite numbers, got {v!r}; fix the list.')
        if v < minimum or (open_low and v == minimum):
            bound = ">" if open_low else ">="
            raise ConfigError(f'"{name}" values must be {bound} {minimum}, got {v}; fix the list.')
        out.append(float(v))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    """What one run of ``medsi experiment synthetic`` computes.

    Parameters
    ----------
    kinds
        Noise models of the Gaussian settings: ``"iid"`` and/or ``"corr"``.
    sizes
        Image sides, in pixels.
    signals
        Mean shifts of the anomalous square for the power runs (at ``power_size``);
        empty: no power runs.
    n
        Images per setting (kind, size, signal or noise family and distance).
    methods
        Methods to compute, a subset of :data:`METHODS`; selective p-values of both events,
        oc and naive come from one search, so those cost nothing extra.
    permutations
        B of the permutation test (used only when ``"permutation"`` is in ``methods``).
    score
        ``"absolute"`` or ``"signed"``.
    alpha
        Significance level of the reported rejection rates.
    termination
        Search termination of the selective p (``"exhaustive"``, ``"precision"`` or
        ``"decision"``); the rejection decision at ``alpha`` is exact for all three.
    precision
        Width of the p bounds for ``termination="precision"``.
    power_size
        Image side of the power runs; ``None``: the largest of ``sizes``.
    robustness_families
        Non-Gaussian noise families (:mod:`medsi.data.noise`) for the type-I error
        robustness runs (null, iid pixels, at ``robustness_size``); empty: none.
    robustness_distances
        1-Wasserstein distances from N(0, 1) of the robustness noise.
    robustness_size
        Image side of the robustness runs; ``None``: the smallest of ``sizes``.
    seed
        Seed of every image; each image's draw depends only on (seed, setting, index).
    batch_size
        Line points per batched model evaluation in the search.

    Raises
    ------
    ConfigError
        If a value is out of range or a name is unknown.
    """

    kinds: tuple[str, ...] = ("iid", "corr")
    sizes: tuple[int, ...] = (8, 16, 32, 64)
    signals: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    n: int = 1000
    methods: tuple[str, ...] = METHODS
    permutations: int = 1000
    score: str = "absolute"
    alpha: float = 0.05
    termination: str = "exhaustive"
    precision: float = 1e-3
    power_size: int | None = None
    robustness_families: tuple[str, ...] = ()
    robustness_distances: tuple[float, ...] = (0.03, 0.06, 0.09, 0.12, 0.15)
    robustness_size: int | None = None
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self):
        from medsi.data.noise import NOISE_FAMILIES
        from medsi.data.synthetic import SYNTHETIC_KINDS

        def put(name, value):
            object.__setattr__(self, name, value)

        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        for kind in kinds:
            if kind not in SYNTHETIC_KINDS:
                raise ConfigError(
                    f'"kinds" must hold {" or ".join(SYNTHETIC_KINDS)}, got {kind!r}; fix it.'
                )
        if not kinds:
            raise ConfigError('"kinds" must not be empty; give iid and/or corr.')
        put("kinds", kinds)
        put("sizes", _positive_ints("sizes", self.sizes))
        put("signals", _reals("signals", self.signals, 0.0, open_low=True))
        put("n", _positive_ints("n", self.n)[0])
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        for m in methods:
            if m not in METHODS:
                raise ConfigError(
                    f'"methods" must be among {", ".join(METHODS)}, got {m!r}; fix the list.'
                )
        put("methods", tuple(m for m in METHODS if m in methods))
        if "permutation" in methods:
            put("permutations", _positive_ints("permutations", self.permutations)[0])
        if self.score not in SCORES:
            raise ConfigError(f'"score" must be absolute or signed, got {self.score!r}.')
        alpha = _reals("alpha", self.alpha, 0.0, open_low=True)[0]
        if not alpha < 1:
            raise ConfigError(f'"alpha" must be in (0, 1), got {alpha}; pass e.g. 0.05.')
        put("alpha", alpha)
        put("termination", coerce_option(Termination, self.termination, "termination").value)
        precision = _reals("precision", self.precision, 0.0, open_low=True)[0]
        put("precision", precision)
        for name in ("power_size", "robustness_size"):
            if getattr(self, name) is not None:
                put(name, _positive_ints(name, getattr(self, name))[0])
        families = (
            (self.robustness_families,)
            if isinstance(self.robustness_families, str)
            else tuple(self.robustness_families)
        )
        for family in families:
            if family not in NOISE_FAMILIES:
                raise ConfigError(
                    f'"robustness_families" must be among {", ".join(NOISE_FAMILIES)}, got '
                    f"{family!r}; fix the list."
                )
        put("robustness_families", families)
        put(
            "robustness_distances",
            _reals("robustness_distances", self.robustness_distances, 0.0, open_low=True),
        )
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ConfigError(f'"seed" must be an integer, got {self.seed!r}.')
        if self.seed < 0:
            raise ConfigError(f'"seed" must be >= 0, got {self.seed}.')
        put("seed", int(self.seed))
        put("batch_size", _positive_ints("batch_size", self.batch_size)[0])

    @property
    def power_side(self) -> int:
        """Image side of the power runs."""
        return self.power_size if self.power_size is not None else max(self.sizes)

    @property
    def robustness_side(self) -> int:
        """Image side of the robustness runs."""
        return self.robustness_size if self.robustness_size is not None else min(self.sizes)

    def to_dict(self) -> dict:
        """Plain JSON-compatible values of every field."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def fingerprint(self) -> str:
        """sha256 of the settings that decide which images are drawn and how they are tested."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_mapping(cls, values: Mapping) -> SyntheticSettings:
        """Build settings from a mapping such as the ``experiment`` section of a YAML config.

        Keys that are not fields raise :class:`~medsi.errors.ConfigError`; ``n_images`` (the
        number of training images, part of the model recipe) is ignored here.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k != "n_images"}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown experiment setting(s) {', '.join(map(repr, unknown))}; use among "
                f"{', '.join(sorted(names))}."
            )
        return cls(**values)


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
