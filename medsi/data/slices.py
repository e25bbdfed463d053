"""Read a folder of 2-D slices (``.npy`` and NIfTI files) into one stack of training images."""

from pathlib import Path

import numpy as np

from medsi.errors import InputDataError

__all__ = ["load_slices", "SLICE_SUFFIXES"]

SLICE_SUFFIXES = (".npy", ".nii", ".nii.gz")
"""File name endings :func:`load_slices` reads; other files in the folder are ignored."""


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".npy"):
        if name.endswith(suffix):
            return suffix
    return None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt header, truncated data, pickled objects, ...
        raise InputDataError(
            f'"{path.name}" could not be read as a .npy array ({type(e).__name__}: {e}); '
            "replace or remove the file."
        ) from e


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        return np.asanyarray(nib.load(path).dataobj)
    except Exception as e:  # not NIfTI, truncated gzip, bad header, ...
        raise InputDataError(
            f'"{path.name}" could not be read as a NIfTI image ({type(e).__name__}: {e}); '
            "replace or remove the file."
        ) from e


def _as_slices(array: np.ndarray, path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (slices (N, H, W) float32, positions (N,) int64) from one file's array."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputDataError(
            f'"{path.name}" must hold real numbers, got dtype {array.dtype}; save the image as '
            "a float or integer array."
        )
    nifti = suffix != ".npy"
    if nifti:
        # NIfTI stores 2-D images as (H, W, 1) and may carry trailing singleton axes.
        while array.ndim > 3 and array.shape[-1] == 1:
            array = array[..., 0]
    if array.ndim == 2:
        stack = array[None]
    elif array.ndim == 3:
        # NIfTI: axial slices along the last axis; .npy: a stack (N, H, W).
        stack = np.moveaxis(array, -1, 0) if nifti else array
    else:
        layout = "(H, W) or a volume (H, W, D)" if nifti else "(H, W) or a stack (N, H, W)"
        raise InputDataError(
            f'"{path.name}" must hold a 2-D slice {layout}, got shape {array.shape}; '
            "choose one volume or save the slices separately."
        )
    if 0 in stack.shape:
        raise InputDataError(
            f'"{path.name}" must hold non-empty images, got shape {array.shape}; '
            "replace or remove the file."
        )
    stack = np.asarray(stack, dtype=np.float32)
    if not np.isfinite(stack).all():
        bad = int(np.count_nonzero(~np.isfinite(stack)))
        raise InputDataError(
            f'"{path.name}" must hold finite values, got {bad} NaN or infinite value(s) (or '
            "values beyond float32); fix or remove the file."
        )
    positions = np.arange(stack.shape[0], dtype=np.int64) if array.ndim == 3 else np.zeros(1, int)
    return stack, positions.astype(np.int64)


def load_slices(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read every ``.npy``, ``.nii`` and ``.nii.gz`` file of a folder into one stack of slices.

    Files are read in sorted name order, not recursively; other files are ignored.

    - ``.npy``: a 2-D slice (H, W) (position 0) or a stack (N, H, W) (position = index along
      the first axis).
    - ``.nii`` / ``.nii.gz`` (read with nibabel, data as stored, no reorientation): a 2-D image
      (H, W) or (H, W, 1) (position 0), or a volume (H, W, D) whose axial slices along the last
      axis become images (position = slice index 0 .. D-1). Trailing singleton axes are
      dropped.

    Parameters
    ----------
    folder
        The folder to read.

    Returns
    -------
    images : numpy.ndarray
        (N, H, W), float32, every slice of every file in file order.
    positions : numpy.ndarray
        (N,), int64: the slice position of each image within its file.

    Raises
    ------
    InputDataError
        If ``folder`` is not a folder or holds no readable slice file, a file cannot be read
        (corrupt, truncated, not an array), holds non-numeric data, has more than 3 axes,
        holds NaN or infinite values, or its images differ in size (H, W) from the first
        file's. The message names the file.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> with tempfile.TemporaryDirectory() as d:
    ...     np.save(f"{d}/a.npy", np.zeros((3, 8, 8)))
    ...     images, positions = load_slices(d)
    >>> images.shape, positions.tolist()
    ((3, 8, 8), [0, 1, 2])
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(
            f'"folder" must be an existing folder, got {str(folder)!r}; pass the folder that '
            "holds the .npy / .nii slices."
        )
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and _suffix(p) is not None),
        key=lambda p: p.name,
    )
    if not files:
        raise InputDataError(
            f'"folder" must hold at least one {", ".join(SLICE_SUFFIXES)} file, got none in '
            f"{str(folder)!r}; put the normal training slices there."
        )
    stacks, positions = [], []
    first: tuple[Path, tuple[int, int]] | None = None
    for path in files:
        suffix = _suffix(path)
        array = _read_npy(path) if suffix == ".npy" else _read_nifti(path)
        stack, pos = _as_slices(array, path, suffix)
        shape = (int(stack.shape[1]), int(stack.shape[2]))
        if first is None:
            first = (path, shape)
        elif shape != first[1]:
            raise InputDataError(
                f'"{path.name}" must hold images of size {first[1]} like "{first[0].name}", '
                f"got {shape}; resize all slices to one size (mixed sizes cannot be stacked)."
            )
        stacks.append(stack)
        positions.append(pos)
    return np.concatenate(stacks, axis=0), np.concatenate(positions, axis=0)
