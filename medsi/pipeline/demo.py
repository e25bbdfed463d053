"""``medsi demo``: a phantom with known lesions through the whole pipeline.

The findings are scored against the ground truth the phantom was made with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsi.pipeline.run import ScanAnalysis

__all__ = ["make_demo_phantom", "match_lesions"]


def make_demo_phantom(folder: str | os.PathLike, seed: int = 0, lesions: int = 3) -> dict:
    """Write a FLAIR-like phantom with ``lesions`` hyperintense lesions into ``folder``.

    Returns
    -------
    dict
        The files of :func:`medsi.data.save_phantom` (``image``, ``lesion_labels``, ...).
    """
    from medsi.data import LesionConfig, PhantomConfig, make_phantom, save_phantom

    config = PhantomConfig(lesions=LesionConfig(count=lesions, radius_mm=(6.0, 12.0)))
    phantom = make_phantom(seed, config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return save_phantom(phantom, folder, stem="demo")


def match_lesions(truth: np.ndarray, analysis: ScanAnalysis) -> list[dict]:
    """For each true lesion: which found lesions overlap it, and whether one is significant.

    Parameters
    ----------
    truth
        (X, Y, Z) int ground-truth lesion ids on the input grid.
    analysis
        The pipeline's result on that input.

    Returns
    -------
    list of dict
        Per true lesion: ``truth_id``, ``voxels``, ``found`` (ids of overlapping lesions),
        ``overlap`` (share of the true lesion covered), ``best_p_holm`` and ``detected``
        (selected and significant).
    """
    records = {r["id"]: r for r in analysis.lesion_records()}
    found_labels = analysis.native_labels
    rows = []
    for truth_id in range(1, int(truth.max()) + 1):
        inside = truth == truth_id
        ids = sorted({int(v) for v in np.unique(found_labels[inside]) if v > 0})
        p_values = [records[i]["p_holm"] for i in ids]
        rows.append(
            {
                "truth_id": truth_id,
                "voxels": int(inside.sum()),
                "found": ids,
                "overlap": float((found_labels[inside] > 0).mean()) if inside.any() else 0.0,
                "best_p_holm": min(p_values) if p_values else None,
                "detected": any(records[i]["significant"] for i in ids),
            }
        )
    return rows
