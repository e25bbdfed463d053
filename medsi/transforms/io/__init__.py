"""Load brain scans robustly: NIfTI files and DICOM series, as MONAI transforms.

Layers: :mod:`~medsi.transforms.io.functional` (pure functions returning a :class:`Scan`),
:mod:`~medsi.transforms.io.array` (:class:`LoadScan`: path -> image, valid mask) and
:mod:`~medsi.transforms.io.dictionary` (:class:`LoadScand`).

Output contract
---------------
``LoadScand(keys=("image",), volume=0, series=None)`` takes a path in ``d["image"]`` (a
NIfTI file, a folder holding a DICOM series, or one file of that series) and returns a copy
of ``d`` with

``d["image"]``
    ``monai.data.MetaTensor``, shape (1, X, Y, Z), float32: intensities scaled exactly once
    (NIfTI ``scl_slope``/``scl_inter``, none when the slope is 0 or not finite; DICOM
    RescaleSlope/RescaleIntercept per slice). NaN and infinite voxels are replaced by 0.
    ``.affine`` is the (4, 4) float64 voxel-to-world matrix in RAS+ mm (MONAI's and
    nibabel's convention; DICOM's LPS+ is converted).
``d["image_valid"]`` (``valid_keys`` to rename)
    ``MetaTensor``, shape (1, X, Y, Z), bool, same affine: False at the voxels that were NaN
    or infinite. Keep those voxels out of the model input statistics and of the inference.

``.meta`` of both holds:

- ``"filename_or_obj"``: the path, str (the folder for DICOM);
- ``"source_format"``: ``"nifti"`` or ``"dicom"``;
- ``"spatial_shape"``: (X, Y, Z), int64 array; ``"spacing"``: voxel sizes in mm;
- ``"original_affine"``: the RAS+ affine as loaded (float64 array); ``"space"``: ``"RAS"``;
- ``"nonfinite_voxels"``: how many voxels were NaN or infinite;
- ``"volume_index"`` (the volume used, 0 for 3-D and DICOM), ``"n_volumes"``;
- ``"notes"``: list of plain-English strings saying what was done, e.g.
  ``"4-D file with 3 volumes: used volume 0 (--volume)"``;
- NIfTI only: ``"file_shape"``, ``"data_dtype"``, ``"scl_slope"``, ``"scl_inter"`` (as
  applied) and ``"affine_source"`` (``"sform"``, ``"qform"`` or ``"none"``);
- DICOM only: ``"series_instance_uid"``, ``"study_instance_uid"``,
  ``"frame_of_reference_uid"``, ``"modality"``, ``"sop_class_uid"``,
  ``"sop_instance_uids"`` and ``"dicom_files"`` (lists in the order of the Z axis) and
  ``"dicom_attributes"`` (patient, study and series attributes by DICOM keyword, as str:
  see :data:`CARRIED_ATTRIBUTES`).

Axis order: for NIfTI, the file's voxel axes; for DICOM, X along a row (column index), Y down
a column (row index), Z over the slices in ascending position along the slice normal.

Errors: :class:`~medsi.errors.InputDataError` for unreadable or inconsistent input (the
message names the file, the problem and what to do), :class:`~medsi.errors.ConfigError` for
a ``volume`` or ``series`` that does not fit the input. :func:`write_dicom_series` writes a
volume and affine back as a DICOM MR series that :func:`load_scan` reads to the same array
and affine.
"""

from medsi.transforms.io.array import LoadScan, scan_to_metatensors
from medsi.transforms.io.dictionary import LoadScand
from medsi.transforms.io.functional import (
    CARRIED_ATTRIBUTES,
    MIN_AXIS_VOXELS,
    Scan,
    load_dicom_series,
    load_nifti,
    load_scan,
    mask_nonfinite,
    write_dicom_series,
)

__all__ = [
    "LoadScan",
    "LoadScand",
    "Scan",
    "load_scan",
    "load_nifti",
    "load_dicom_series",
    "write_dicom_series",
    "mask_nonfinite",
    "scan_to_metatensors",
    "MIN_AXIS_VOXELS",
    "CARRIED_ATTRIBUTES",
]
