"""DICOM-SEG of the lesions medsi found: one BINARY segment per lesion, on the source grid.

Built with :class:`highdicom.seg.Segmentation` (PS3.3 A.51 Segmentation IOD). Each lesion
becomes one segment (PS3.3 C.8.20.2 Segment Description):

- SegmentLabel ``"Lesion N"`` (N is the lesion id of ``report.json``), SegmentDescription
  with its selective p-value (the over-conditioned p with termination ``oc``), its
  Holm-adjusted p and the decision at alpha;
- TrackingID ``"Lesion N"`` and a new TrackingUID, which the SR's measurement group of the
  lesion repeats;
- property category SCT 49755003 "Morphologically abnormal structure", property type
  SCT 52988006 "Lesion", anatomic region SCT 12738006 "Brain";
- algorithm identification (CID 7162 "Artificial Intelligence"): name ``medsi``, version
  ``"<medsi version> model <first 12 hex digits of the bundle hash>"``, parameters holding
  the full model content hash and the run's settings.

The segmentation lies on the source image grid: frame ``k`` is the source instance ``k``
(Z order), with ``frame[r, c] = native_labels[c, r, k]`` (X along a row, Y down a column,
as :mod:`medsi.transforms.io` lays a series out). It references the source instances and
shares their Frame of Reference. A lesion without any native voxel (one lying between the
acquired slices of a sparse scan) has no segment; a scan without such voxels gets no SEG at
all (:func:`build_segmentation` returns None).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.sr.coding import Code

from medsi import __version__
from medsi.errors import ExportError

__all__ = [
    "SEG_SERIES_NUMBER",
    "LESION_CATEGORY",
    "LESION_TYPE",
    "BRAIN",
    "SegmentReference",
    "LesionSegmentation",
    "algorithm_identification",
    "build_segmentation",
    "label_frames",
    "segment_description_text",
]

SEG_SERIES_NUMBER = 9001
"""SeriesNumber of the DICOM-SEG (high, so it sorts after the scan's own series)."""

_MAX_LO = 64  # characters of a DICOM LO value (SegmentDescription, tracking ids)


LESION_CATEGORY = Code("49755003", "SCT", "Morphologically abnormal structure")
"""Segmented property category of a lesion (CID 7150)."""
LESION_TYPE = Code("52988006", "SCT", "Lesion")
"""Segmented property type of a lesion (CID 7151); also the SR's finding type."""
BRAIN = Code("12738006", "SCT", "Brain")
"""Anatomic region of every segment (CID 4); also the SR's finding site."""


@dataclasses.dataclass(frozen=True)
class SegmentReference:
    """How the SR refers to one lesion's segment.

    Attributes
    ----------
    lesion_id
        The lesion's id in ``report.json``.
    segment_number
        Its SegmentNumber in the SEG (1, 2, ... in the order of the lesions).
    tracking_id, tracking_uid
        TrackingID and TrackingUID shared by the segment and the SR's measurement group.
    source_slices
        Indices (Z order) of the source images the segment has pixels on.
    """

    lesion_id: int
    segment_number: int
    tracking_id: str
    tracking_uid: str
    source_slices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LesionSegmentation:
    """A DICOM-SEG of a scan's lesions and the way to refer to each segment.

    Attributes
    ----------
    dataset
        The :class:`highdicom.seg.Segmentation`.
    segments
        One :class:`SegmentReference` per segment, by lesion id.
    """

    dataset: Any
    segments: dict[int, SegmentReference]


def algorithm_identification(bundle_hash: str, settings: dict):
    """The medsi algorithm as a DICOM Algorithm Identification Sequence (CID 7162).

    Parameters
    ----------
    bundle_hash
        Content hash of the model bundle (hex).
    settings
        The run's settings (``RunSettings.to_dict()``), written as algorithm parameters.

    Returns
    -------
    highdicom.AlgorithmIdentificationSequence
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    parameters = {"model_content_hash": bundle_hash}
    parameters.update({key: json.dumps(value) for key, value in settings.items()})
    return hd.AlgorithmIdentificationSequence(
        name="medsi",
        family=codes.cid7162.ArtificialIntelligence,
        version=f"{__version__} model {bundle_hash[:12]}",
        source="medsi",
        parameters=parameters,
    )


def segment_description_text(record: dict, alpha: float) -> str:
    """The SegmentDescription of a lesion: its decisive p-values and the decision.

    At most 64 characters (DICOM LO): a shorter form is used when the long one does not fit.

    Parameters
    ----------
    record
        The lesion's record from :meth:`ScanAnalysis.lesion_records`.
    alpha
        The significance level of the decision.

    Examples
    --------
    >>> segment_description_text({"p_selective": 0.0123, "p_oc": 0.2, "p_holm": 0.0246,
    ...                           "significant": True}, 0.05)
    'selective p 0.0123, Holm p 0.0246: significant at alpha 0.05'
    >>> segment_description_text({"p_selective": None, "p_oc": 0.3, "p_holm": 0.6,
    ...                           "significant": False}, 0.05)
    'oc p 0.3, Holm p 0.6: not significant at alpha 0.05'
    """
    if record["p_selective"] is not None:
        kind, p_value = "selective", record["p_selective"]
    else:  # termination oc: the over-conditioned p is the one that is exact
        kind, p_value = "oc", record["p_oc"]
    verdict = "significant" if record["significant"] else "not significant"
    holm = record["p_holm"]
    for text in (
        f"{kind} p {p_value:.3g}, Holm p {holm:.3g}: {verdict} at alpha {alpha:g}",
        f"{kind} p {p_value:.2g}, Holm {holm:.2g}: {verdict} at {alpha:.3g}",
        f"p {p_value:.2g} Holm {holm:.2g} {'sig' if record['significant'] else 'n.s.'}",
    ):
        if len(text) <= _MAX_LO:
            return text
    raise ExportError(  # not reachable with finite numbers; guards odd values
        f"the description of lesion {record.get('id')} does not fit in 64 characters, got "
        f"{text!r}; report this as a bug in medsi."
    )


def label_frames(native_labels: np.ndarray) -> np.ndarray:
    """Lay an (X, Y, Z) label volume out as DICOM frames (Z, rows, columns).

    Frame ``k`` is ``native_labels[:, :, k].T``: X runs along a row (the column index), Y
    down a column (the row index), as in :func:`medsi.transforms.io.write_dicom_series` and
    :func:`medsi.transforms.io.load_dicom_series`.

    Examples
    --------
    >>> labels = np.zeros((3, 2, 1), np.int16); labels[2, 0, 0] = 1
    >>> label_frames(labels)[0].tolist()
    [[0, 0, 1], [0, 0, 0]]
    """
    return np.ascontiguousarray(np.asarray(native_labels).transpose(2, 1, 0))


def _check_grid(source_images: Sequence[Any], native_labels: np.ndarray) -> None:
    shape = native_labels.shape
    if native_labels.ndim != 3:
        raise ExportError(
            f'"native_labels" must be an (X, Y, Z) volume, got shape {shape}; pass the '
            "analysis' lesion map on the input's own grid."
        )
    rows = {int(ds.Rows) for ds in source_images}
    columns = {int(ds.Columns) for ds in source_images}
    if len(source_images) != shape[2] or rows != {shape[1]} or columns != {shape[0]}:
        raise ExportError(
            f"the lesion map must lie on the source image grid: (X, Y, Z) = (Columns, Rows, "
            f"instances) = ({sorted(columns)}, {sorted(rows)}, {len(source_images)}), got "
            f"{shape}; pass the source series the scan was analysed from (in Z order)."
        )
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in source_images}
    if len(frames) != 1 or frames == {""}:
        raise ExportError(
            f"the source images must share one FrameOfReferenceUID, got {sorted(frames)}; "
            "pass one series with its Frame of Reference (or convert the scan again)."
        )


def build_segmentation(
    source_images: Sequence[Any],
    native_labels: np.ndarray,
    records: Sequence[dict],
    *,
    alpha: float,
    bundle_hash: str,
    settings: dict,
) -> LesionSegmentation | None:
    """Build the DICOM-SEG of a scan's lesions, or None when no lesion has a native voxel.

    Parameters
    ----------
    source_images
        The source series' datasets in Z order (pixel data not needed), one per slice.
    native_labels
        (X, Y, Z) int lesion ids on the source grid (0: background).
    records
        The lesions' records (:meth:`ScanAnalysis.lesion_records`), in report order.
    alpha
        Significance level of the decisions.
    bundle_hash
        Content hash of the model bundle.
    settings
        The run's settings as a dict (algorithm parameters).

    Returns
    -------
    LesionSegmentation or None
        None when no lesion covers a voxel of the source grid: no SEG is written then.

    Raises
    ------
    ExportError
        If the lesion map is not on the source grid, the source images lack a common Frame
        of Reference, a lesion id of the map has no record, or highdicom refuses the object.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    native_labels = np.asarray(native_labels)
    _check_grid(source_images, native_labels)
    ids = {int(r["id"]) for r in records}
    present = {int(v) for v in np.unique(native_labels)} - {0}
    if not present <= ids:
        raise ExportError(
            f"the lesion map holds ids {sorted(present - ids)} that no lesion record has, got "
            f"records for {sorted(ids)}; pass the map and the records of one analysis."
        )
    kept = [r for r in records if int(r["id"]) in present]
    if not kept:
        return None

    algorithm = algorithm_identification(bundle_hash, settings)
    frames = label_frames(native_labels)
    numbered = np.zeros(frames.shape, np.uint16)
    descriptions, segments = [], {}
    for number, record in enumerate(kept, start=1):
        lesion_id = int(record["id"])
        inside = frames == lesion_id
        numbered[inside] = number
        reference = SegmentReference(
            lesion_id=lesion_id,
            segment_number=number,
            tracking_id=f"Lesion {lesion_id}",
            tracking_uid=generate_uid(),
            source_slices=tuple(int(k) for k in np.flatnonzero(inside.any(axis=(1, 2)))),
        )
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Lesion {lesion_id}",
            segmented_property_category=LESION_CATEGORY,
            segmented_property_type=LESION_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=reference.tracking_uid,
            tracking_id=reference.tracking_id,
            anatomic_regions=[BRAIN],
        )
        description.SegmentDescription = segment_description_text(record, alpha)
        descriptions.append(description)
        segments[lesion_id] = reference
    try:
        dataset = hd.seg.Segmentation(
            source_images=list(source_images),
            pixel_array=numbered,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="medsi",
            manufacturer_model_name="medsi",
            software_versions=__version__,
            device_serial_number=f"model {bundle_hash[:12]}",
            content_label="MEDSI_LESIONS",
            content_description="Lesions found by medsi (selective p in each description)",
            series_description="medsi lesions (DICOM-SEG)",
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise ExportError(
            f"highdicom refused the lesion segmentation ({type(e).__name__}: {e}); check that "
            "the source images are one valid single-frame series."
        ) from e
    return LesionSegmentation(dataset=dataset, segments=segments)
