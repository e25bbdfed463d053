"""Read one classic (one file per slice) DICOM image series into a :class:`Scan`.

The checks run in this order, each with its own error: the files are DICOM (others are
skipped with a note), one series is chosen, it is not a multi-frame object, every slice has
the image plane attributes and they agree, the volume is large enough, the slices stack along
their normal at an even spacing with no gap and no shear, and the pixel data can be decoded.
"""

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsi.errors import ConfigError, InputDataError
from medsi.transforms.io._common import (
    LPS_TO_RAS,
    Scan,
    check_spatial_shape,
    check_volume_index,
    finish_scan,
    one_line,
)

# Objects that keep a whole volume in one file as frames: medsi reads one-file-per-slice series.
_MULTIFRAME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}

# Objects with pixels that are results, not scans: a DICOM-SEG beside its source is skipped.
_NOT_SOURCE = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
}

CARRIED_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
    "SeriesDate",
    "SeriesTime",
    "SeriesNumber",
    "SeriesDescription",
    "ProtocolName",
    "BodyPartExamined",
    "PatientPosition",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
)
"""Patient, study and series attributes copied (as strings) into ``meta["dicom_attributes"]``."""

_ORIENTATION_TOL = 1e-4  # direction cosines that differ by less are the same orientation
_SPACING_REL_TOL = 0.01  # slice gaps may differ from the median gap by 1% ...
_SPACING_ABS_TOL = 0.01  # ... or 0.01 mm, whichever is larger
_SHEAR_REL_TOL = 1e-3  # a slice may sit off the normal line by 0.1% of its distance ...
_SHEAR_ABS_TOL = 0.01  # ... plus 0.01 mm
_LISTED = 5  # file names quoted in notes before "and N more"


@dataclass
class _Slice:
    path: Path
    ds: Any  # pydicom.Dataset read without its pixel data


def _name(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(f'"{n}"' for n in names[:_LISTED])
    more = len(names) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _read_headers(
    files: Sequence[Path], folder: Path
) -> tuple[dict[str, list[_Slice]], list[str], list[str]]:
    """Group the DICOM image files by SeriesInstanceUID; list what was skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[_Slice]] = {}
    not_dicom: list[str] = []
    not_image: list[str] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            not_dicom.append(_name(path, folder))
            continue
        except Exception as e:  # a DICOM preamble followed by a damaged header
            raise InputDataError(
                f'"{path}" starts like a DICOM file but its header could not be read '
                f"({type(e).__name__}: {one_line(e)}); remove the file or export the series "
                "again."
            ) from e
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if "Rows" not in ds or not uid or str(ds.get("SOPClassUID", "")) in _NOT_SOURCE:
            # DICOMDIR, reports, presentation states, segmentations, images without a series
            not_image.append(_name(path, folder))
            continue
        groups.setdefault(uid, []).append(_Slice(path, ds))
    return groups, not_dicom, not_image


def _describe(uid: str, slices: list[_Slice]) -> str:
    ds = slices[0].ds
    description = str(ds.get("SeriesDescription", "") or "no description")
    number = ds.get("SeriesNumber", None)
    number_text = f"series number {number}, " if number not in (None, "") else ""
    return f"{uid} ({number_text}{ds.get('Modality', '?')}, '{description}', {len(slices)} file(s))"


def _choose_series(
    groups: dict[str, list[_Slice]], series: str | None, folder: Path, skipped: int
) -> str:
    if not groups:
        raise InputDataError(
            f'"{folder}" holds no DICOM image file ({skipped} other file(s) skipped); pass a '
            "folder with the .dcm files of one series, or a NIfTI file."
        )

    def number(uid: str) -> tuple[int, str]:
        value = groups[uid][0].ds.get("SeriesNumber", None)
        try:
            return int(value), uid
        except (TypeError, ValueError):
            return 0, uid

    ordered = sorted(groups, key=number)
    listing = "; ".join(_describe(uid, groups[uid]) for uid in ordered)
    if series is not None:
        if series not in groups:
            raise ConfigError(
                f'"series" must be the SeriesInstanceUID of a series in "{folder}", got '
                f'"{series}"; pass one of: {listing} (--series).'
            )
        return series
    if len(groups) > 1:
        raise InputDataError(
            f'"{folder}" holds {len(groups)} DICOM series and medsi reads one; choose it by '
            f"passing --series with its SeriesInstanceUID: {listing}."
        )
    return ordered[0]


def _refuse_multiframe(slices: list[_Slice]) -> None:
    from pydicom.uid import UID

    for item in slices:
        ds = item.ds
        sop_class = str(ds.get("SOPClassUID", ""))
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError):
            frames = 1
        if sop_class in _MULTIFRAME_SOP_CLASSES or frames > 1:
            kind = _MULTIFRAME_SOP_CLASSES.get(sop_class) or UID(sop_class or "?").name
            raise InputDataError(
                f'"{item.path}" is a multi-frame object ({kind}, {frames} frame(s) in one '
                "file); medsi reads classic series with one file per slice only; convert it "
                'to NIfTI with dcm2niix ("dcm2niix -z y -o OUTDIR FOLDER") and pass the '
                ".nii.gz file instead."
            )


def _floats(item: _Slice, keyword: str, count: int) -> np.ndarray:
    value = item.ds.get(keyword, None)
    if value is None or value == "":
        raise InputDataError(
            f'"{item.path}" has no {keyword}; medsi needs it to place the slice in space; '
            "export the series again with its image plane attributes, or convert it with "
            "dcm2niix and pass the NIfTI file."
        )
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        out = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputDataError(
            f'"{item.path}" has an unreadable {keyword} {value!r}; it must hold {count} '
            "numbers; fix or export the series again."
        ) from e
    if out.shape != (count,) or not np.isfinite(out).all():
        raise InputDataError(
            f'"{item.path}" has {keyword} {value!r}, which must be {count} finite numbers; '
            "fix or export the series again."
        )
    return out


@dataclass
class _Geometry:
    slices: list[_Slice]  # sorted along the slice normal
    affine_lps: np.ndarray
    rows: int
    columns: int
    spacing: float


def _check_consistent(slices: list[_Slice], source: str) -> tuple[int, int]:
    """Same Rows, Columns, PixelSpacing, orientation, frame of reference; one sample per pixel."""
    first = slices[0]

    def integer(item: _Slice, keyword: str, default: int) -> int:
        value = item.ds.get(keyword, default)
        try:
            return int(value if value not in (None, "") else default)
        except (TypeError, ValueError) as e:
            raise InputDataError(
                f'"{item.path}" has an unreadable {keyword} {value!r}; it must be an integer; '
                "fix the file or export the series again."
            ) from e

    def attributes(item: _Slice) -> dict[str, int | str]:
        return {
            "Rows": integer(item, "Rows", 0),
            "Columns": integer(item, "Columns", 0),
            "SamplesPerPixel": integer(item, "SamplesPerPixel", 1),
            "FrameOfReferenceUID": str(item.ds.get("FrameOfReferenceUID", "") or ""),
        }

    ref = attributes(first)
    if ref["SamplesPerPixel"] != 1:
        raise InputDataError(
            f'"{first.path}" holds colour pixels (SamplesPerPixel {ref["SamplesPerPixel"]}); '
            "medsi reads greyscale MR images; pass the series of the original greyscale scan."
        )
    ref_spacing = _floats(first, "PixelSpacing", 2)
    ref_iop = _floats(first, "ImageOrientationPatient", 6)
    for item in slices:
        for keyword, got in attributes(item).items():
            expected = ref[keyword]
            if got != expected:
                raise InputDataError(
                    f'the slices of "{source}" disagree on {keyword}: "{first.path.name}" has '
                    f'{expected} but "{item.path.name}" has {got}; a series must be one grid; '
                    "remove the stray files or export the series again."
                )
        for keyword, expected in (
            ("PixelSpacing", ref_spacing),
            ("ImageOrientationPatient", ref_iop),
        ):
            got = _floats(item, keyword, expected.size)
            if not np.allclose(got, expected, rtol=0, atol=_ORIENTATION_TOL):
                raise InputDataError(
                    f'the slices of "{source}" disagree on {keyword}: "{first.path.name}" has '
                    f'{expected.tolist()} but "{item.path.name}" has {got.tolist()}; a series '
                    "must be one grid; remove the stray files or export the series again."
                )
        _floats(item, "ImagePositionPatient", 3)
    return int(ref["Rows"]), int(ref["Columns"])


def _slice_geometry(slices: list[_Slice], rows: int, columns: int, source: str) -> _Geometry:
    """Sort the slices along their normal and check they form an even, unsheared stack."""
    iop = _floats(slices[0], "ImageOrientationPatient", 6)
    row_dir, col_dir = iop[:3], iop[3:]
    lengths = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if abs(lengths[0] - 1) > 1e-3 or abs(lengths[1] - 1) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise InputDataError(
            f'"{slices[0].path}" has ImageOrientationPatient {iop.tolist()}, which is not two '
            "perpendicular unit vectors; fix the header or export the series again."
        )
    row_dir, col_dir = row_dir / lengths[0], col_dir / lengths[1]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    positions = np.stack([_floats(item, "ImagePositionPatient", 3) for item in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]

    def where(i: int) -> str:
        number = slices[i].ds.get("InstanceNumber", "?")
        return f'"{slices[i].path.name}" (InstanceNumber {number}, at {along[i]:.3f} mm)'

    gaps = np.diff(along)
    for i in np.flatnonzero(gaps < 1e-3):
        raise InputDataError(
            f'"{source}" has two slices at one position along the slice normal: {where(i)} '
            f"and {where(i + 1)}; the series holds several volumes (e.g. time points or "
            "diffusion directions) or duplicated files; remove the duplicates, or convert it "
            "with dcm2niix and pass the NIfTI file with --volume."
        )
    spacing = float(np.median(gaps))
    tolerance = max(_SPACING_ABS_TOL, _SPACING_REL_TOL * spacing)
    for i in np.flatnonzero(np.abs(gaps - spacing) > tolerance):
        missing = round(gaps[i] / spacing) - 1
        if missing >= 1 and abs(gaps[i] - (missing + 1) * spacing) <= tolerance:
            problem, action = (
                "a gap in its slices",
                (f"{missing} slice(s) are missing there; export the complete series again"),
            )
        else:
            problem, action = (
                "unevenly spaced slices",
                (
                    "medsi needs a regular grid; resample the series (e.g. convert it with "
                    "dcm2niix) and pass the NIfTI file"
                ),
            )
        raise InputDataError(
            f'"{source}" has {problem}: between {where(i)} and {where(i + 1)} along the slice '
            f"normal the spacing is {gaps[i]:.3f} mm while it is {spacing:.3f} mm elsewhere; "
            f"{action}."
        )

    offsets = positions - positions[0]
    sideways = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    limits = _SHEAR_ABS_TOL + _SHEAR_REL_TOL * np.abs(along - along[0])
    if (sideways > limits).any():
        i = int(np.argmax(sideways - limits))
        raise InputDataError(
            f'"{source}" is a tilted or sheared stack: {where(i)} lies {sideways[i]:.3f} mm '
            f"off the line through the first slice along the slice normal (gantry tilt); "
            "medsi needs slices stacked along their normal; convert the series with dcm2niix "
            "(which corrects gantry tilt) and pass the NIfTI file."
        )

    pixel_spacing = _floats(slices[0], "PixelSpacing", 2)  # (between rows, between columns)
    step = (along[-1] - along[0]) / (len(slices) - 1)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * pixel_spacing[1]  # array axis 0 runs along a row (column index)
    affine[:3, 1] = col_dir * pixel_spacing[0]  # array axis 1 runs down a column (row index)
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[0]
    return _Geometry(slices, affine, rows, columns, float(step))


def _rescale(item: _Slice, keyword: str, default: float) -> float:
    value = item.ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise InputDataError(
            f'"{item.path}" has an unreadable {keyword} {value!r}; it must be a number; fix '
            "the file or export the series again."
        ) from e
    if not np.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
        raise InputDataError(
            f'"{item.path}" has {keyword} {value!r}, which must be a finite non-zero number; '
            "fix the file or export the series again."
        )
    return number


def _decode_with_simpleitk(ds: Any) -> np.ndarray | None:
    """Decode stored pixel values with SimpleITK's GDCM, or return None if it cannot.

    GDCM applies RescaleSlope/RescaleIntercept itself for some SOP classes, so they are
    removed from the copy it reads: the caller applies them, once, as for pydicom.
    """
    import SimpleITK as sitk

    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in ds:
            delattr(ds, keyword)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "slice.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
            image = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
            pixels = sitk.GetArrayFromImage(image)
        except Exception:
            return None
    return pixels[0] if pixels.ndim == 3 and pixels.shape[0] == 1 else pixels


def _read_pixels(geometry: _Geometry, notes: list[str]) -> np.ndarray:
    """Stack the slices into (X=Columns, Y=Rows, Z=slices) modality values, float64."""
    import pydicom

    volume = np.empty((geometry.columns, geometry.rows, len(geometry.slices)), np.float64)
    fallback: dict[str, int] = {}
    scalings: set[tuple[float, float]] = set()
    for k, item in enumerate(geometry.slices):
        ds = pydicom.dcmread(item.path)
        syntax = ds.file_meta.get("TransferSyntaxUID", None)
        slope = _rescale(item, "RescaleSlope", 1.0)
        intercept = _rescale(item, "RescaleIntercept", 0.0)
        try:
            stored = np.asarray(ds.pixel_array)  # stored values: no rescale applied
        except Exception as e:
            compressed = bool(getattr(syntax, "is_compressed", False))
            stored = _decode_with_simpleitk(ds) if compressed else None
            if stored is None:
                name = getattr(syntax, "name", "unknown")
                if not compressed:
                    raise InputDataError(
                        f'"{item.path}" has pixel data that could not be read '
                        f"({type(e).__name__}: {one_line(e)}); the file is truncated or damaged; "
                        "copy or export the series again."
                    ) from e
                raise InputDataError(
                    f'"{item.path}" holds pixel data in transfer syntax {name} ({syntax}), '
                    "which no installed decoder could read "
                    f"({type(e).__name__}: {one_line(e)}); install a decoder for it (e.g. "
                    '"pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"), or '
                    "decompress the series first (gdcmconv --raw, dcmdjpeg), or convert it "
                    "with dcm2niix and pass the NIfTI file."
                ) from e
            key = f"{getattr(syntax, 'name', syntax)} ({syntax})"
            fallback[key] = fallback.get(key, 0) + 1
        if stored.shape != (geometry.rows, geometry.columns):
            raise InputDataError(
                f'"{item.path}" decodes to pixels of shape {stored.shape}, but its Rows and '
                f"Columns say ({geometry.rows}, {geometry.columns}); the file is damaged; "
                "export the series again."
            )
        scalings.add((slope, intercept))
        volume[:, :, k] = (stored.astype(np.float64) * slope + intercept).T
    for key, count in fallback.items():
        notes.append(
            f"{count} slice(s) in transfer syntax {key} were decoded with SimpleITK (GDCM), "
            "as pydicom has no decoder for it installed"
        )
    if scalings != {(1.0, 0.0)}:
        if len(scalings) == 1:
            slope, intercept = next(iter(scalings))
            notes.append(
                f"stored values rescaled once by RescaleSlope {slope:g} and RescaleIntercept "
                f"{intercept:g}"
            )
        else:
            notes.append(
                f"stored values rescaled once by each slice's own RescaleSlope and "
                f"RescaleIntercept ({len(scalings)} different pairs)"
            )
    return volume


def load_series_files(
    folder: Path, files: Sequence[Path], volume: int = 0, series: str | None = None
) -> Scan:
    """Load the one DICOM series among ``files`` (or the one named ``series``).

    Parameters
    ----------
    folder
        The folder the files were found in; names in messages are relative to it.
    files
        Candidate files; those that are not DICOM are skipped with a note.
    volume
        Must be 0: a classic series holds one volume.
    series
        SeriesInstanceUID of the series to load, or None when there is only one.

    Returns
    -------
    Scan
        See :func:`medsi.transforms.io.functional.load_dicom_series`.
    """
    volume = check_volume_index(volume)
    if series is not None and not isinstance(series, str):
        raise TypeError(
            f'"series" must be a SeriesInstanceUID (str) or None, got {type(series).__name__}; '
            "pass the UID printed in the list of series, or nothing when there is one series."
        )
    source = str(folder)
    groups, not_dicom, not_image = _read_headers(files, folder)
    uid = _choose_series(groups, series, folder, len(not_dicom) + len(not_image))
    slices = groups[uid]
    notes: list[str] = []
    if not_dicom:
        notes.append(f"skipped {len(not_dicom)} file(s) that are not DICOM: {_listing(not_dicom)}")
    if not_image:
        notes.append(
            f"skipped {len(not_image)} DICOM file(s) that are not images of a series "
            f"(e.g. DICOMDIR, reports, segmentations): {_listing(not_image)}"
        )
    if len(groups) > 1:
        notes.append(f"used series {uid} of the {len(groups)} in the folder (--series)")
    if volume != 0:
        raise ConfigError(
            f'"volume" must be 0 for the DICOM series "{source}", which holds 1 volume, got '
            f"{volume}; drop --volume (it selects a volume of a 4-D NIfTI file)."
        )
    _refuse_multiframe(slices)
    rows, columns = _check_consistent(slices, source)
    check_spatial_shape((columns, rows, len(slices)), source)
    geometry = _slice_geometry(slices, rows, columns, source)

    first = geometry.slices[0].ds
    modality = str(first.get("Modality", ""))
    notes.append(
        f"DICOM series {uid} ('{first.get('SeriesDescription', '')}'): {len(slices)} slices "
        f"sorted along the slice normal, {geometry.spacing:.3f} mm apart; LPS converted to RAS"
    )
    thickness = first.get("SliceThickness", None)
    try:
        thickness_mm = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness_mm = None
    if thickness_mm and abs(thickness_mm - geometry.spacing) > 0.1 * geometry.spacing:
        notes.append(
            f"slices are {thickness_mm:g} mm thick but {geometry.spacing:.3f} mm apart "
            "(gaps or overlap between slices)"
        )
    if modality != "MR":
        notes.append(f"modality is {modality or 'not given'}, not MR: check the input")
    array = _read_pixels(geometry, notes)

    attributes = {}
    for keyword in CARRIED_ATTRIBUTES:
        value = first.get(keyword, None)
        if value is not None and str(value) != "":
            attributes[keyword] = str(value)
    meta: dict[str, Any] = {
        "filename_or_obj": source,
        "source_format": "dicom",
        "volume_index": 0,
        "n_volumes": 1,
        "series_instance_uid": uid,
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "modality": modality,
        "sop_class_uid": str(first.get("SOPClassUID", "")),
        "sop_instance_uids": [str(s.ds.get("SOPInstanceUID", "")) for s in geometry.slices],
        "dicom_files": [str(s.path) for s in geometry.slices],
        "dicom_attributes": attributes,
        "notes": notes,
    }
    return finish_scan(array, LPS_TO_RAS @ geometry.affine_lps, meta, source)
