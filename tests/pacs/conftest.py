"""Fixtures of the PACS tests: a real Orthanc, dcmtk, small DICOM series and output folders.

Without Orthanc, its DICOMweb plugin or dcmtk the tests are skipped, unless
MEDSI_REQUIRE_TOOLS=1 (then they fail).
"""

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medsi.data import LesionConfig, PhantomConfig, make_phantom, save_nifti
from medsi.pacs import DicomNode, NodeConfig
from medsi.pipeline.run import analyse_scan, write_outputs
from medsi.pipeline.settings import RunSettings
from medsi.transforms.io import write_dicom_series
from tests.pacs.orthanc_server import free_port, missing_tools, start_orthanc

NODE_AET = "MEDSI"  # the calling title Orthanc knows (DicomModalities)
SCANNER_AET = "SCANNER"  # the title the serve nodes allow


@pytest.fixture(scope="session")
def pacs_tools():
    reason = missing_tools()
    if reason is not None:
        if os.environ.get("MEDSI_REQUIRE_TOOLS") == "1":
            pytest.fail(f"MEDSI_REQUIRE_TOOLS=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def orthanc(pacs_tools, tmp_path_factory):
    """One Orthanc for the session; it accepts C-STORE only from the AE title MEDSI."""
    folder = tmp_path_factory.mktemp("orthanc")
    server = start_orthanc(folder, modalities={"medsi": (NODE_AET, "127.0.0.1", free_port())})
    yield server
    server.stop()


def phantom_series(folder: Path, seed: int = 11, lesions: bool = True) -> list[Path]:
    """A small MR series (24 slices of 120 x 120, 2 mm) of a phantom: seconds to analyse."""
    config = PhantomConfig(
        spacing_mm=2.0,
        shape=(120, 120, 24),
        lesions=LesionConfig(count=1, radius_mm=(7, 9), contrast=1.5) if lesions else None,
    )
    phantom = make_phantom(seed, config)
    attributes = {"PatientName": f"Phantom^{seed}", "PatientID": f"PH-{seed}"}
    return write_dicom_series(
        phantom.image, phantom.affine, folder, rescale=(0.001, 0.0), attributes=attributes
    )


@pytest.fixture(scope="session")
def pacs_settings(tiny_mri_bundle, tmp_path_factory):
    """Run settings that select a few lesions of the phantom series (termination oc)."""
    from medsi.pipeline.preprocess import prepare_scan
    from medsi.pipeline.run import grid_of_bundle
    from medsi.si import LineEvaluator

    folder = tmp_path_factory.mktemp("threshold") / "series"
    phantom_series(folder)
    scan = prepare_scan(folder, grid_of_bundle(tiny_mri_bundle))
    scores = LineEvaluator(tiny_mri_bundle.score(), 0.0).score_map(scan.slices)
    threshold = float(np.quantile(scores[scan.brain], 0.9995))
    return RunSettings(threshold=threshold, termination="oc")


@pytest.fixture(scope="session")
def nifti_outputs(tiny_mri_bundle, pacs_settings, tmp_path_factory) -> Path:
    """A real output folder of a NIfTI input: source series, SEG and SR."""
    folder = tmp_path_factory.mktemp("nifti")
    config = PhantomConfig(
        spacing_mm=2.0,
        shape=(120, 120, 24),
        lesions=LesionConfig(count=1, radius_mm=(7, 9), contrast=1.5),
    )
    phantom = make_phantom(11, config)
    save_nifti(phantom.image, phantom.affine, folder / "flair.nii.gz")
    analysis = analyse_scan(folder / "flair.nii.gz", tiny_mri_bundle, pacs_settings, progress=False)
    files = write_outputs(analysis, folder / "out")
    assert files["dicom_seg"] is not None and files["dicom_source_series"] is not None
    return folder / "out"


class LogLines:
    """A thread-safe log that tests can search and wait on."""

    def __init__(self):
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


@pytest.fixture
def node_factory(tiny_mri_bundle, pacs_settings, tmp_path):
    """Start serve nodes in this process on free ports; all are stopped after the test."""
    nodes = []

    def make(forward=None, *, folder=None, allow=(SCANNER_AET,), quiet=0.5, retry=60.0):
        folder = folder or tmp_path / f"node{len(nodes)}"
        log = LogLines()
        config = NodeConfig(
            out=folder / "out",
            spool=folder / "spool",
            ae_title=NODE_AET,
            port=0,
            forward=forward,
            allow=allow,
            quiet_seconds=quiet,
            retry_seconds=retry,
            send_timeout=5.0,
        )
        node = DicomNode(config, tiny_mri_bundle, pacs_settings, log=log)
        node.log_lines = log
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.stop()


def storescu(port: int, files, calling=SCANNER_AET, called=NODE_AET):
    """Send files with dcmtk's storescu; returns the finished process."""
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_until(predicate, timeout: float, what: str, log=None):
    """Poll ``predicate`` until it is true; fail with ``what`` (and the node's log)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    detail = f"\nnode log:\n{log.text()}" if log is not None else ""
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}{detail}")
