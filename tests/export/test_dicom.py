"""DICOM outputs of a scan: converted source series, DICOM-SEG and TID 1500 SR.

Two real analyses (a lesion phantom as NIfTI and as a DICOM copy) are made once; the cases
with one lesion, none, or a lesion without native voxels are derived from them by keeping a
subset of the lesions. Every object is checked with dciodvfy and read back.
"""

import dataclasses
import doctest
import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import medsi.export.seg
import medsi.export.sr
from medsi.data import LesionConfig, PhantomConfig, make_phantom, save_nifti
from medsi.errors import ExportError
from medsi.export.dicom import write_dicom_outputs
from medsi.export.seg import build_segmentation, label_frames, segment_description_text
from medsi.export.source_series import PLACEHOLDER_PATIENT_ID, PLACEHOLDER_PATIENT_NAME
from medsi.export.sr import (
    FINDING_ABSENT,
    LESION_MEASUREMENTS,
    LEVEL_OF_SIGNIFICANCE,
    NOT_SIGNIFICANT,
    NUMBER_OF_LESIONS,
    PRIVATE_CODES,
    PRIVATE_SCHEME,
    SCAN_SUMMARY_ID,
    SIGNIFICANT,
    build_measurement_report,
)
from medsi.pipeline.inference import holm_adjust
from medsi.pipeline.run import analyse_scan, write_outputs
from medsi.pipeline.settings import RunSettings
from medsi.transforms.io import load_scan, write_dicom_series
from tests.export.conftest import strict_pydicom
from tests.pipeline.test_run import _few_lesions_threshold

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """A 2 mm lesion phantom as NIfTI and as a DICOM series of the same voxels."""
    config = PhantomConfig(
        spacing_mm=2.0, lesions=LesionConfig(count=2, radius_mm=(6, 9), contrast=1.5)
    )
    phantom = make_phantom(123, config)
    folder = tmp_path_factory.mktemp("phantom")
    nifti = folder / "flair.nii.gz"
    save_nifti(phantom.image, phantom.affine, nifti)
    dicom = folder / "dicom"
    attributes = {"PatientName": "Phantom^One", "PatientID": "PH-123", "BodyPartExamined": "BRAIN"}
    write_dicom_series(load_scan(nifti).array, phantom.affine, dicom, attributes=attributes)
    return nifti, dicom


@pytest.fixture(scope="module")
def analyses(tiny_mri_bundle, phantom_files):
    """Real analyses of the NIfTI and the DICOM copy, selecting a few lesions each."""
    nifti, dicom = phantom_files
    threshold = _few_lesions_threshold(tiny_mri_bundle, nifti)
    settings = RunSettings(threshold=threshold, termination="oc")
    found = {
        name: analyse_scan(path, tiny_mri_bundle, settings, progress=False)
        for name, path in (("nifti", nifti), ("dicom", dicom))
    }
    # a selective search (stopped early by its budget) gives point values of the selective p
    searched = dataclasses.replace(settings, termination="decision", max_evaluations=24)
    found["nifti-searched"] = analyse_scan(nifti, tiny_mri_bundle, searched, progress=False)
    for analysis in found.values():
        assert len(analysis.lesions) >= 2, "the phantom must give several lesions"
    return found


def keep_lesions(analysis, ids, drop_voxels_of=()):
    """The analysis restricted to the lesions ``ids`` (Holm recomputed over them).

    ``drop_voxels_of``: lesions kept in the report whose native voxels are erased, as for a
    lesion lying between the acquired slices of a sparse scan.
    """
    lesions = [les for les in analysis.lesions if les.lesion_id in ids]
    on_map = [i for i in ids if i not in drop_voxels_of]
    labels = np.where(np.isin(analysis.native_labels, on_map), analysis.native_labels, 0)
    return dataclasses.replace(
        analysis,
        lesions=lesions,
        native_labels=labels.astype(np.int16),
        holm=holm_adjust([les.p_decisive for les in lesions]),
    )


def _all(analysis):
    return analysis


def _one(analysis):
    return keep_lesions(analysis, [1])


def _none(analysis):
    return keep_lesions(analysis, [])


def _one_without_voxels(analysis):
    return keep_lesions(analysis, [1, 2], drop_voxels_of=[2])


CASES = {
    "nifti-several": ("nifti", _all, {}),
    "nifti-one": ("nifti", _one, {}),
    "nifti-searched": ("nifti-searched", _all, {}),
    "nifti-none": ("nifti", _none, {"patient_name": "Doe^Jane", "patient_id": "P-42"}),
    "dicom-several": ("dicom", _all, {}),
    "dicom-one": ("dicom", _one, {"patient_id": "PH-123"}),
    "dicom-none": ("dicom", _none, {}),
    "dicom-lesion-without-voxels": ("dicom", _one_without_voxels, {}),
}


@pytest.fixture(scope="module")
def exported(analyses, tmp_path_factory):
    """Each case's analysis, its report.json as written and its DICOM outputs."""
    results = {}
    with strict_pydicom():
        for case, (source, derive, options) in CASES.items():
            analysis = derive(analyses[source])
            files = write_outputs(analysis, tmp_path_factory.mktemp(case), **options)
            paths = {k: files[f"dicom_{k}"] for k in ("seg", "sr", "source_series")}
            report = json.loads(files["report"].read_text())
            results[case] = (analysis, report, paths)
    return results


def source_uids(analysis, paths):
    """SOP Instance UIDs of the SEG's source images, in Z order."""
    if paths["source_series"] is None:
        return list(analysis.scan.meta["sop_instance_uids"])
    files = sorted(paths["source_series"].glob("slice_*.dcm"))
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def lesion_groups(sr):
    """SR measurement groups of the lesions (with or without a segment) by TrackingID."""
    content = sr.content
    groups = list(content.get_volumetric_roi_measurement_groups())
    groups += list(content.get_image_measurement_groups())
    return {g.tracking_identifier: g for g in groups}


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize("case", list(CASES))
def test_every_object_passes_dciodvfy(exported, dciodvfy, case):
    _, report, paths = exported[case]
    files = [paths["sr"]]
    if paths["seg"] is not None:
        files.append(paths["seg"])
    if paths["source_series"] is not None:
        files += sorted(paths["source_series"].glob("*.dcm"))
    for path in files:
        dciodvfy(path)
    assert (paths["seg"] is None) == (not any(r["voxels"] for r in report["lesions"]))


# ----------------------------------------------------------------------------- SEG


@pytest.mark.parametrize("case", [c for c in CASES if not c.endswith("none")])
def test_seg_segments_are_exactly_the_lesion_masks(exported, case, strict_dicom):
    analysis, report, paths = exported[case]
    seg = hd.seg.segread(paths["seg"])
    uids = source_uids(analysis, paths)
    with_voxels = [r for r in report["lesions"] if r["voxels"]]
    assert list(seg.segment_numbers) == list(range(1, len(with_voxels) + 1))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=False,
        assert_missing_frames_are_empty=True,
    )
    assert pixels.shape[:3] == label_frames(analysis.native_labels).shape
    for number, record in enumerate(with_voxels, start=1):
        expected = label_frames(analysis.native_labels == record["id"])
        np.testing.assert_array_equal(pixels[..., number - 1] > 0, expected)
        description = seg.get_segment_description(number)
        assert description.segment_label == f"Lesion {record['id']}"
        assert description.tracking_id == f"Lesion {record['id']}"
        assert description.SegmentDescription == segment_description_text(
            record, analysis.settings.alpha
        )
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "medsi"
        assert analysis.bundle_hash[:12] in algorithm.AlgorithmVersion
        assert analysis.bundle_hash in algorithm.AlgorithmParameters
        assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert seg.SegmentationType == "BINARY"
    source = pydicom.dcmread(
        (paths["source_series"] or analysis.scan.path).glob("*.dcm").__next__(),
        stop_before_pixels=True,
    )
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} <= set(
        uids
    )


def test_no_lesion_voxel_means_no_seg(exported):
    for case in ("nifti-none", "dicom-none"):
        _, _, paths = exported[case]
        assert paths["seg"] is None and not paths["sr"].parent.joinpath("lesions_seg.dcm").exists()


# ----------------------------------------------------------------------------- SR


@pytest.mark.parametrize("case", list(CASES))
def test_sr_holds_the_numbers_of_report_json(exported, case, strict_dicom):
    analysis, report, paths = exported[case]
    sr = hd.sr.srread(paths["sr"])
    groups = lesion_groups(sr)
    seg = None if paths["seg"] is None else hd.seg.segread(paths["seg"])
    uids = source_uids(analysis, paths)
    for record in report["lesions"]:
        group = groups[f"Lesion {record['id']}"]
        for spec in LESION_MEASUREMENTS:
            written = group.get_measurements(name=spec.name)
            expected = spec.value(record)
            if expected is None:
                assert written == [], (record["id"], spec.name.meaning)
            else:
                assert len(written) == 1 and written[0].value == expected, spec.name.meaning
                assert written[0].unit == spec.unit
        (decision,) = group.get_qualitative_evaluations(name=LEVEL_OF_SIGNIFICANCE)
        assert decision.value == (SIGNIFICANT if record["significant"] else NOT_SIGNIFICANT)
        if record["voxels"]:  # the group points at the lesion's segment
            assert group.referenced_segment is not None
            reference = group.referenced_segment
            (number,) = reference.referenced_segment_numbers
            assert seg.get_segment_description(number).tracking_uid == group.tracking_uid
            assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
            # it names the source images the lesion lies on
            named = {
                i.referenced_sop_instance_uid for i in reference.source_images_for_segmentation
            }
            uids = source_uids(analysis, paths)
            assert named == {uids[k] for k in record["native_slices"]}
    # with termination oc there is no selective point value, only its bounds
    for record in report["lesions"]:
        points = [
            groups[f"Lesion {record['id']}"].get_measurements(name=PRIVATE_CODES[code])
            for code in ("PFULL", "PCOMP")
        ]
        if record["p_method"] == "oc":
            assert points == [[], []]
        else:
            assert [m.value for (m,) in points] == [record["p_full"], record["p_component"]]
    if case == "nifti-searched":
        assert all(r["p_method"] == "selective" for r in report["lesions"])
    summary = groups[SCAN_SUMMARY_ID]
    (count,) = summary.get_measurements(name=NUMBER_OF_LESIONS)
    (alpha,) = summary.get_measurements(name=PRIVATE_CODES["ALPHA"])
    assert count.value == len(report["lesions"]) and alpha.value == report["settings"]["alpha"]
    assert summary.finding_type == (None if report["lesions"] else FINDING_ABSENT)
    assert len(groups) == len(report["lesions"]) + 1


@pytest.mark.parametrize("case", ["nifti-several", "dicom-none"])
def test_sr_is_made_by_a_device_with_declared_private_codes(exported, case, strict_dicom):
    analysis, _, paths = exported[case]
    sr = hd.sr.srread(paths["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    contexts = sr.content.get_observer_contexts()
    assert [c.observer_type.value for c in contexts] == ["121007"]  # DCM Device only
    assert contexts[0].observer_identifying_attributes.name == "medsi"
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert PRIVATE_SCHEME in schemes
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == sr.StudyInstanceUID


# ----------------------------------------------------------------------------- source series


def test_converted_series_reproduces_the_nifti(exported, phantom_files, strict_dicom):
    analysis, _, paths = exported["nifti-several"]
    nifti, _ = phantom_files
    original = nib.load(nifti)
    voxels = original.get_fdata(dtype=np.float32)
    folder = paths["source_series"]
    first = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    half_step = float(first.RescaleSlope) / 2 + 1e-5
    assert (
        first.PatientName == PLACEHOLDER_PATIENT_NAME and first.PatientID == PLACEHOLDER_PATIENT_ID
    )
    assert first.FrameOfReferenceUID and first.SOPInstanceUID != first.SeriesInstanceUID
    # medsi's own loader
    scan = load_scan(folder)
    assert np.abs(scan.array - voxels).max() <= half_step
    np.testing.assert_allclose(scan.affine, original.affine, atol=1e-4)
    # SimpleITK (GDCM) on its own
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    assert np.abs(sitk.GetArrayFromImage(image).T - voxels).max() <= half_step
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.array(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ affine_lps, original.affine, atol=1e-4)


def test_identity_of_a_nifti_input_comes_from_the_arguments(exported):
    _, _, paths = exported["nifti-none"]
    for path in (sorted(paths["source_series"].glob("*.dcm"))[0], paths["sr"]):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (str(ds.PatientName), ds.PatientID) == ("Doe^Jane", "P-42"), path.name


def test_a_dicom_input_keeps_its_patient_and_gets_no_converted_series(exported):
    _, _, paths = exported["dicom-several"]
    assert paths["source_series"] is None
    for path in (paths["seg"], paths["sr"]):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (str(ds.PatientName), ds.PatientID) == ("Phantom^One", "PH-123")


# ----------------------------------------------------------------------------- errors


def _source_of(analysis):
    files = analysis.scan.meta["dicom_files"]
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def test_errors_say_what_cannot_be_written(analyses, tmp_path):
    dicom = analyses["dicom"]
    shifted = dataclasses.replace(dicom, native_labels=dicom.native_labels[:-1])
    with pytest.raises(ExportError, match="must lie on the source image grid"):
        write_dicom_outputs(shifted, tmp_path / "grid")
    with pytest.raises(ExportError, match="comes from its files"):
        write_dicom_outputs(dicom, tmp_path / "who", patient_id="SOMEONE-ELSE")
    report = dicom.report()
    foreign = np.where(dicom.native_labels > 0, 99, 0)
    with pytest.raises(ExportError, match="no lesion record has"):
        build_segmentation(
            _source_of(dicom),
            foreign,
            report["lesions"],
            alpha=0.05,
            bundle_hash=dicom.bundle_hash,
            settings=report["settings"],
        )
    with pytest.raises(ExportError, match="must hold the source images"):
        build_measurement_report(report, [], None)
    with pytest.raises(ExportError, match="no segment in the SEG"):
        build_measurement_report(report, _source_of(dicom), None)
    other = dataclasses.replace(
        dicom, scan=dataclasses.replace(dicom.scan, meta={"source_format": "analyze"})
    )
    with pytest.raises(ExportError, match='must be "nifti" or "dicom"'):
        write_dicom_outputs(other, tmp_path / "format")
    assert not (tmp_path / "grid" / "lesions_sr.dcm").exists()  # nothing half-written


def test_nifti_errors(analyses, tmp_path):
    nifti = analyses["nifti"]
    # a re-run replaces the converted series of an earlier run whole, never mixing the two
    (tmp_path / "full" / "source_series").mkdir(parents=True)
    (tmp_path / "full" / "source_series" / "old.dcm").write_bytes(b"x")
    written = write_dicom_outputs(nifti, tmp_path / "full")
    names = sorted(p.name for p in written["source_series"].iterdir())
    assert "old.dcm" not in names and len(names) == nifti.scan.native_shape[2]
    assert sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.startswith(".")) == []
    with pytest.raises(ExportError, match="cannot be converted to a DICOM MR series"):
        write_dicom_outputs(nifti, tmp_path / "long-id", patient_id="X" * 70)
    small = tmp_path / "small.nii.gz"
    save_nifti(np.zeros((8, 8, 8), np.float32), np.eye(4), small)
    moved = dataclasses.replace(nifti, scan=dataclasses.replace(nifti.scan, path=small))
    with pytest.raises(ExportError, match="changed since it was analysed"):
        write_dicom_outputs(moved, tmp_path / "moved")
    from medsi.export.source_series import source_series_datasets

    with pytest.raises(ExportError, match="NIfTI inputs only"):
        source_series_datasets(analyses["dicom"].scan)


def test_descriptions_fit_a_dicom_lo_value():
    record = {"p_selective": 1.2345e-7, "p_oc": 0.5, "p_holm": 9.87e-6, "significant": False}
    for alpha in (0.05, 0.0123456789):
        assert len(segment_description_text(record, alpha)) <= 64


@pytest.mark.parametrize("module", [medsi.export.seg, medsi.export.sr], ids=["seg", "sr"])
def test_docstring_examples_run(module):
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_a_long_file_name_still_gives_a_valid_series_description():
    from medsi.export.source_series import _series_description

    text = _series_description("x" * 200 + ".nii.gz")
    assert len(text) <= 64 and text.endswith(
        " converted by medsi " + __import__("medsi").__version__
    )
    assert _series_description("flair.nii.gz").startswith("flair.nii.gz converted")
