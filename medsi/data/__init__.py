"""Image data for training and experiments: the paper's synthetic images and folders of slices.

:func:`synthetic_images` draws the paper's ``iid`` and ``corr`` noise images (with an optional
square signal and its ground-truth mask); :func:`load_slices` reads a folder of ``.npy`` and
NIfTI files into one stack of 2-D slices with their slice positions; :func:`noise_images`
draws the non-Gaussian noise of the paper's robustness experiments; :func:`make_phantom`
renders FLAIR-like brain volumes (optionally with lesions) from the bundled MNI152 template.
"""

from medsi.data.noise import (
    NOISE_FAMILIES,
    NoiseDistribution,
    max_noise_distance,
    noise_distribution,
    noise_images,
)
from medsi.data.phantom import (
    LesionConfig,
    Phantom,
    PhantomConfig,
    draw_subject,
    load_template,
    make_phantom,
    render,
    save_nifti,
    save_phantom,
)
from medsi.data.slices import load_slices
from medsi.data.synthetic import synthetic_images

__all__ = [
    "load_slices",
    "synthetic_images",
    "NOISE_FAMILIES",
    "NoiseDistribution",
    "noise_distribution",
    "noise_images",
    "max_noise_distance",
    "load_template",
    "PhantomConfig",
    "LesionConfig",
    "Phantom",
    "draw_subject",
    "render",
    "make_phantom",
    "save_nifti",
    "save_phantom",
]
