"""The DICOM MR series converted from a NIfTI input: the source images of the DICOM-SEG.

A DICOM-SEG must reference the images it segments (PS3.3 C.8.20 Segmentation IOD), and a
NIfTI file has none. medsi converts the analysed NIfTI volume into an MR Image Storage series
(one instance per slice, PS3.3 A.4) with
:func:`medsi.transforms.io.write_dicom_series`'s builder, so that medsi's loader reads it
back to the same voxels and RAS+ affine, and a viewer or PACS can show the scan with its
SEG and SR.

What the series holds:

- geometry from the RAS+ affine converted to LPS+: ImagePositionPatient,
  ImageOrientationPatient, PixelSpacing, SliceThickness; slice ``k`` is the NIfTI's
  ``volume[:, :, k]`` (rows along the NIfTI's second axis, columns along its first);
- pixels as int16 with RescaleSlope/RescaleIntercept: the NIfTI's own ``scl_slope`` /
  ``scl_inter`` when its stored values are integers that fit int16 (the voxels are then
  reproduced exactly), otherwise a rescale spreading the values over int16 (error at most
  half the slope);
- new Study, Series, SOP Instance and Frame of Reference UIDs;
- patient and study identity from the caller, with defaults that are plainly placeholders
  (:data:`PLACEHOLDER_PATIENT_NAME`, :data:`PLACEHOLDER_PATIENT_ID`): a NIfTI file carries
  no identity, and inventing a plausible one would be worse than an obvious gap.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import numpy as np

from medsi import __version__
from medsi.errors import ConfigError, ExportError, InputDataError

__all__ = [
    "PLACEHOLDER_PATIENT_NAME",
    "PLACEHOLDER_PATIENT_ID",
    "SOURCE_SERIES_NUMBER",
    "SeriesIdentity",
    "source_series_datasets",
]

PLACEHOLDER_PATIENT_NAME = "MEDSI^PLACEHOLDER"
"""PatientName of a converted series when none is given: visibly not a real name."""

PLACEHOLDER_PATIENT_ID = "MEDSI-PLACEHOLDER"
"""PatientID of a converted series when none is given."""

SOURCE_SERIES_NUMBER = 1
"""SeriesNumber of the converted series (the first series of its new study)."""

_INT16 = np.iinfo(np.int16)


@dataclasses.dataclass(frozen=True)
class SeriesIdentity:
    """Patient and study identity written into a converted series.

    Attributes
    ----------
    patient_name
        DICOM person name (``Family^Given``); None: :data:`PLACEHOLDER_PATIENT_NAME`.
    patient_id
        None: :data:`PLACEHOLDER_PATIENT_ID`.
    study_instance_uid
        Put the series into an existing study; None: a new study.
    accession_number, study_id, study_description
        Optional study attributes (empty, ``"MEDSI"`` and a medsi description by default).
    """

    patient_name: str | None = None
    patient_id: str | None = None
    study_instance_uid: str | None = None
    accession_number: str = ""
    study_id: str = "MEDSI"
    study_description: str = "converted from NIfTI by medsi"

    def attributes(self) -> dict[str, Any]:
        """The patient and study attributes by DICOM keyword (placeholders filled in)."""
        now = datetime.datetime.now()
        attributes = {
            "PatientName": self.patient_name or PLACEHOLDER_PATIENT_NAME,
            "PatientID": self.patient_id or PLACEHOLDER_PATIENT_ID,
            "StudyDate": now.strftime("%Y%m%d"),
            "StudyTime": now.strftime("%H%M%S"),
            "StudyID": self.study_id,
            "AccessionNumber": self.accession_number,
            "StudyDescription": self.study_description,
        }
        if self.study_instance_uid is not None:
            attributes["StudyInstanceUID"] = self.study_instance_uid
        return attributes


def _kept_rescale(meta: dict, values: np.ndarray) -> tuple[float, float] | None:
    """The NIfTI's own (slope, intercept) when they reproduce the voxels from int16 values.

    None when the file stored floats, had no scaling, or its stored integers do not fit in
    int16: the writer then picks a rescale of its own.
    """
    slope, intercept = meta.get("scl_slope"), meta.get("scl_inter")
    dtype = meta.get("data_dtype")
    if slope is None or intercept is None or dtype is None:
        return None
    slope, intercept = float(slope), float(intercept)
    if np.dtype(dtype).kind not in "iu" or not (np.isfinite(slope) and slope != 0.0):
        return None
    if not np.isfinite(intercept):
        return None
    if slope == 1.0 and intercept == 0.0:
        return None  # plain integers: stored as they are, no Modality LUT needed
    stored = (values.astype(np.float64) - intercept) / slope
    rounded = np.round(stored)
    if np.abs(stored - rounded).max(initial=0.0) > 1e-3:
        return None  # NaN voxels replaced by 0, or float32 rounding of large values
    if rounded.min(initial=0.0) < _INT16.min or rounded.max(initial=0.0) > _INT16.max:
        return None
    return slope, intercept


def _series_description(file_name: str) -> str:
    """``<file> converted by medsi <version>``, the file name shortened to fit VR LO (64)."""
    suffix = f" converted by medsi {__version__}"
    room = 64 - len(suffix)
    if len(file_name) > room:
        file_name = file_name[: room - 3] + "..."
    return file_name + suffix


def source_series_datasets(scan, identity: SeriesIdentity | None = None) -> list[Any]:
    """Convert the NIfTI volume a scan was analysed from into MR Image Storage datasets.

    The volume is read again from ``scan.path`` (the volume ``scan.meta["volume_index"]`` of
    a 4-D file) and must still have the analysed shape and affine.

    Parameters
    ----------
    scan
        A :class:`~medsi.pipeline.preprocess.PreparedScan` of a NIfTI input.
    identity
        Patient and study identity; None: placeholders and a new study.

    Returns
    -------
    list of pydicom.Dataset
        One dataset per slice, slice ``k`` (the NIfTI's ``volume[:, :, k]``) at index ``k``,
        with file meta information, ready for :func:`pydicom.dcmwrite`.

    Raises
    ------
    ExportError
        If the scan is not a NIfTI input, its file can no longer be read or has changed
        since the analysis, its affine cannot be written as DICOM geometry, or an identity
        value is not valid DICOM.
    """
    from medsi.transforms.io import load_scan
    from medsi.transforms.io._dicom_write import dicom_series_datasets

    meta = scan.meta
    if meta.get("source_format") != "nifti":
        raise ExportError(
            f"a converted source series is made for NIfTI inputs only, got a "
            f'{meta.get("source_format")!r} input "{scan.path}"; a DICOM input is its own '
            "source: reference its files instead."
        )
    try:
        native = load_scan(scan.path, volume=int(meta.get("volume_index", 0)))
    except (InputDataError, ConfigError) as e:
        raise ExportError(
            f'the NIfTI input "{scan.path}" could not be read again to convert it to DICOM '
            f"({e}); keep the input file in place until the outputs are written."
        ) from e
    if native.array.shape != tuple(scan.native_shape) or not np.allclose(
        native.affine, scan.native_affine, atol=1e-4
    ):
        raise ExportError(
            f'the NIfTI input "{scan.path}" changed since it was analysed (shape '
            f"{native.array.shape}, expected {tuple(scan.native_shape)}, or another affine); "
            "analyse the file again before exporting."
        )
    identity = identity or SeriesIdentity()
    attributes = identity.attributes() | {
        "SeriesNumber": str(SOURCE_SERIES_NUMBER),  # IS values are validated as text
        "SeriesDescription": _series_description(scan.path.name),
        # A brain is unpaired: saying so lets validators skip the Laterality condition.
        "BodyPartExamined": "BRAIN",
        "Manufacturer": "medsi",
    }
    try:
        return dicom_series_datasets(
            native.array,
            native.affine,
            rescale=_kept_rescale(meta, native.array),
            attributes=attributes,
        )
    except ConfigError as e:
        raise ExportError(
            f'the NIfTI input "{scan.path}" cannot be converted to a DICOM MR series: {e}'
        ) from e
