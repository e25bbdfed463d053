"""Write a 3-D volume as a classic MR Image Storage series (one file per slice).

A NIfTI input has no DICOM source images, yet a DICOM-SEG must reference some: this module
makes them. The geometry comes from the RAS+ affine (converted to DICOM's LPS+), the pixels
are stored as signed 16-bit integers with RescaleSlope/RescaleIntercept when the values are
not small integers already. Modules written (PS3.3 A.4 MR Image IOD): Patient, General
Study, General Series, Frame of Reference, General Equipment, General Image, Image Plane,
Image Pixel, MR Image and SOP Common.
"""

import copy
from collections.abc import Mapping
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medsi.errors import ConfigError
from medsi.transforms.io._common import LPS_TO_RAS, check_affine, one_line

_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_INT16 = np.iinfo(np.int16)

# Attributes the volume and affine decide: callers may not override them.
_COMPUTED = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "PixelSpacing",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "SliceThickness",
        "SpacingBetweenSlices",
        "SliceLocation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelData",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "NumberOfFrames",
        "Modality",
    }
)


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _check_volume(volume: Any) -> np.ndarray:
    array = np.asarray(volume)
    if array.ndim != 3 or 0 in array.shape:
        raise ConfigError(
            f'"volume" must be a non-empty 3-D array (X, Y, Z), got shape {array.shape}; '
            "pass one volume, with the slices along the last axis."
        )
    if array.dtype.kind not in "biuf":
        raise ConfigError(
            f'"volume" must hold real numbers, got dtype {array.dtype}; pass intensities.'
        )
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ConfigError(
            f'"volume" must be finite to be stored as DICOM pixels, got {bad} NaN or infinite '
            "value(s); replace them (e.g. by 0) first."
        )
    return array


def _check_geometry(affine: Any) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not check_affine(matrix):
        raise ConfigError(
            f'"affine" must be a finite, invertible 4x4 voxel-to-world matrix, got '
            f"{np.array2string(matrix, precision=4)}; pass the RAS+ affine of the volume."
        )
    if not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ConfigError(
            f'"affine" must have last row (0, 0, 0, 1), got {matrix[3].tolist()}; pass an '
            "affine voxel-to-world matrix."
        )
    first, second = matrix[:3, 0], matrix[:3, 1]
    cosine = abs(first @ second) / (np.linalg.norm(first) * np.linalg.norm(second))
    if cosine > 1e-4:
        raise ConfigError(
            f'"affine" must have perpendicular first and second columns (DICOM rows and '
            f"columns are perpendicular), got an angle cosine of {cosine:.2e}; resample the "
            "volume onto a grid whose in-plane axes are perpendicular first."
        )
    return LPS_TO_RAS @ matrix


def _check_rescale(rescale: Any, array: np.ndarray) -> tuple[np.ndarray, str | None, str | None]:
    """Return stored int16 values and the RescaleSlope/RescaleIntercept strings (or None)."""
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if rescale is None:
        if np.array_equal(values, np.round(values)) and low >= _INT16.min and high <= _INT16.max:
            return values.astype(np.int16), None, None
        # Spread the values over the whole int16 range.
        slope = (high - low) / (float(_INT16.max) - float(_INT16.min)) if high > low else 1.0
        intercept = low - float(_INT16.min) * slope
    else:
        try:
            slope, intercept = (float(v) for v in rescale)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f'"rescale" must be a pair (slope, intercept) of numbers, got {rescale!r}; '
                "pass e.g. (0.5, -10.0), or None to choose them from the values."
            ) from e
        if not (np.isfinite(slope) and np.isfinite(intercept) and slope != 0):
            raise ConfigError(
                f'"rescale" must hold a finite non-zero slope and a finite intercept, got '
                f"{rescale!r}; pass e.g. (0.5, -10.0), or None."
            )
    slope_text, intercept_text = _ds(slope), _ds(intercept)
    slope, intercept = float(slope_text), float(intercept_text)
    stored = np.round((values - intercept) / slope)
    if rescale is None:
        stored = np.clip(stored, _INT16.min, _INT16.max)  # rounding of the DS strings
    elif stored.min() < _INT16.min or stored.max() > _INT16.max:
        raise ConfigError(
            f'"rescale" {rescale!r} maps the values [{low:g}, {high:g}] to stored values '
            f"[{stored.min():g}, {stored.max():g}], beyond int16; pass a larger slope, or None."
        )
    return stored.astype(np.int16), slope_text, intercept_text


def _check_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    from pydicom import config
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.valuerep import validate_value

    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise TypeError(
            f'"attributes" must be a mapping of DICOM keywords to values, got '
            f'{type(attributes).__name__}; pass e.g. {{"PatientID": "P1"}}.'
        )
    checked = {}
    for keyword, value in attributes.items():
        tag = tag_for_keyword(keyword) if isinstance(keyword, str) else None
        if tag is None:
            raise ConfigError(
                f'"attributes" keys must be DICOM keywords, got {keyword!r}; use the '
                'standard\'s keyword spelling, e.g. "PatientID" or "StudyDate".'
            )
        if keyword in _COMPUTED:
            raise ConfigError(
                f'"attributes" may not set {keyword}: it follows from the volume and the '
                "affine; remove it from the mapping."
            )
        vr = dictionary_VR(tag)
        if vr != "SQ":
            try:
                validate_value(vr, value, config.RAISE)
            except (ValueError, TypeError) as e:
                raise ConfigError(
                    f'"attributes" value for {keyword} (VR {vr}) is invalid, got {value!r} '
                    f"({one_line(e)}); pass a value DICOM allows for it."
                ) from e
        checked[keyword] = value
    return checked


def _base_dataset(attributes: dict[str, Any]) -> Any:
    """The attributes shared by every slice, before any override."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = _MR_IMAGE_STORAGE
    # Patient module (type 2 attributes may be empty)
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General Series
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = None
    ds.SeriesDescription = "converted by medsi"
    ds.PatientPosition = ""
    # Frame of Reference
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = ""
    # General Image
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.DerivationDescription = "volume converted to a DICOM MR series by medsi"
    now = datetime.now()
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    # MR Image (type 1 values that a converted volume cannot know are set to research mode)
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = None
    ds.EchoTime = None
    ds.EchoTrainLength = None
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def dicom_series_datasets(
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    rescale: tuple[float, float] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Build, in memory, the MR Image Storage datasets :func:`write_dicom_series` writes.

    For callers that write the files themselves (e.g. atomically, or into a ``BytesIO``).
    Each dataset carries its file meta information (Explicit VR Little Endian).

    Parameters
    ----------
    volume, affine, rescale, attributes
        As :func:`write_dicom_series`.

    Returns
    -------
    list of pydicom.Dataset
        One dataset per slice, slice ``k`` (``volume[:, :, k]``) at index ``k``.

    Raises
    ------
    ConfigError
        As :func:`write_dicom_series` (all but the folder check).
    TypeError
        If ``attributes`` is not a mapping.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    array = _check_volume(volume)
    affine_lps = _check_geometry(affine)
    stored, slope_text, intercept_text = _check_rescale(rescale, array)
    extra = _check_attributes(attributes)

    spacing_x = float(np.linalg.norm(affine_lps[:3, 0]))  # between columns
    spacing_y = float(np.linalg.norm(affine_lps[:3, 1]))  # between rows
    row_dir = affine_lps[:3, 0] / spacing_x
    col_dir = affine_lps[:3, 1] / spacing_y
    normal = np.cross(row_dir, col_dir)
    thickness = abs(float(affine_lps[:3, 2] @ normal))

    base = _base_dataset(extra)
    base.Rows = int(array.shape[1])
    base.Columns = int(array.shape[0])
    base.PixelSpacing = [_ds(spacing_y), _ds(spacing_x)]
    base.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    base.SliceThickness = _ds(thickness)
    base.SpacingBetweenSlices = _ds(thickness)
    if slope_text is not None:
        base.RescaleSlope = slope_text
        base.RescaleIntercept = intercept_text
        base.RescaleType = "US"

    datasets = []
    for k in range(array.shape[2]):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        position = affine_lps[:3, 3] + k * affine_lps[:3, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(position @ normal)
        pixels = np.ascontiguousarray(stored[:, :, k].T).astype("<i2")
        ds.add_new(0x7FE00010, "OW", pixels.tobytes())
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        datasets.append(ds)
    return datasets


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | PathLike,
    *,
    rescale: tuple[float, float] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write a 3-D volume as an MR Image Storage series, one file per slice.

    Parameters
    ----------
    volume
        (X, Y, Z) real, finite intensities. Axis 0 runs along a DICOM row (the column index),
        axis 1 down a column (the row index), axis 2 across the slices: slice ``k`` is
        ``volume[:, :, k]`` and its pixel ``(row r, column c)`` is ``volume[c, r, k]``.
    affine
        (4, 4) voxel-to-world matrix, RAS+ mm, as :func:`load_scan` returns. Its first two
        columns must be perpendicular; a third column off the slice normal gives a tilted
        stack, which is valid DICOM but refused by :func:`load_dicom_series`.
    folder
        Where to write ``slice_0000.dcm`` ... (created; must be empty if it exists).
    rescale
        ``(slope, intercept)``: the file stores ``round((value - intercept) / slope)`` as
        int16 and the reader recovers ``stored * slope + intercept``. None: store integer
        volumes within the int16 range as they are (no rescale attributes), and spread other
        volumes over the int16 range.
    attributes
        Extra or overriding attributes by DICOM keyword, e.g. ``PatientID``, ``PatientName``,
        ``StudyInstanceUID``, ``SeriesDescription``, ``FrameOfReferenceUID`` (the
        ``meta["dicom_attributes"]`` of a loaded series fits). Geometry and pixel attributes
        are computed and cannot be set. Missing UIDs are generated with
        :func:`pydicom.uid.generate_uid`.

    Returns
    -------
    list of Path
        The files written, slice ``k`` at index ``k``.

    Raises
    ------
    ConfigError
        If the volume is not 3-D, not real or not finite; the affine is not a usable 4x4
        matrix with perpendicular in-plane axes; ``rescale`` is invalid or does not fit the
        values into int16; an attribute keyword is unknown, computed or has an invalid
        value; or ``folder`` exists and is not empty.
    TypeError
        If ``attributes`` is not a mapping.
    """
    import pydicom

    location = Path(folder)
    if location.exists() and (not location.is_dir() or any(location.iterdir())):
        raise ConfigError(
            f'"folder" must be a new or empty folder, got "{location}", which is not; pass '
            "another folder so the series is not mixed with other files."
        )
    datasets = dicom_series_datasets(volume, affine, rescale=rescale, attributes=attributes)
    location.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        path = location / f"slice_{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
