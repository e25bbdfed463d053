"""Image data for training and experiments: the paper's synthetic images and folders of slices.

:func:`synthetic_images` draws the paper's ``iid`` and ``corr`` noise images (with an optional
square signal and its ground-truth mask); :func:`load_slices` reads a folder of ``.npy`` and
NIfTI files into one stack of 2-D slices with their slice positions.
"""

from medsi.data.slices import load_slices
from medsi.data.synthetic import synthetic_images

__all__ = ["load_slices", "synthetic_images"]
