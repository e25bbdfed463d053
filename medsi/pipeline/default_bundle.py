"""Make the MRI model bundle medsi ships: a compact PL U-Net trained on normal phantoms.

Normal FLAIR-like phantoms (:mod:`medsi.data.phantom`, each a new subject) go through the very
preparation ``medsi run`` applies to a scan (:func:`~medsi.pipeline.preprocess.prepare_volume`:
registration, model grid, brain mask, robust standardisation); their kept planes are the
training and held-out slices, with the plane index as slice position. The threshold lambda
is set on held-out slices only: the ``threshold_quantile`` of the score over their brain
voxels, so that a normal slice rarely selects anything. Phantom subjects are split into
training and held-out subjects, so no anatomy is seen by both.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medsi.pipeline.preprocess import prepare_volume
from medsi.pipeline.run import GRID_SPACE
from medsi.transforms.spatial import ModelGrid, default_model_grid

__all__ = ["DEFAULT_RECIPE", "phantom_slices", "build_mri_bundle"]

DEFAULT_RECIPE = {
    "model": {"channels": [8, 16, 32], "time_embed_dim": 32},
    "diffusion": {"start_timestep": 460, "num_steps": 5, "eta": 1.0, "seed": 0},
    "score": {"kernel_size": 3, "signed": True},
    "training": {"epochs": 40, "batch_size": 32, "learning_rate": 1e-3, "seed": 0},
    "covariance": {"kind": "stationary", "radius": 2},
}
"""The default bundle's recipe: a compact preset (the paper's channels cost about 10x more
per evaluation at 64 x 64), the paper's diffusion settings, the signed score."""


def phantom_slices(
    n_subjects: int,
    grid: ModelGrid,
    seed: int = 0,
    progress: bool = True,
    spacing_mm: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prepared model-grid slices of normal phantoms.

    Returns
    -------
    slices : numpy.ndarray
        (N, H, W) float32, standardised.
    positions : numpy.ndarray
        (N,) int64 plane index of each slice.
    subjects : numpy.ndarray
        (N,) int64 phantom subject of each slice.
    """
    from medsi.data import PhantomConfig, make_phantom

    slices, positions, subjects = [], [], []
    for subject in tqdm(range(n_subjects), desc="phantoms", disable=not progress):
        phantom = make_phantom(seed * 100_003 + subject, PhantomConfig(spacing_mm=spacing_mm))
        prepared = prepare_volume(phantom.image, phantom.affine, grid, path=f"phantom {subject}")
        for p in np.flatnonzero(prepared.kept):
            slices.append(prepared.slices[p].astype(np.float32))
            positions.append(p)
            subjects.append(subject)
    return np.stack(slices), np.asarray(positions, np.int64), np.asarray(subjects, np.int64)


def build_mri_bundle(
    out: str | os.PathLike,
    n_subjects: int = 24,
    heldout_subjects: int = 6,
    recipe: dict | None = None,
    epochs: int | None = None,
    size: int = 64,
    plane_spacing: float = 2.0,
    margin: float = 4.0,
    threshold_quantile: float = 0.999,
    phantom_spacing_mm: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
):
    """Train the MRI bundle on phantoms and save it to ``out``; returns the bundle.

    Parameters
    ----------
    out
        Folder to write (replaced if it exists).
    n_subjects
        Normal phantom subjects in all.
    heldout_subjects
        Subjects kept out of training, for the covariance, the reference bank and lambda.
    recipe
        Model recipe; default :data:`DEFAULT_RECIPE`.
    epochs
        Training epochs; default the recipe's.
    size, plane_spacing, margin
        The model grid (:func:`~medsi.transforms.spatial.default_model_grid`).
    threshold_quantile
        lambda is this quantile of the held-out brain voxels' scores.
    phantom_spacing_mm
        Voxel size of the phantoms (1 mm as in BraTS; coarser is faster, for tests).
    seed
        Seed of the phantoms and of training.
    progress, log
        Progress bars and one-line messages.
    """
    from medsi.model.bundle import build_bundle, save_bundle
    from medsi.model.training import train_unet

    grid = default_model_grid(size=size, plane_spacing=plane_spacing, margin=margin)
    cfg = copy.deepcopy(recipe or DEFAULT_RECIPE)
    cfg.setdefault("data", {})["image_size"] = [grid.size, grid.size]
    log(f"preparing {n_subjects} normal phantoms on the model grid")
    slices, positions, subjects = phantom_slices(
        n_subjects, grid, seed, progress, spacing_mm=phantom_spacing_mm
    )
    heldout = subjects >= n_subjects - heldout_subjects
    log(f"training on {int((~heldout).sum())} slices, holding out {int(heldout.sum())}")
    unet, record = train_unet(cfg, slices[~heldout], epochs=epochs, seed=seed, progress=progress)
    record.update(
        n_train=int((~heldout).sum()),
        data=f"{n_subjects} normal FLAIR-like phantoms (seed {seed}), "
        f"{heldout_subjects} subjects held out",
    )
    # lambda from held-out slices only, on their brain voxels
    score = _score_of(unet, cfg)
    brain = np.stack([grid.brain_mask()[:, :, p] for p in positions[heldout]])
    values = []
    with torch.no_grad():
        for start in range(0, int(heldout.sum()), 64):
            batch = torch.from_numpy(slices[heldout][start : start + 64].astype(np.float64))
            values.append(score(batch[:, None]).numpy()[:, 0])
    scores = np.concatenate(values)
    cfg["score"]["threshold"] = float(np.quantile(scores[brain], threshold_quantile))
    log(f"threshold lambda = {cfg['score']['threshold']:.4f} ({threshold_quantile} quantile)")
    record["threshold_quantile"] = threshold_quantile
    space = f"{GRID_SPACE}: size={size} plane_spacing={plane_spacing:g} margin={margin:g}"
    bundle = build_bundle(
        unet,
        cfg,
        slices[heldout].astype(np.float64),
        positions=positions[heldout],
        training=record,
        input_space=space,
        mask=brain,
    )
    save_bundle(bundle, Path(out), overwrite=True)
    return bundle


def _score_of(unet, cfg):
    """The float64 score module of a freshly trained U-Net under the recipe ``cfg``."""
    from medsi.model import AnomalyScore, DDIMReconstruction
    from medsi.model.config import validate_config

    full = validate_config(cfg)
    net = copy.deepcopy(unet).double().eval()
    return AnomalyScore(
        DDIMReconstruction(net, **full["diffusion"]),
        kernel_size=full["score"]["kernel_size"],
        signed=full["score"]["signed"],
    ).eval()
