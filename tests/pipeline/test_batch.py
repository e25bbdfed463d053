"""``medsi batch`` over a real archive: NIfTI and DICOM, a corrupt file, a duplicate series,
a series description that tries to escape the output folder; local processes and real Dask."""

import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from medsi.cli.main import main
from medsi.data import LesionConfig, PhantomConfig, make_phantom, save_nifti
from medsi.errors import ConfigError, InputDataError
from medsi.pipeline.archive import find_scans, safe_identifier
from medsi.pipeline.batch import SUMMARY_COLUMNS, run_batch, settings_hash
from medsi.pipeline.settings import RunSettings
from medsi.transforms.io import write_dicom_series

EVIL = "../../evil"
SAFE_ID = re.compile(r"^[a-z0-9_]+-[0-9a-f]{10}$")


def _phantom(seed: int, lesions: bool):
    # 24 slices of 2 mm: the model keeps few planes, so a scan takes seconds
    config = PhantomConfig(
        spacing_mm=2.0,
        shape=(120, 120, 24),
        lesions=LesionConfig(count=1, radius_mm=(7, 9), contrast=1.5) if lesions else None,
    )
    return make_phantom(seed, config)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """6 scan-like entries, 5 scans (one corrupt), one series split and copied, one evil tag."""
    root = tmp_path_factory.mktemp("archive")
    (root / "nifti" / "sub-01").mkdir(parents=True)
    (root / "nifti" / "sub-02").mkdir(parents=True)
    (root / "nifti" / "sub-03").mkdir(parents=True)
    first = _phantom(11, lesions=True)
    save_nifti(first.image, first.affine, root / "nifti" / "sub-01" / "flair.nii.gz")
    second = _phantom(12, lesions=False)
    save_nifti(second.image, second.affine, root / "nifti" / "sub-02" / "flair.nii")
    whole = (root / "nifti" / "sub-01" / "flair.nii.gz").read_bytes()
    (root / "nifti" / "sub-03" / "flair.nii.gz").write_bytes(whole[: len(whole) // 2])

    # one series: half its slices in one visit folder, half in another, and a full backup copy
    third = _phantom(13, lesions=False)
    series = tmp_path_factory.mktemp("series") / "flair"
    files = write_dicom_series(third.image, third.affine, series, rescale=(0.001, 0.0))
    shutil.copytree(series, root / "dicom" / "c_backup" / "flair")
    for index, file in enumerate(files):
        part = root / "dicom" / ("a_visit/part1" if index < len(files) // 2 else "b_visit/part2")
        part.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, part / file.name)

    fourth = _phantom(14, lesions=True)
    write_dicom_series(
        fourth.image,
        fourth.affine,
        root / "dicom" / "evil",
        rescale=(0.001, 0.0),
        attributes={"SeriesDescription": EVIL, "PatientID": EVIL, "PatientName": EVIL},
    )
    (root / "notes.txt").write_text("not a scan\n")
    return root


@pytest.fixture(scope="module")
def threshold(tiny_mri_bundle, archive) -> float:
    """lambda just above the split series' highest score: it has no findings, and the other
    scans only their few brightest spots (keeps the analyses short)."""
    from medsi.pipeline.preprocess import prepare_scan
    from medsi.pipeline.run import grid_of_bundle
    from medsi.si import LineEvaluator

    scan = prepare_scan(archive / "dicom" / "c_backup" / "flair", grid_of_bundle(tiny_mri_bundle))
    scores = LineEvaluator(tiny_mri_bundle.score(), 0.0).score_map(scan.slices)
    return float(scores[scan.brain].max()) + 1e-6


def _batch_args(archive, out, bundle, threshold, *extra) -> list[str]:
    return ["batch", str(archive), "-o", str(out), "--model", str(bundle.path), "--quiet",
            "--termination", "oc", "--threshold", repr(threshold), *extra]  # fmt: skip


def _batch(archive, out, bundle, threshold, *extra):
    return CliRunner().invoke(main, _batch_args(archive, out, bundle, threshold, *extra))


@pytest.fixture(scope="module")
def reference(archive, tiny_mri_bundle, threshold, tmp_path_factory):
    """The whole archive, in this process, one scan after the other."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = _batch(archive, out, tiny_mri_bundle, threshold, "--workers", "1")
    return result, out


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _by_source(out: Path) -> dict[str, dict]:
    return {r["source"]: r for r in _manifest(out)["scans"].values()}


def _lesion_numbers(out: Path, scan_id: str) -> list[dict]:
    """Each lesion's numbers from the scan's report, without timings."""
    report = json.loads((out / scan_id / "report.json").read_text())
    return [{k: v for k, v in lesion.items() if k != "seconds"} for lesion in report["lesions"]]


def _csv_rows(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "text",
    [EVIL, "/etc/passwd", "..", ".", "", "a\\..\\..\\b", "x\x00y", "Flair T2 * (ax) é", "." * 80],
    ids=["dotdot", "absolute", "parent", "here", "empty", "backslashes", "nul", "spaces", "long"],
)
def test_identifiers_are_safe_folder_names(text, tmp_path):
    scan_id = safe_identifier(text, key=text)
    assert SAFE_ID.match(scan_id) and len(scan_id) <= 51
    assert (tmp_path / scan_id).resolve().parent == tmp_path.resolve()
    assert safe_identifier(text, key="other") != scan_id  # the hash, not the text, is unique


def test_the_settings_hash_follows_what_changes_results():
    base = settings_hash(RunSettings(), "bundle-a")
    assert settings_hash(RunSettings(), "bundle-a") == base
    assert settings_hash(RunSettings(alpha=0.01), "bundle-a") != base
    assert settings_hash(RunSettings(), "bundle-b") != base
    assert settings_hash(RunSettings(search_workers=2), "bundle-a") == base  # only faster


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("workers", ConfigError, '"workers" must be a whole number of at least 1'),
        ("archive_is_a_file", ConfigError, '"archive" must be a folder'),
        ("output_is_the_archive", ConfigError, '"output" must not be the archive'),
        ("not_a_bundle", InputDataError, "bundle"),
    ],
    ids=["workers", "archive-file", "output-archive", "bundle"],
)
def test_run_batch_refuses_what_cannot_work(case, error, match, tiny_mri_bundle, tmp_path):
    archive, out, model, workers = tmp_path / "archive", tmp_path / "out", tiny_mri_bundle.path, 1
    archive.mkdir()
    if case == "workers":
        workers = 0
    elif case == "archive_is_a_file":
        archive = tmp_path / "scan.nii.gz"
        archive.write_bytes(b"")
    elif case == "output_is_the_archive":
        out = archive
    else:
        model = tmp_path / "empty"
        model.mkdir()
    with pytest.raises(error, match=match):
        run_batch(archive, out, model=model, workers=workers, progress=False)
    assert not (out / "manifest.json").exists()


def test_archive_groups_series_wherever_they_lie(archive):
    listing = find_scans(archive)
    assert len(listing.scans) == 5
    assert [s.path for s in listing.skipped] == ["notes.txt"]
    by_label = {s.label: s for s in listing.scans}
    assert {s.kind for s in listing.scans} == {"nifti", "dicom"}
    assert {"nifti/sub-01/flair.nii.gz", "nifti/sub-02/flair.nii", "dicom/evil"} <= set(by_label)

    split = next(s for s in listing.scans if len(s.notes) == 2)
    assert len(split.files) == 24 and not split.direct  # the backup copy lies beside it
    assert {f.parent.name for f in split.files} == {"part1", "part2"}
    assert "spread over 2 folders" in split.notes[0]
    assert "found more than once: 24 file(s)" in split.notes[1] and "c_backup" in split.notes[1]

    evil = by_label["dicom/evil"]
    assert evil.direct and evil.scan_id.startswith("evil-") and SAFE_ID.match(evil.scan_id)
    assert all(SAFE_ID.match(s.scan_id) for s in listing.scans)


def test_a_broken_scan_is_recorded_and_the_rest_are_done(reference, archive):
    result, out = reference
    assert result.exit_code == 1, result.output
    scans = _by_source(out)
    broken = scans["nifti/sub-03/flair.nii.gz"]
    assert broken["state"] == "failed"
    assert broken["error"]["file"] == str(archive / "nifti" / "sub-03" / "flair.nii.gz")
    assert "truncated or corrupt" in broken["error"]["message"]
    done = [r for r in scans.values() if r["state"] == "done"]
    assert len(done) == 4
    for record in done:
        folder = Path(record["output"])
        assert folder.parent == out.resolve() and (folder / "report.json").is_file()
        assert record["settings_hash"] == _manifest(out)["settings_hash"]
    assert f"- failed: {broken['id']} (nifti/sub-03/flair.nii.gz)" in result.output
    assert "5 scan(s): 5 analysed now, 0 reused from an earlier run; 4 done, 1 failed" in (
        result.output
    )
    assert "manifest.json" in result.output
    skipped = _manifest(out)["skipped"]
    assert skipped == [{"path": "notes.txt", "state": "skipped", "reason": skipped[0]["reason"]}]

    # the tag "../../evil" named nothing outside the output folder
    evil = scans["dicom/evil"]
    assert evil["state"] == "done" and Path(evil["output"]).parent == out.resolve()
    assert not (out.parent / "evil").exists() and not any(out.parent.parent.glob("evil*"))
    report = json.loads((Path(evil["output"]) / "report.json").read_text())
    assert report["input"]["format"] == "dicom"


def test_the_summary_has_a_row_per_lesion_per_empty_scan_and_per_failure(reference):
    _, out = reference
    rows = _csv_rows(out)
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    scans = _manifest(out)["scans"]
    expected = 0
    for scan_id, record in scans.items():
        mine = [r for r in rows if r["scan_id"] == scan_id]
        if record["state"] == "failed":
            assert [r["result"] for r in mine] == ["failed"] and mine[0]["error"]
            continue
        lesions = _lesion_numbers(out, scan_id)
        assert record["lesions"] == len(lesions)
        if lesions:
            assert [int(r["lesion_id"]) for r in mine] == [x["id"] for x in lesions]
            assert [float(r["p_holm"]) for r in mine] == [x["p_holm"] for x in lesions]
        else:
            assert [r["result"] for r in mine] == ["no findings"] and mine[0]["lesion_id"] == ""
        expected += max(1, len(lesions))
    assert len(rows) == expected + 1
    results = {r["result"] for r in rows}
    assert results == {"lesion", "no findings", "failed"}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["scans"] == 5 and summary["counts"]["failed"] == 1
    assert summary["counts"]["lesions"] == sum(r["result"] == "lesion" for r in rows)
    assert summary["skipped"][0]["path"] == "notes.txt"


def test_a_rerun_skips_what_is_done_and_redoes_what_failed(
    reference, archive, tiny_mri_bundle, threshold, tmp_path
):
    # copies, so the shared reference stays as it is
    archive_copy, out = tmp_path / "archive", tmp_path / "out"
    shutil.copytree(archive, archive_copy)
    shutil.copytree(reference[1], out, symlinks=True)
    done_before = {i for i, r in _manifest(out)["scans"].items() if r["state"] == "done"}
    stamps = {i: (out / i / "report.json").stat().st_mtime_ns for i in done_before}

    again = _batch(archive_copy, out, tiny_mri_bundle, threshold, "--workers", "1")
    assert again.exit_code == 1
    assert "1 analysed now, 4 reused from an earlier run; 4 done, 1 failed" in again.output
    assert {i: (out / i / "report.json").stat().st_mtime_ns for i in done_before} == stamps

    fixed = _phantom(15, lesions=False)  # the corrupt file replaced by a good scan
    save_nifti(fixed.image, fixed.affine, archive_copy / "nifti" / "sub-03" / "flair.nii.gz")
    fixed_run = _batch(archive_copy, out, tiny_mri_bundle, threshold, "--workers", "1")
    assert fixed_run.exit_code == 0, fixed_run.output
    assert "1 analysed now, 4 reused from an earlier run; 5 done, 0 failed" in fixed_run.output
    assert all(r["state"] == "done" for r in _manifest(out)["scans"].values())
    assert {i: (out / i / "report.json").stat().st_mtime_ns for i in done_before} == stamps


@pytest.fixture(scope="module")
def small_archive(archive, tmp_path_factory) -> Path:
    """Two scans of the archive (NIfTI with a lesion, DICOM), at the same relative paths."""
    root = tmp_path_factory.mktemp("small")
    for part in ("nifti/sub-01", "dicom/evil"):
        shutil.copytree(archive / part, root / part)
    return root


def _same_results_as_reference(out: Path, reference_out: Path) -> None:
    """Every scan of ``out`` has the state, error, lesions and summary rows of the reference."""
    records, expected = _manifest(out)["scans"], _manifest(reference_out)["scans"]
    assert set(records) <= set(expected) and records

    def outcome(record):
        return record["state"], record["lesions"], (record["error"] or {}).get("message")

    assert {i: outcome(r) for i, r in records.items()} == {i: outcome(expected[i]) for i in records}
    for scan_id, record in records.items():
        if record["state"] == "done":
            assert _lesion_numbers(out, scan_id) == _lesion_numbers(reference_out, scan_id)
    assert any(_lesion_numbers(out, i) for i, r in records.items() if r["state"] == "done")

    def rows(folder):
        return [{k: v for k, v in r.items() if k != "output"} for r in _csv_rows(folder)]

    assert rows(out) == [r for r in rows(reference_out) if r["scan_id"] in records]


@pytest.fixture(scope="module")
def processes_run(archive, tiny_mri_bundle, threshold, tmp_path_factory):
    """The whole archive (the corrupt file and the duplicate series too) on 2 processes."""
    out = tmp_path_factory.mktemp("processes") / "out"
    result = _batch(archive, out, tiny_mri_bundle, threshold, "--workers", "2")
    return result, out


def test_local_processes_give_the_in_process_results(reference, processes_run):
    result, out = processes_run
    assert result.exit_code == 1, result.output  # the corrupt scan
    assert "5 scan(s): 5 analysed now, 0 reused from an earlier run; 4 done, 1 failed" in (
        result.output
    )
    _same_results_as_reference(out, reference[1])


def test_a_local_dask_cluster_gives_the_in_process_results_and_new_settings_redo_all(
    reference, processes_run, archive, tiny_mri_bundle, threshold, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(processes_run[1], out, symlinks=True)
    # another --seed changes the settings hash (so every scan is analysed again) but not the
    # numbers: the seed is only recorded, the DDIM noise is fixed by the bundle
    args = ("--scheduler", "local", "--workers", "2", "--seed", "1")
    result = _batch(archive, out, tiny_mri_bundle, threshold, *args)
    assert result.exit_code == 1, result.output
    assert "5 scan(s): 5 analysed now, 0 reused from an earlier run; 4 done, 1 failed" in (
        result.output
    )
    assert _manifest(out)["settings"]["seed"] == 1
    _same_results_as_reference(out, reference[1])


def test_a_running_dask_cluster_is_used_by_its_address(
    reference, small_archive, tiny_mri_bundle, threshold, tmp_path
):
    from distributed import LocalCluster

    out = tmp_path / "dask_address"
    # one worker process is enough to show the tasks travel; it saves a second start-up
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = _batch(
            small_archive, out, tiny_mri_bundle, threshold, "--scheduler", cluster.scheduler_address
        )
    assert result.exit_code == 0, result.output
    _same_results_as_reference(out, reference[1])


def test_an_unreachable_scheduler_is_a_one_line_error(small_archive, tiny_mri_bundle, tmp_path):
    import dask

    nobody = ("--scheduler", "tcp://127.0.0.1:9")  # the discard port: nothing listens there
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = _batch(small_archive, tmp_path / "o", tiny_mri_bundle, 1e6, *nobody)
    assert result.exit_code == 1
    assert '"--scheduler" must be the address of a running Dask scheduler' in result.output
    assert "Traceback" not in result.output


def test_a_batch_killed_midway_completes_on_the_next_run(
    small_archive, tiny_mri_bundle, threshold, tmp_path
):
    out = tmp_path / "out"
    args = _batch_args(small_archive, out, tiny_mri_bundle, threshold, "--workers", "1")
    command = [sys.executable, "-c", "from medsi.cli import main; main()", *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            try:
                states = [r["state"] for r in _manifest(out)["scans"].values()]
            except (OSError, ValueError):  # not written yet
                states = []
            if "done" in states:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the batch ended before it could be killed"
        process.kill()  # SIGKILL: no clean-up of any kind
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert sorted(r["state"] for r in _manifest(out)["scans"].values()) == ["done", "pending"]
    done_id = next(i for i, r in _manifest(out)["scans"].items() if r["state"] == "done")
    stamp = (out / done_id / "report.json").stat().st_mtime_ns

    result = _batch(small_archive, out, tiny_mri_bundle, threshold, "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "1 analysed now, 1 reused from an earlier run; 2 done, 0 failed" in result.output
    assert (out / done_id / "report.json").stat().st_mtime_ns == stamp
    assert len(_csv_rows(out)) == sum(
        max(1, r["lesions"]) for r in _manifest(out)["scans"].values()
    )


def test_the_output_folder_cannot_be_the_archive(small_archive, tiny_mri_bundle):
    result = _batch(small_archive, small_archive, tiny_mri_bundle, 1e6)
    assert result.exit_code == 1
    assert '"output" must not be the archive or a folder above it' in result.output


# a DICOM preamble, then a meta element with a value representation that does not exist
BROKEN_DICOM = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00ZZ\x04\x00abcd"


def test_an_unreadable_dicom_header_fails_its_file_and_keeps_its_folder_apart(
    archive, tiny_mri_bundle, tmp_path
):
    mixed = tmp_path / "mixed"
    shutil.copytree(archive / "dicom" / "evil", mixed / "evil")
    (mixed / "evil" / "zz_broken.dcm").write_bytes(BROKEN_DICOM)
    listing = find_scans(mixed)
    broken = next(s for s in listing.scans if s.error)
    assert "zz_broken.dcm" in broken.error and "header could not be read" in broken.error
    series = next(s for s in listing.scans if not s.error)
    assert len(series.files) == 24 and not series.direct  # read from links, without it

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "broken.dcm").write_bytes(BROKEN_DICOM)
    result = _batch(alone, tmp_path / "out", tiny_mri_bundle, 1e6, "--workers", "1")
    assert result.exit_code == 1
    (record,) = _manifest(tmp_path / "out")["scans"].values()
    assert record["state"] == "failed" and record["error"]["file"] == str(alone / "broken.dcm")
    assert "0 analysed now" in result.output
