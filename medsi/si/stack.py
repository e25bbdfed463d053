"""A volume's slices moving along one line: per-slice pieces, intersected (DESIGN.md section 2).

A lesion that spans several slices is one test: the line Y(z) = a + b z moves every slice
the lesion touches, each along its own direction b_s, with one z. The model sees one slice at
a time, so at a point z the decisions of the volume are those of its slices, and the piece of
constant decisions around z is the intersection of the slices' pieces; both events are
per-voxel conditions, so they hold at z exactly when they hold on every slice.

Evaluating every slice at every point the search visits would cost (slices) x (sum of the
slices' pieces). :class:`StackedLine` remembers each slice's pieces and evaluates a slice only
at points outside the pieces it already knows, so every piece of every slice is evaluated
once: the cost grows linearly with the number of slices, and the search, its termination
rules and its bounds are those of a single slice (:func:`~medsi.si.search.parametric_search`).
"""

from __future__ import annotations

import numpy as np

from medsi.si.line import LineEvaluator

__all__ = ["StackedLine"]


class _SlicePieces:
    """The pieces of one slice found so far: intervals and the event flags on each."""

    def __init__(self):
        self._lower: list[float] = []
        self._upper: list[float] = []
        self._flags: list[np.ndarray] = []
        self._sorted = None

    def add(self, lower: float, upper: float, flags: np.ndarray) -> None:
        self._lower.append(lower)
        self._upper.append(upper)
        self._flags.append(flags)
        self._sorted = None

    def find(self, z: np.ndarray):
        """For each z, the index of a known piece holding z strictly inside, or -1."""
        if not self._lower:
            return np.full(len(z), -1), None
        if self._sorted is None:
            order = np.argsort(self._lower, kind="stable")
            self._sorted = (
                np.asarray(self._lower)[order],
                np.asarray(self._upper)[order],
                np.asarray(self._flags)[order],
            )
        lower, upper, flags = self._sorted
        idx = np.searchsorted(lower, z, side="right") - 1
        safe = np.clip(idx, 0, None)
        inside = (idx >= 0) & (lower[safe] < z) & (z < upper[safe])
        return np.where(inside, safe, -1), self._sorted


class StackedLine:
    """Evaluate a stack of slices along one line, each slice's pieces computed once.

    Parameters
    ----------
    evaluator
        The slice model (score and threshold) as a :class:`~medsi.si.LineEvaluator`.
    a, b
        (S, H, W): slice s moves along x_s(z) = a_s + b_s z.
    masks
        (S, H, W) bool, voxels that may be selected, or None for all.
    observed, region, boundary
        (S, H, W) bool: the observed selection, the tested region and its outer boundary
        on these slices (see :func:`~medsi.si.events.event_flags`).
    batch_size
        Most slice images per batched model evaluation.

    Attributes
    ----------
    evaluations
        Slice images evaluated so far (one per slice and point not already covered).
    """

    def __init__(
        self,
        evaluator: LineEvaluator,
        a: np.ndarray,
        b: np.ndarray,
        masks: np.ndarray | None,
        observed: np.ndarray,
        region: np.ndarray,
        boundary: np.ndarray,
        batch_size: int = 32,
    ):
        self.evaluator = evaluator
        self.a, self.b, self.masks = a, b, masks
        self.observed, self.region, self.boundary = observed, region, boundary
        self.batch_size = int(batch_size)
        self.pieces = [_SlicePieces() for _ in range(len(a))]
        self.evaluations = 0

    def _flags(self, s: np.ndarray, selected: np.ndarray) -> np.ndarray:
        """(n, 2) full and component flags of slice images ``selected`` of slices ``s``."""
        n = len(s)
        flat = selected.reshape(n, -1)
        full = (flat == self.observed[s].reshape(n, -1)).all(1)
        in_region = self.region[s].reshape(n, -1)
        on_boundary = self.boundary[s].reshape(n, -1)
        component = ~(in_region & ~flat).any(1) & ~(on_boundary & flat).any(1)
        return np.stack([full, component], axis=1)

    def cost(self, z: np.ndarray) -> np.ndarray:
        """(K,) slice images that evaluating each point z would take now.

        A slice is evaluated at a point only when none of its known pieces holds the point,
        so this is what :meth:`__call__` will add to ``evaluations`` for these points.
        """
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        missing = np.zeros(len(z), dtype=int)
        for known in self.pieces:
            missing += known.find(z)[0] < 0
        return missing

    def __call__(self, z: np.ndarray):
        """Pieces of the whole stack at points z: (lower, upper, flags (K, 2), degenerate)."""
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        k, n_slices = len(z), len(self.a)
        lower = np.full((n_slices, k), -np.inf)
        upper = np.full((n_slices, k), np.inf)
        flags = np.ones((n_slices, k, 2), dtype=bool)
        degenerate = np.zeros(k, dtype=bool)
        todo_s, todo_k = [], []
        for s, known in enumerate(self.pieces):
            idx, table = known.find(z)
            hit = idx >= 0
            if hit.any():
                lower[s, hit] = table[0][idx[hit]]
                upper[s, hit] = table[1][idx[hit]]
                flags[s, hit] = table[2][idx[hit]]
            miss = np.flatnonzero(~hit)
            todo_s.append(np.full(len(miss), s))
            todo_k.append(miss)
        todo_s, todo_k = np.concatenate(todo_s), np.concatenate(todo_k)
        for start in range(0, len(todo_s), self.batch_size):
            s = todo_s[start : start + self.batch_size]
            kk = todo_k[start : start + self.batch_size]
            mask = None if self.masks is None else self.masks[s]
            pieces = self.evaluator.evaluate(self.a[s], self.b[s], z[kk], mask=mask)
            self.evaluations += len(s)
            slice_flags = self._flags(s, pieces.selected)
            lower[s, kk], upper[s, kk] = pieces.lower, pieces.upper
            flags[s, kk] = slice_flags
            degenerate[kk] |= pieces.degenerate
            for i in np.flatnonzero(~pieces.degenerate):
                self.pieces[s[i]].add(pieces.lower[i], pieces.upper[i], slice_flags[i])
        return lower.max(0), upper.min(0), flags.all(0), degenerate
