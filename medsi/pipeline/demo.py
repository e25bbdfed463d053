"""``medsi demo``: a phantom with known lesions through the whole pipeline.

The findings are scored against the ground truth the phantom was made with.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from medsi.pipeline.run import ScanAnalysis

__all__ = ["make_demo_phantom", "match_lesions", "BASELINE_NOISE_SEED_OFFSET"]


BASELINE_NOISE_SEED_OFFSET = 10_000
"""The baseline scan's noise seed is the phantom's seed plus this: independent noise."""


def make_demo_phantom(
    folder: str | os.PathLike, seed: int = 0, lesions: int = 3, baseline: bool = False
) -> dict:
    """Write a FLAIR-like phantom with ``lesions`` hyperintense lesions into ``folder``.

    Parameters
    ----------
    folder
        Where to write (created).
    seed
        Seed of the subject and its lesions.
    lesions
        Number of lesions.
    baseline
        Also write ``demo_baseline_flair.nii.gz``: the same subject without lesions, with
        independent noise, as an earlier scan of the same patient would show it (the
        ``--reference`` of a follow-up).

    Returns
    -------
    dict
        The files of :func:`medsi.data.save_phantom` (``image``, ``lesion_labels``, ...),
        and ``baseline`` (a path, or None).
    """
    from medsi.data import LesionConfig, PhantomConfig, make_phantom, save_phantom

    config = PhantomConfig(lesions=LesionConfig(count=lesions, radius_mm=(6.0, 12.0)))
    phantom = make_phantom(seed, config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = save_phantom(phantom, folder, stem="demo")
    files["baseline"] = None
    if baseline:
        # lesions are drawn after the anatomy, so the same seed without them is the same head
        normal = make_phantom(
            seed, dataclasses.replace(config, lesions=None),
            noise_seed=seed + BASELINE_NOISE_SEED_OFFSET,
        )  # fmt: skip
        files["baseline"] = save_phantom(normal, folder, stem="demo_baseline")["image"]
    return files


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
