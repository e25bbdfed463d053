"""``medsi serve`` on loopback: series from dcmtk's storescu in, SEG + SR out to a real Orthanc.

The nodes run in this process on free ports (the ``node_factory`` fixture); one test runs
the command itself in a subprocess.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import threading

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from medsi.errors import ConfigError, PacsError
from medsi.pacs import DicomNode, NodeConfig
from medsi.pacs.serve import STATE_FILENAME
from tests.pacs.conftest import NODE_AET, SCANNER_AET, phantom_series, storescu, wait_until
from tests.pacs.orthanc_server import free_port, start_orthanc


def _series_uid(files) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _result_uids(results) -> list[str]:
    """SOP Instance UIDs of the SEG (when written) and SR of a results folder."""
    files = [results / name for name in ("lesions_seg.dcm", "lesions_sr.dcm")]
    return [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files if f.exists()
    ]


def _outcome(node, uid, state):
    return next(
        (o for o in node.outcomes() if o.series_instance_uid == uid and o.state == state), None
    )


def test_series_sent_at_once_are_analysed_and_their_seg_and_sr_reach_orthanc(
    orthanc, node_factory, tmp_path
):
    node = node_factory(orthanc.destination)
    series = [phantom_series(tmp_path / f"s{seed}", seed=seed) for seed in (11, 12)]
    # two storescu associations at once
    results = [None, None]

    def send(k):
        results[k] = storescu(node.port, series[k])

    threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert r.returncode == 0, r.stdout + r.stderr
    for files in series:
        uid = _series_uid(files)
        sent = wait_until(lambda u=uid: _outcome(node, u, "sent"), 90, "the result", node.log_lines)
        assert sent.instances == len(files)
        uids = _result_uids(sent.results)
        assert len(uids) == 2, "the phantom has a lesion: SEG and SR"
        assert orthanc.wait_for(uids, 10)
        # the SEG references the images the node received
        seg = pydicom.dcmread(sent.results / "lesions_seg.dcm", stop_before_pixels=True)
        assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == uid
        assert not (node.config.spool / uid).exists(), "sent: the spool is emptied"
        state = json.loads((sent.results / STATE_FILENAME).read_text())
        assert state["state"] == "sent" and len(state["instances"]) == len(files)
    log = node.log_lines.text()
    assert f"association from {SCANNER_AET}" in log and "24 instance(s) stored" in log
    assert "quiet, analysing 24 instance(s)" in log
    assert node.pending() == {}


def test_an_ae_title_not_on_the_allow_list_is_refused(node_factory, tmp_path):
    node = node_factory()
    files = phantom_series(tmp_path / "s", seed=13)
    refused = storescu(node.port, files, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    assert "INTRUDER" in node.log_lines.text() and "not on the allow list" in (
        node.log_lines.text()
    )
    assert node.pending() == {}
    assert not any(p for p in node.config.spool.iterdir() if not p.name.startswith("."))
    echo = subprocess.run(
        ["echoscu", "-aet", SCANNER_AET, "-aec", NODE_AET, "127.0.0.1", str(node.port)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0, "an allowed title still gets through"


def _bad_instances(good: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    no_series = copy.deepcopy(good)
    del no_series.SeriesInstanceUID
    escaping = copy.deepcopy(good)
    escaping.SeriesInstanceUID = "../../evil"
    no_pixels = copy.deepcopy(good)
    del no_pixels.PixelData
    escaping_instance = copy.deepcopy(good)
    escaping_instance.SOPInstanceUID = "../1.2.3"
    return {
        "no SeriesInstanceUID": no_series,
        "a path as SeriesInstanceUID": escaping,
        "no pixel data": no_pixels,
        "a path as SOPInstanceUID": escaping_instance,
    }


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_objects_get_a_failure_status_and_the_node_keeps_serving(node_factory, tmp_path):
    node = node_factory(quiet=600)  # nothing is analysed in this test
    files = phantom_series(tmp_path / "s", seed=14)
    good = pydicom.dcmread(files[0])
    ae = AE(ae_title=SCANNER_AET)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        for what, ds in _bad_instances(good).items():
            status = assoc.send_c_store(ds)
            assert status.Status in (0xA900, 0xC000), what
            assert status.ErrorComment, what
        assert assoc.send_c_store(good).Status == 0x0000  # same association, still serving
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert node.pending() == {str(good.SeriesInstanceUID): 1}
    spooled = [p.name for p in node.config.spool.iterdir() if not p.name.startswith(".")]
    assert spooled == [str(good.SeriesInstanceUID)]
    assert not (tmp_path / "evil").exists() and not (node.config.spool.parent / "evil").exists()
    log = node.log_lines.text()
    assert "refused an instance" in log and "4 refused" in log


def test_a_series_that_cannot_be_analysed_is_kept_and_reported(node_factory, tmp_path):
    node = node_factory(quiet=0.2)
    files = phantom_series(tmp_path / "s", seed=15)[:2]  # two slices: too few to analyse
    assert storescu(node.port, files).returncode == 0
    uid = _series_uid(files)
    failed = wait_until(lambda: _outcome(node, uid, "analysis-failed"), 30, "the failure")
    assert "until new instances arrive" in failed.message
    assert (node.config.spool / uid).is_dir() and node.pending() == {uid: 2}
    assert storescu(node.port, files).returncode == 0  # still serving


def test_results_are_kept_when_forwarding_fails_and_sent_on_retry(
    pacs_tools, node_factory, tmp_path
):
    port = free_port()  # the forward destination is down at first
    node = node_factory(f"LATER@127.0.0.1:{port}", retry=1.0)
    files = phantom_series(tmp_path / "s", seed=16)
    assert storescu(node.port, files).returncode == 0
    uid = _series_uid(files)
    failed = wait_until(lambda: _outcome(node, uid, "forward-failed"), 60, "a failed forward")
    assert "cannot connect" in failed.message and "next try" in failed.message
    assert (node.config.spool / uid).is_dir(), "not sent: the received series is kept"
    uids = _result_uids(failed.results)
    # the destination comes up on the same port: the next try stores the same objects
    later = start_orthanc(tmp_path / "later", aet="LATER", dicom_port=port, always_allow_store=True)
    try:
        sent = wait_until(lambda: _outcome(node, uid, "sent"), 30, "the retry", node.log_lines)
        assert later.wait_for(uids, 10)
        assert _result_uids(sent.results) == uids, "sent again, not analysed again"
        assert not (node.config.spool / uid).exists() and node.pending() == {}
    finally:
        later.stop()


def test_a_restarted_node_sends_the_spooled_results(orthanc, node_factory, tmp_path):
    folder = tmp_path / "node"
    first = node_factory(f"DOWN@127.0.0.1:{free_port()}", folder=folder)
    files = phantom_series(tmp_path / "s", seed=17)
    assert storescu(first.port, files).returncode == 0
    uid = _series_uid(files)
    failed = wait_until(lambda: _outcome(first, uid, "forward-failed"), 60, "a failed forward")
    uids = _result_uids(failed.results)
    first.stop()
    assert (folder / "spool" / uid).is_dir()

    second = node_factory(orthanc.destination, folder=folder, quiet=0.1)
    assert "results made before, to be sent" in second.log_lines.text()
    wait_until(lambda: _outcome(second, uid, "sent"), 30, "the resend", second.log_lines)
    assert orthanc.wait_for(uids, 10)
    assert _result_uids(failed.results) == uids
    assert not (folder / "spool" / uid).exists()


def test_a_taken_port_and_bad_options_are_clear_errors(node_factory, tiny_mri_bundle, tmp_path):
    node = node_factory()
    with pytest.raises(PacsError, match="cannot listen on 127.0.0.1"):
        DicomNode(NodeConfig(out=tmp_path / "b", port=node.port), tiny_mri_bundle).start()
    with pytest.raises(ConfigError, match="AET@HOST:PORT"):
        NodeConfig(out=tmp_path, forward="nowhere")
    with pytest.raises(ConfigError, match="at most 16 characters"):
        NodeConfig(out=tmp_path, allow=("A" * 17,))
    with pytest.raises(ConfigError, match="quiet_seconds"):
        NodeConfig(out=tmp_path, quiet_seconds=-1)


def test_the_serve_command_forwards_results_to_orthanc_and_stops_on_sigterm(
    orthanc, pacs_settings, tiny_mri_bundle, tmp_path
):
    port = free_port()
    command = [
        *(sys.executable, "-c", "from medsi.cli import main; main()", "serve"),
        *("--port", str(port), "--out", str(tmp_path / "out"), "--forward", orthanc.destination),
        *("--model", str(tiny_mri_bundle.path), "--allow", SCANNER_AET, "--quiet-seconds", "1"),
        *("--threshold", repr(pacs_settings.threshold), "--termination", "oc"),
    ]
    files = phantom_series(tmp_path / "series", seed=18)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def results_in_orthanc():
        return {
            modality
            for modality in ("SEG", "SR")
            if orthanc.post(
                "/tools/find",
                {"Level": "Series", "Query": {"StudyInstanceUID": study, "Modality": modality}},
            )
        }

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as process:
        lines = []
        try:
            for line in process.stderr:
                lines.append(line)
                if "ready; test it with" in line:
                    break
            echo = subprocess.run(
                ["echoscu", "-aet", SCANNER_AET, "-aec", "MEDSI", "127.0.0.1", str(port)],
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert echo.returncode == 0
            sent = storescu(port, files)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            found = wait_until(
                lambda: results_in_orthanc() == {"SEG", "SR"}, 120, "the SEG and SR in Orthanc"
            )
            assert found
        finally:
            process.send_signal(signal.SIGTERM)
            rest = process.communicate(timeout=60)[1]
    text = "".join(lines) + rest
    assert process.returncode == 0, text
    assert f"listening as MEDSI on 127.0.0.1:{port}" in text
    assert f"accepting calling AE titles: {SCANNER_AET}" in text
    assert f"association from {SCANNER_AET}" in text and "stopped MEDSI" in text
    assert f"stored in {orthanc.destination}" in text
