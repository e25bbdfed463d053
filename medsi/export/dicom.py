"""Write a scan's DICOM outputs: converted source series, DICOM-SEG and SR (DESIGN.md §5).

:func:`write_dicom_outputs` is the one entry point. Layout of ``out_dir``::

    source_series/slice_0000.dcm ...   NIfTI input only: the scan as a DICOM MR series
    lesions_seg.dcm                    DICOM-SEG, one segment per lesion (none: not written)
    lesions_sr.dcm                     Comprehensive 3D SR, TID 1500 (always written)

Every file is written atomically (:func:`medsi.atomic.atomic_write_bytes`): a crash never
leaves half a DICOM file. Objects are built completely in memory before the first file is
written, so an object that cannot be built leaves nothing new behind.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medsi.atomic import atomic_write_bytes
from medsi.errors import ExportError
from medsi.export.seg import build_segmentation
from medsi.export.source_series import SeriesIdentity, source_series_datasets
from medsi.export.sr import build_measurement_report

__all__ = [
    "write_dicom_outputs",
    "dataset_bytes",
    "SOURCE_SERIES_FOLDER",
    "SEG_FILENAME",
    "SR_FILENAME",
]

SOURCE_SERIES_FOLDER = "source_series"
SEG_FILENAME = "lesions_seg.dcm"
SR_FILENAME = "lesions_sr.dcm"


def dataset_bytes(dataset: Any) -> bytes:
    """A dataset as the bytes of a DICOM file (preamble, file meta, data set).

    Raises
    ------
    ExportError
        If pydicom cannot encode the dataset.
    """
    import pydicom

    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as e:
        raise ExportError(
            f"the DICOM object {dataset.get('SOPClassUID', '?')} could not be encoded "
            f"({type(e).__name__}: {e}); report this as a bug in medsi."
        ) from e
    return buffer.getvalue()


def _dicom_source(scan, identity: SeriesIdentity) -> list[Any]:
    """The scan's own DICOM files (headers only), in Z order, checked against the identity."""
    import pydicom

    files = scan.meta.get("dicom_files") or []
    uids = scan.meta.get("sop_instance_uids") or []
    if not files or len(files) != len(uids):
        raise ExportError(
            f'the DICOM input "{scan.path}" has no list of its files in Z order (meta '
            '"dicom_files" and "sop_instance_uids"); load it with medsi.transforms.io.load_scan.'
        )
    datasets = []
    for path, uid in zip(files, uids, strict=True):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise ExportError(
                f'the source file "{path}" could not be read again ({e}); keep the input '
                "series in place until the outputs are written."
            ) from e
        if str(ds.get("SOPInstanceUID", "")) != uid:
            raise ExportError(
                f'the source file "{path}" changed since the analysis (SOPInstanceUID '
                f"{ds.get('SOPInstanceUID')}, expected {uid}); analyse the series again."
            )
        datasets.append(ds)
    first = datasets[0]
    for keyword, wanted in (
        ("PatientName", identity.patient_name),
        ("PatientID", identity.patient_id),
    ):
        own = str(first.get(keyword, ""))
        if wanted is not None and own != wanted:
            raise ExportError(
                f'"{keyword}" of a DICOM input comes from its files ({own!r}), got '
                f"{wanted!r}; leave it out (it only names NIfTI inputs), so the SEG and SR "
                "stay with the patient of their source images."
            )
    return datasets


def _replace_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a new sibling folder, then swap it in for ``folder``.

    A re-run replaces the converted series of an earlier run whole: the two are never
    mixed, and an interrupted write leaves the earlier series in place.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, data in files.items():
            (fresh / name).write_bytes(data)
        if folder.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
            folder.rename(retired / folder.name)
            fresh.rename(folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            fresh.rename(folder)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh, ignore_errors=True)


def write_dicom_outputs(
    analysis,
    out_dir: str | os.PathLike,
    *,
    patient_name: str | None = None,
    patient_id: str | None = None,
    study_instance_uid: str | None = None,
    accession_number: str = "",
) -> dict[str, Path | None]:
    """Write the DICOM outputs of one analysed scan into ``out_dir``.

    A NIfTI input is first converted into a DICOM MR series (``source_series/``), which
    the SEG and SR then reference; a DICOM input is referenced as it is (its own files, its
    patient, study and Frame of Reference). The SEG holds one segment per lesion that has
    voxels on the source grid; when no lesion has, no SEG is written and the SR states that
    there is no finding (or lists the lesions without a segment).

    Parameters
    ----------
    analysis
        A :class:`~medsi.pipeline.run.ScanAnalysis`. Its numbers come from
        :meth:`~medsi.pipeline.run.ScanAnalysis.report`, so the SR agrees with
        ``report.json``.
    out_dir
        Output folder (created). A ``source_series/`` of an earlier run is replaced whole.
    patient_name, patient_id
        Identity written into the converted series of a NIfTI input; None: the plain
        placeholders ``MEDSI^PLACEHOLDER`` / ``MEDSI-PLACEHOLDER``. For a DICOM input they
        must be None or equal to the files' own values.
    study_instance_uid, accession_number
        Study of the converted series of a NIfTI input (None: a new study).

    Returns
    -------
    dict
        ``{"source_series": folder or None (DICOM input), "seg": path or None (no lesion
        voxel), "sr": path}``.

    Raises
    ------
    ExportError
        If an object cannot be built as valid DICOM: the lesion map is not on the source
        grid, the input changed or vanished since the analysis, its geometry cannot be
        written as DICOM, or the identity differs from a DICOM input's.
    """
    out = Path(out_dir)
    scan = analysis.scan
    identity = SeriesIdentity(
        patient_name=patient_name,
        patient_id=patient_id,
        study_instance_uid=study_instance_uid,
        accession_number=accession_number,
    )
    source_folder = None
    match scan.meta.get("source_format"):
        case "nifti":
            source_folder = out / SOURCE_SERIES_FOLDER
            source = source_series_datasets(scan, identity)
        case "dicom":
            source = _dicom_source(scan, identity)
        case other:
            raise ExportError(
                f'the scan\'s source format must be "nifti" or "dicom", got {other!r}; '
                "analyse a file loaded by medsi.transforms.io.load_scan."
            )

    report = analysis.report()
    segmentation = build_segmentation(
        source,
        analysis.native_labels,
        report["lesions"],
        alpha=analysis.settings.alpha,
        bundle_hash=analysis.bundle_hash,
        settings=report["settings"],
    )
    sr = build_measurement_report(report, source, segmentation)
    # Everything is built: encode, then write.
    seg_bytes = None if segmentation is None else dataset_bytes(segmentation.dataset)
    sr_bytes = dataset_bytes(sr)
    if source_folder is not None:
        _replace_folder(
            source_folder,
            {f"slice_{k:04d}.dcm": dataset_bytes(ds) for k, ds in enumerate(source)},
        )
    seg_path = None if seg_bytes is None else atomic_write_bytes(out / SEG_FILENAME, seg_bytes)
    if seg_path is None and (out / SEG_FILENAME).exists():
        (out / SEG_FILENAME).unlink()  # a stale SEG of an earlier run would contradict the SR
    sr_path = atomic_write_bytes(out / SR_FILENAME, sr_bytes)
    return {"source_series": source_folder, "seg": seg_path, "sr": sr_path}
