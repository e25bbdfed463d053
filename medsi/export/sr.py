"""DICOM SR of the lesions: a TID 1500 measurement report with each lesion's p-values.

Built with :class:`highdicom.sr.Comprehensive3DSR` (PS3.3 A.35.13) around a
:class:`highdicom.sr.MeasurementReport` (PS3.16 TID 1500 "Measurement Report"):

- observer context: a device observer (TID 1004, DCM 121007 "Device") naming medsi and its
  version; no person observed anything;
- procedure reported: LN 24590-2 "MR Brain";
- one measurement group per lesion (TID 1411 "Volumetric ROI Measurements and Qualitative
  Evaluations") that references the lesion's DICOM-SEG segment (TrackingID ``"Lesion N"``
  and the segment's TrackingUID), with finding type SCT 52988006 "Lesion", finding site
  SCT 12738006 "Brain" and the algorithm identification; a lesion without a segment (no
  voxel on the acquired slices) gets a TID 1501 group without an image reference instead;
- one scan summary group (TID 1501, TrackingID ``"Scan summary"``): the number of lesions,
  the significance level alpha and, when there is no lesion, the finding (TID 1501 row
  DCM 121071 "Finding") SCT 373572006 "Clinical finding absent".

The numbers are those of ``report.json`` (:meth:`ScanAnalysis.lesion_records`), written as
double precision (FloatingPointValue beside the 16-character NumericValue). A number that
is None or not finite is left out rather than written as NaN; in particular the point
values of the selective p (full and component events) are written only when the selective
search decided (``p_method == "selective"``): with termination ``oc`` only their bounds are.

Codes per lesion group (``record key`` of ``report.json`` in brackets):

- SCT 118565006 "Volume", UCUM mm3, method DCM 126030 "Sum of segmented voxel method for
  volume" [``volume_mm3``];
- DCM 113071 "Z-score", UCUM 1 [``z``];
- DCM 121403 "Level of Significance" (qualitative evaluation) = SCT 386134007
  "Significant" or SCT 371928007 "Not significant": the decision at alpha on the
  Holm-adjusted p [``significant``];
- the private codes below, all UCUM 1 ("no units") except the voxel count.

Private coding scheme ``99MEDSI`` (declared in the SR's Coding Scheme Identification
Sequence; standard DICOM, SNOMED CT and UCUM have no codes for these p-value kinds):

============  =========================================================  ===============
Code value    Code meaning                                               report.json key
============  =========================================================  ===============
VOXELS        Lesion voxel count (UCUM {voxels})                         voxels
MEANDIFF      Mean intensity difference (test - reference)               mean_difference
STAT          Selective test statistic                                   statistic
STATSD        Null standard deviation of the test statistic              sigma
PFULL         Selective p-value, full event                              p_full
PFULLLOW      Selective p-value, full event, lower bound                 p_full_bounds[0]
PFULLHIGH     Selective p-value, full event, upper bound                 p_full_bounds[1]
PCOMP         Selective p-value, component event                         p_component
PCOMPLOW      Selective p-value, component event, lower bound            p_component_bounds[0]
PCOMPHIGH     Selective p-value, component event, upper bound            p_component_bounds[1]
POC           Over-conditioned p-value                                   p_oc
PNAIVE        Naive p-value (no selection adjustment)                    p_naive
PHOLM         Holm-adjusted p-value across the scan's lesions            p_holm
ALPHA         Significance level alpha of the decisions (summary group)  settings.alpha
============  =========================================================  ===============

Intensities are robust-standardised (DESIGN.md section 4), so differences, statistics and
their standard deviations have no unit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from pydicom.sr.coding import Code

from medsi import __version__
from medsi.errors import ExportError
from medsi.export.seg import BRAIN, LESION_CATEGORY, LESION_TYPE, LesionSegmentation

__all__ = [
    "SR_SERIES_NUMBER",
    "PRIVATE_SCHEME",
    "PRIVATE_CODES",
    "LesionMeasurement",
    "LESION_MEASUREMENTS",
    "SCAN_SUMMARY_ID",
    "build_measurement_report",
    "device_observer_uid",
]

SR_SERIES_NUMBER = 9002
"""SeriesNumber of the SR (after the SEG's)."""

PRIVATE_SCHEME = "99MEDSI"
"""Coding scheme designator of medsi's private codes (``99`` marks a private scheme)."""

SCAN_SUMMARY_ID = "Scan summary"
"""TrackingID of the scan-level measurement group."""


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


PRIVATE_CODES = {
    "VOXELS": _private("VOXELS", "Lesion voxel count"),
    "MEANDIFF": _private("MEANDIFF", "Mean intensity difference (test - reference)"),
    "STAT": _private("STAT", "Selective test statistic"),
    "STATSD": _private("STATSD", "Null standard deviation of the test statistic"),
    "PFULL": _private("PFULL", "Selective p-value, full event"),
    "PFULLLOW": _private("PFULLLOW", "Selective p-value, full event, lower bound"),
    "PFULLHIGH": _private("PFULLHIGH", "Selective p-value, full event, upper bound"),
    "PCOMP": _private("PCOMP", "Selective p-value, component event"),
    "PCOMPLOW": _private("PCOMPLOW", "Selective p-value, component event, lower bound"),
    "PCOMPHIGH": _private("PCOMPHIGH", "Selective p-value, component event, upper bound"),
    "POC": _private("POC", "Over-conditioned p-value"),
    "PNAIVE": _private("PNAIVE", "Naive p-value (no selection adjustment)"),
    "PHOLM": _private("PHOLM", "Holm-adjusted p-value across the scan's lesions"),
    "ALPHA": _private("ALPHA", "Significance level alpha of the decisions"),
}
"""medsi's private codes by code value (see the module docstring's table)."""

# Standard codes (SNOMED CT, DICOM, UCUM, LOINC)
VOLUME = Code("118565006", "SCT", "Volume")
Z_SCORE = Code("113071", "DCM", "Z-score")
VOLUME_METHOD = Code("126030", "DCM", "Sum of segmented voxel method for volume")
LEVEL_OF_SIGNIFICANCE = Code("121403", "DCM", "Level of Significance")
SIGNIFICANT = Code("386134007", "SCT", "Significant")
NOT_SIGNIFICANT = Code("371928007", "SCT", "Not significant")
NUMBER_OF_LESIONS = Code("246206008", "SCT", "Number of lesions")
FINDING_ABSENT = Code("373572006", "SCT", "Clinical finding absent")
MR_BRAIN = Code("24590-2", "LN", "MR Brain")
DEVICE = Code("121007", "DCM", "Device")
CUBIC_MILLIMETER = Code("mm3", "UCUM", "cubic millimeter")
NO_UNITS = Code("1", "UCUM", "no units")
VOXELS_UNIT = Code("{voxels}", "UCUM", "voxels")
LESIONS_UNIT = Code("{lesions}", "UCUM", "lesions")


@dataclasses.dataclass(frozen=True)
class LesionMeasurement:
    """One numeric measurement of a lesion group and where its value comes from.

    Attributes
    ----------
    key
        The ``report.json`` lesion record key.
    index
        Element of a ``[lower, upper]`` pair (bounds), or None for a plain number.
    name, unit
        The concept name and UCUM unit written.
    method
        Optional measurement method (TID 300 "Measurement Method").
    needs_selective
        Written only when the record's ``p_method`` is ``"selective"`` (point values of
        the selective p, which termination ``oc`` leaves undetermined).
    """

    key: str
    index: int | None
    name: Code
    unit: Code
    method: Code | None = None
    needs_selective: bool = False

    def value(self, record: dict) -> float | int | None:
        """The value to write for a lesion record, or None to leave it out."""
        if self.needs_selective and record.get("p_method") != "selective":
            return None
        value = record.get(self.key)
        if value is not None and self.index is not None:
            value = value[self.index]
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        value = float(value)
        return value if math.isfinite(value) else None


LESION_MEASUREMENTS = (
    LesionMeasurement("volume_mm3", None, VOLUME, CUBIC_MILLIMETER, method=VOLUME_METHOD),
    LesionMeasurement("voxels", None, PRIVATE_CODES["VOXELS"], VOXELS_UNIT),
    LesionMeasurement("mean_difference", None, PRIVATE_CODES["MEANDIFF"], NO_UNITS),
    LesionMeasurement("statistic", None, PRIVATE_CODES["STAT"], NO_UNITS),
    LesionMeasurement("sigma", None, PRIVATE_CODES["STATSD"], NO_UNITS),
    LesionMeasurement("z", None, Z_SCORE, NO_UNITS),
    LesionMeasurement("p_full", None, PRIVATE_CODES["PFULL"], NO_UNITS, needs_selective=True),
    LesionMeasurement("p_full_bounds", 0, PRIVATE_CODES["PFULLLOW"], NO_UNITS),
    LesionMeasurement("p_full_bounds", 1, PRIVATE_CODES["PFULLHIGH"], NO_UNITS),
    LesionMeasurement("p_component", None, PRIVATE_CODES["PCOMP"], NO_UNITS, needs_selective=True),
    LesionMeasurement("p_component_bounds", 0, PRIVATE_CODES["PCOMPLOW"], NO_UNITS),
    LesionMeasurement("p_component_bounds", 1, PRIVATE_CODES["PCOMPHIGH"], NO_UNITS),
    LesionMeasurement("p_oc", None, PRIVATE_CODES["POC"], NO_UNITS),
    LesionMeasurement("p_naive", None, PRIVATE_CODES["PNAIVE"], NO_UNITS),
    LesionMeasurement("p_holm", None, PRIVATE_CODES["PHOLM"], NO_UNITS),
)
"""The numeric measurements of each lesion group, in the order they are written."""


def device_observer_uid() -> str:
    """A UID that names this medsi version as an observing device (same on every run)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medsi", __version__])


def _coding_scheme():
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="medsi private codes",
        version=__version__,
        responsible_organization="medsi",
    )


def _observation_context():
    import highdicom as hd

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid(),
        name="medsi",
        manufacturer_name="medsi",
        model_name=f"medsi {__version__}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=DEVICE, observer_identifying_attributes=device
        )
    )


def _measurements(record: dict) -> list[Any]:
    import highdicom as hd

    written = []
    for spec in LESION_MEASUREMENTS:
        value = spec.value(record)
        if value is None:
            continue
        written.append(
            hd.sr.Measurement(name=spec.name, value=value, unit=spec.unit, method=spec.method)
        )
    return written


def _decision(record: dict) -> Any:
    import highdicom as hd

    return hd.sr.QualitativeEvaluation(
        name=LEVEL_OF_SIGNIFICANCE,
        value=SIGNIFICANT if record["significant"] else NOT_SIGNIFICANT,
    )


def _referenced_segment(segmentation: LesionSegmentation, segment, evidence) -> Any:
    """The segment and the source images it lies on (TID 1411 row "Referenced Segment")."""
    import highdicom as hd

    # Built from what medsi knows rather than by reading the SEG back, which needs
    # per-frame segment identification that a one-segment SEG keeps in its shared groups.
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.dataset.SOPClassUID,
        sop_instance_uid=segmentation.dataset.SOPInstanceUID,
        segment_number=segment.segment_number,
        source_images=[
            hd.sr.SourceImageForSegmentation(evidence[k].SOPClassUID, evidence[k].SOPInstanceUID)
            for k in segment.source_slices
        ],
    )


def _lesion_group(
    record: dict, segmentation: LesionSegmentation | None, evidence, algorithm
) -> Any:
    import highdicom as hd
    from pydicom.uid import generate_uid

    lesion_id = int(record["id"])
    segment = None if segmentation is None else segmentation.segments.get(lesion_id)
    common = {
        "finding_type": LESION_TYPE,
        "finding_category": LESION_CATEGORY,
        "finding_sites": [hd.sr.FindingSite(BRAIN)],
        "algorithm_id": algorithm,
        "measurements": _measurements(record),
        "qualitative_evaluations": [_decision(record)],
    }
    if segment is None:  # no voxel on the source grid: nothing to point at
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier=f"Lesion {lesion_id}"
            ),
            **common,
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=segment.tracking_uid, identifier=segment.tracking_id
        ),
        referenced_segment=_referenced_segment(segmentation, segment, evidence),
        **common,
    )


def _summary_group(records: Sequence[dict], alpha: float, algorithm) -> Any:
    import highdicom as hd
    from pydicom.uid import generate_uid

    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=SCAN_SUMMARY_ID
        ),
        # TID 1501 row "Finding": says in codes that nothing was found
        finding_type=None if records else FINDING_ABSENT,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=NUMBER_OF_LESIONS, value=len(records), unit=LESIONS_UNIT),
            hd.sr.Measurement(name=PRIVATE_CODES["ALPHA"], value=float(alpha), unit=NO_UNITS),
        ],
    )


def build_measurement_report(
    report: dict,
    evidence: Sequence[Any],
    segmentation: LesionSegmentation | None,
    *,
    series_number: int = SR_SERIES_NUMBER,
) -> Any:
    """Build the Comprehensive 3D SR (TID 1500) of a scan's lesions.

    Parameters
    ----------
    report
        The scan's report (:meth:`ScanAnalysis.report`): its ``lesions``, ``settings`` and
        ``model`` are used, so the SR and ``report.json`` hold the same numbers.
    evidence
        The source series' datasets (patient and study are taken from them), in Z order.
    segmentation
        The DICOM-SEG of the lesions, or None when none was written (no lesion voxel).
    series_number
        SeriesNumber of the SR.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Complete, unverified (made by a device): no person has checked it.

    Raises
    ------
    ExportError
        If there is no evidence, the SEG misses a lesion that has voxels, or highdicom
        refuses the content.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    if not evidence:
        raise ExportError(
            '"evidence" must hold the source images the report is about, got none; pass the '
            "scan's DICOM datasets (or the converted series of a NIfTI input)."
        )
    records = list(report["lesions"])
    settings, bundle_hash = report["settings"], report["model"]["content_hash"]
    for record in records:
        has_segment = segmentation is not None and int(record["id"]) in segmentation.segments
        if record["voxels"] and not has_segment:
            raise ExportError(
                f"lesion {record['id']} has {record['voxels']} voxel(s) but no segment in the "
                "SEG; build the SEG and the SR from the same analysis."
            )
    algorithm = hd.sr.AlgorithmIdentification(
        name="medsi",
        version=f"{__version__} model {bundle_hash[:12]}",
        parameters=[f"model_content_hash={bundle_hash}"]
        + [f"{key}={value}" for key, value in settings.items()],
    )
    try:
        groups = [_lesion_group(r, segmentation, evidence, algorithm) for r in records]
        groups.append(_summary_group(records, settings["alpha"], algorithm))
        content = hd.sr.MeasurementReport(
            observation_context=_observation_context(),
            procedure_reported=MR_BRAIN,
            imaging_measurements=groups,
        )
        sources = list(evidence)
        if segmentation is not None:
            sources.append(segmentation.dataset)
        return hd.sr.Comprehensive3DSR(
            evidence=sources,
            content=content,
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="medsi",
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description="medsi lesion measurements (TID 1500)",
            coding_schemes=[_coding_scheme()],
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise ExportError(
            f"highdicom refused the measurement report ({type(e).__name__}: {e}); check that "
            "the evidence is one series of one patient and the SEG was built from it."
        ) from e
