import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medsi.cli.main import main
from medsi.data import LesionConfig, PhantomConfig, make_phantom, save_nifti
from medsi.pipeline.inference import find_lesions, holm_adjust
from medsi.pipeline.run import analyse_scan, format_lesion_table, write_outputs
from medsi.pipeline.settings import RunSettings

EXAMPLE = "medsi/assets/examples/S0_10slices.nii.gz"


@pytest.fixture(scope="module")
def lesion_phantom(tmp_path_factory):
    config = PhantomConfig(
        spacing_mm=2.0, lesions=LesionConfig(count=2, radius_mm=(6, 9), contrast=1.5)
    )
    phantom = make_phantom(123, config)
    path = tmp_path_factory.mktemp("scan") / "flair.nii.gz"
    save_nifti(phantom.image, phantom.affine, path)
    return phantom, path


def test_holm_is_monotone_and_controls_the_family():
    p = np.array([0.001, 0.02, 0.04, 0.5])
    adjusted = holm_adjust(p)
    assert np.all(adjusted >= p) and adjusted.tolist() == pytest.approx([0.004, 0.06, 0.08, 0.5])
    assert holm_adjust([]).size == 0


def test_lesions_are_3d_components_largest_first():
    s = np.zeros((3, 6, 6), bool)
    s[0:3, 1:3, 1:3] = True  # one lesion across three planes
    s[1, 5, 5] = True
    labels = find_lesions(s, "lesion")
    assert labels.max() == 2 and (labels == 1).sum() == 12
    assert find_lesions(s, "slice").max() == 4


def _few_lesions_threshold(bundle, path, quantile=0.9995):
    """A lambda that selects only the brightest few voxels of this scan (keeps tests short)."""
    from medsi.pipeline.preprocess import prepare_scan
    from medsi.pipeline.run import grid_of_bundle
    from medsi.si import LineEvaluator

    scan = prepare_scan(path, grid_of_bundle(bundle))
    scores = LineEvaluator(bundle.score(), 0.0).score_map(scan.slices)
    return float(np.quantile(scores[scan.brain], quantile))


def test_a_lesion_phantom_gives_a_report_and_a_native_label_map(
    tiny_mri_bundle, lesion_phantom, tmp_path
):
    phantom, path = lesion_phantom
    threshold = _few_lesions_threshold(tiny_mri_bundle, path)
    settings = RunSettings(threshold=threshold)
    analysis = analyse_scan(path, tiny_mri_bundle, settings, progress=False)
    files = write_outputs(analysis, tmp_path / "out")
    report = json.loads(files["report"].read_text())
    labels = nib.load(files["labels"])
    assert labels.shape == phantom.image.shape
    assert np.allclose(labels.affine, phantom.affine, atol=1e-4)
    assert report["input"]["shape"] == list(phantom.image.shape)
    assert report["model"]["content_hash"] == tiny_mri_bundle.content_hash
    assert report["html_report"] == "report.html" and files["html"].is_file()
    assert files["report"].parent / report["label_map"] == files["labels"]
    assert len(report["lesions"]) == int(np.asarray(labels.dataobj).max())
    for lesion in report["lesions"]:
        lo, hi = lesion["p_selective_bounds"]
        assert 0 <= lo <= lesion["p_selective"] <= hi <= 1
        assert lesion["p_decisive"] == hi and lesion["p_method"] == "selective"
        assert lesion["p_holm"] >= hi - 1e-12
        assert lesion["significant"] == (lesion["p_holm"] < 0.05)
    assert 1 <= len(report["lesions"]) <= 30
    assert any("registered the template" in n for n in report["notes"])
    assert "p selective" in format_lesion_table(analysis).splitlines()[0]


def test_no_findings_is_a_normal_result(tiny_mri_bundle, lesion_phantom, tmp_path):
    _, path = lesion_phantom
    analysis = analyse_scan(path, tiny_mri_bundle, RunSettings(threshold=1e6), progress=False)
    report = analysis.report()
    assert report["lesions"] == [] and report["summary"].startswith("no findings")
    files = write_outputs(analysis, tmp_path / "none")
    assert not np.asarray(nib.load(files["labels"]).dataobj).any()


def test_cli_runs_on_the_bundled_real_scan(tiny_mri_bundle, tmp_path):
    out = tmp_path / "s0"
    result = CliRunner().invoke(
        main,
        ["run", EXAMPLE, "--model", str(tiny_mri_bundle.path), "-o", str(out), "--quiet",
         "--threshold", "1e6"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "No findings" in result.output
    assert f"Wrote {out / 'lesions.nii.gz'}" in result.output
    assert f"{out / 'report.html'}." in result.output and (out / "report.html").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["shape"] == [128, 128, 10]
    assert report["mask"]


def test_cli_bad_input_is_one_line_and_exit_1(tiny_mri_bundle, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    result = CliRunner().invoke(
        main, ["run", str(bad), "--model", str(tiny_mri_bundle.path), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "broken.nii.gz" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o" / "report.json").exists()


def test_user_mask_and_registered_input_are_used_and_reported(
    tiny_mri_bundle, lesion_phantom, tmp_path
):
    phantom, path = lesion_phantom
    mask_path = tmp_path / "brain.nii.gz"
    save_nifti(phantom.brain_mask, phantom.affine, mask_path)
    analysis = analyse_scan(
        path,
        tiny_mri_bundle,
        RunSettings(threshold=1e6),
        mask=mask_path,
        registered=True,
        progress=False,
    )
    report = analysis.report()
    assert report["registration"]["method"] == "identity"
    assert report["mask"].startswith("user mask brain.nii.gz")
    assert any(n.startswith("no registration") for n in report["notes"])
    wrong = tmp_path / "wrong.nii.gz"
    save_nifti(phantom.brain_mask[:-2], phantom.affine, wrong)
    from medsi.errors import InputDataError

    with pytest.raises(InputDataError, match="must be on the scan's voxel grid"):
        analyse_scan(path, tiny_mri_bundle, RunSettings(), mask=wrong, progress=False)


def test_demo_scores_findings_against_the_truth(tiny_mri_bundle, tmp_path):
    from medsi.pipeline.demo import match_lesions

    out = tmp_path / "demo"
    result = CliRunner().invoke(
        main,
        ["demo", "-o", str(out), "--model", str(tiny_mri_bundle.path), "--lesions", "2",
         "--termination", "oc", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "inserted lesion(s) detected" in result.output
    rows = json.loads((out / "demo.json").read_text())
    assert [r["truth_id"] for r in rows] == [1, 2]
    assert (out / "phantom" / "demo_lesions.nii.gz").is_file() and (out / "report.json").is_file()
    # the default compares with a lesion-free scan of the same subject
    baseline = out / "phantom" / "demo_baseline_flair.nii.gz"
    assert f"Reference: the reference scan {baseline} (--reference)" in result.output
    follow_up = np.asarray(nib.load(out / "phantom" / "demo_flair.nii.gz").dataobj)
    earlier = np.asarray(nib.load(baseline).dataobj)
    lesion = np.asarray(nib.load(out / "phantom" / "demo_lesions.nii.gz").dataobj) > 0
    assert np.asarray(nib.load(out / "phantom" / "demo_baseline_lesions.nii.gz").dataobj).max() == 0
    assert follow_up[lesion].mean() > 1.2 * earlier[lesion].mean()  # new lesions, same head
    assert np.corrcoef(follow_up[~lesion].ravel(), earlier[~lesion].ravel())[0, 1] > 0.99
    # match_lesions on a hand-made case
    truth = np.zeros((4, 4, 4), np.int16)
    truth[0, 0, 0] = 1
    truth[3, 3, 3] = 2

    class _Fake:
        native_labels = np.zeros((4, 4, 4), np.int16)

        def lesion_records(self):
            return [{"id": 1, "p_holm": 0.01, "significant": True}]

    _Fake.native_labels[0, 0, 0] = 1
    matched = match_lesions(truth, _Fake())
    assert matched[0]["detected"] and matched[0]["found"] == [1]
    assert not matched[1]["detected"] and matched[1]["best_p_holm"] is None


def test_nifti_and_dicom_copies_give_the_same_lesions(tiny_mri_bundle, lesion_phantom, tmp_path):
    from medsi.transforms.io import write_dicom_series

    phantom, path = lesion_phantom
    folder = tmp_path / "dicom"
    write_dicom_series(phantom.image, phantom.affine, folder)
    threshold = _few_lesions_threshold(tiny_mri_bundle, path)
    settings = RunSettings(threshold=threshold, termination="oc")
    results = [
        analyse_scan(source, tiny_mri_bundle, settings, progress=False) for source in (path, folder)
    ]
    assert results[1].scan.meta["source_format"] == "dicom"

    def lesions_in_world(analysis):
        # size on the model grid (native counts may differ where a native voxel centre
        # lies halfway between two grid planes) and centroid on the native grid
        return sorted(
            (r["model_voxels"], tuple(np.round(r["centroid_ras_mm"], 1)))
            for r in analysis.lesion_records()
            if r["voxels"]
        )

    nifti, dicom = (lesions_in_world(a) for a in results)
    assert len(nifti) >= 1
    # int16 storage in DICOM may flip a voxel sitting on the threshold: every lesion of a few
    # voxels must be found in both, with its size and centroid (within a 2 mm voxel)
    for ours, theirs in ((nifti, dicom), (dicom, nifti)):
        for voxels, centre in ours:
            if voxels < 4:
                continue
            assert any(
                abs(v - voxels) <= max(1, 0.1 * voxels) and np.allclose(c, centre, atol=2.0)
                for v, c in theirs
            ), (voxels, centre, theirs)


def test_a_reference_scan_replaces_the_reference_bank(tiny_mri_bundle, lesion_phantom, tmp_path):
    phantom, path = lesion_phantom
    # the same anatomy rendered with independent noise: a follow-up scan of the same subject
    again = make_phantom(123, PhantomConfig(spacing_mm=2.0), noise_seed=7)
    reference = tmp_path / "earlier.nii.gz"
    save_nifti(again.image, again.affine, reference)
    threshold = _few_lesions_threshold(tiny_mri_bundle, path)
    analysis = analyse_scan(
        path,
        tiny_mri_bundle,
        RunSettings(threshold=threshold, termination="oc"),
        reference=reference,
        progress=False,
    )
    report = analysis.report()
    assert report["reference"].startswith(f"the reference scan {reference}")
    assert len(report["lesions"]) >= 1
    # the noise covariance comes from the pair: half the variance of their difference
    from medsi.pipeline.preprocess import prepare_scan
    from medsi.pipeline.run import _pair_noise_covariance, grid_of_bundle

    grid = grid_of_bundle(tiny_mri_bundle)
    x, r = prepare_scan(path, grid), prepare_scan(reference, grid)
    noise = _pair_noise_covariance(x, r, tiny_mri_bundle)
    both = x.brain & r.brain
    half = 0.5 * np.mean((x.slices - r.slices)[both] ** 2)
    point = np.zeros(grid.shape[:2])
    point[32, 32] = 1.0
    assert noise.quadratic(point) == pytest.approx(half, rel=0.05)
    for lesion in report["lesions"]:
        assert lesion["p_method"] == "oc" and 0 <= lesion["p_oc"] <= 1
