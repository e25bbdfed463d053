"""``medsi send`` against a real Orthanc on loopback: C-STORE, STOW-RS, and refusals."""

import http.server
import io
import json
import shutil
import threading

import pydicom
import pytest
from click.testing import CliRunner

from medsi.cli.main import main
from medsi.errors import ConfigError
from medsi.pacs import output_objects, send_outputs, stow_outputs
from tests.pacs.orthanc_server import free_port


def _uids(paths) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def _classes(orthanc, uids) -> set[str]:
    return {orthanc.instance(uid)["MainDicomTags"].get("SOPClassUID", "?") for uid in uids}


def test_output_objects_are_the_source_series_then_seg_then_sr(nifti_outputs):
    files = output_objects(nifti_outputs)
    names = [f.relative_to(nifti_outputs).as_posix() for f in files]
    assert names[:-2] == [f"source_series/slice_{k:04d}.dcm" for k in range(len(names) - 2)]
    assert names[-2:] == ["lesions_seg.dcm", "lesions_sr.dcm"]
    assert output_objects(nifti_outputs, source_series=False)[-2:] == files[-2:]


def test_a_folder_without_outputs_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="lesions_sr.dcm"):
        output_objects(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        output_objects(tmp_path / "missing")


def test_send_stores_seg_sr_and_source_series_in_orthanc(orthanc, nifti_outputs):
    result = CliRunner().invoke(main, ["send", str(nifti_outputs), "--to", orthanc.destination])
    assert result.exit_code == 0, result.output
    files = output_objects(nifti_outputs)
    assert f"{len(files)} of {len(files)} object(s) stored in {orthanc.destination}" in (
        result.output
    )
    uids = _uids(files)
    assert orthanc.has_all(uids)  # asked back through Orthanc's REST API
    seg = orthanc.instance(uids[-2])
    assert seg["MainDicomTags"]["SOPInstanceUID"] == uids[-2]
    series = orthanc.get(f"/series/{seg['ParentSeries']}")
    assert series["MainDicomTags"]["Modality"] == "SEG"
    sr = orthanc.get(f"/series/{orthanc.instance(uids[-1])['ParentSeries']}")
    assert sr["MainDicomTags"]["Modality"] == "SR"
    # the SEG, SR and images are one study in the PACS
    studies = {orthanc.get(f"/series/{orthanc.instance(u)['ParentSeries']}")["ParentStudy"]
               for u in uids}  # fmt: skip
    assert len(studies) == 1


def test_stow_stores_the_objects_the_server_lists(orthanc, nifti_outputs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(nifti_outputs, out)
    # fresh UIDs so that nothing was in Orthanc before: a stored object is this request's
    for path in output_objects(out, source_series=False):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(path)
    uids = _uids(output_objects(out, source_series=False))
    assert not any(orthanc.instance(u) for u in uids)
    result = CliRunner().invoke(
        main, ["send", str(out), "--stow", orthanc.dicomweb, "--no-source-series"]
    )
    assert result.exit_code == 0, result.output
    assert f"2 of 2 object(s) stored in {orthanc.dicomweb}" in result.output
    assert orthanc.has_all(uids)


def test_stow_counts_only_what_the_response_lists(orthanc, nifti_outputs):
    result = stow_outputs(nifti_outputs, orthanc.dicomweb, per_request=10)
    assert result.ok and len(result.objects) == len(output_objects(nifti_outputs))
    assert {o.status for o in result.objects} == {"HTTP 200"}
    assert orthanc.has_all(o.sop_instance_uid for o in result.objects)


class _PartialStowServer(http.server.BaseHTTPRequestHandler):
    """A STOW-RS endpoint that answers 202 and lists only some of the posted objects.

    Orthanc lists every object it was sent; this one, on a loopback port, answers as a
    server does that keeps part of a request: the first object is listed as stored, the
    second as failed (0xC000), the others are left out of the response.
    """

    def do_POST(self):  # noqa: N802 (the http.server interface)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        parts = [
            part.split(b"\r\n\r\n", 1)[1]
            for part in body.split(b"--" + _boundary(self.headers["Content-Type"]))[1:-1]
        ]
        uids = [str(pydicom.dcmread(io.BytesIO(p), force=True).SOPInstanceUID) for p in parts]
        self.server.posted.extend(uids)
        response = pydicom.Dataset()
        stored, failed = pydicom.Dataset(), pydicom.Dataset()
        stored.ReferencedSOPInstanceUID = uids[0]
        failed.ReferencedSOPInstanceUID, failed.FailureReason = uids[1], 0xC000
        response.ReferencedSOPSequence = [stored]
        response.FailedSOPSequence = [failed]
        payload = json.dumps(response.to_json_dict()).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def _boundary(content_type: str) -> bytes:
    for field in content_type.split(";"):
        key, _, value = field.strip().partition("=")
        if key == "boundary":
            return value.strip('"').encode()
    raise AssertionError(f"no boundary in {content_type}")


def test_stow_objects_left_out_of_the_response_or_failed_are_not_stored(nifti_outputs):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PartialStowServer)
    server.posted = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        result = CliRunner().invoke(
            main, ["send", str(nifti_outputs), "--stow", url, "--timeout", "10"]
        )
    finally:
        server.shutdown()
        server.server_close()
    files = output_objects(nifti_outputs)
    assert server.posted == _uids(files)  # all in one request (32 per request)
    assert result.exit_code == 1, result.output
    assert f"1 of {len(files)} object(s) stored in {url}" in result.output
    rows = [line for line in result.output.splitlines() if ".dcm" in line]
    assert len(rows) == len(files)
    assert rows[0].startswith("stored") and files[0].name in rows[0]
    assert rows[1].startswith("NOT STORED") and "failure reason 0xC000" in rows[1]
    for row in rows[2:]:
        assert row.startswith("NOT STORED") and "does not list it" in row


def test_an_unknown_calling_title_is_not_stored(orthanc, nifti_outputs):
    result = send_outputs(nifti_outputs, orthanc.destination, calling_aet="STRANGER", timeout=5)
    assert not result.ok and not result.stored
    assert all("STRANGER" in o.message for o in result.objects)


@pytest.mark.parametrize("how", ["c-store", "stow"], ids=["c-store", "stow"])
def test_a_destination_that_is_down_gives_exit_1_and_every_object_not_stored(
    pacs_tools, nifti_outputs, how
):
    port = free_port()  # nothing listens there
    target = (["--to", f"NOBODY@127.0.0.1:{port}"] if how == "c-store"
              else ["--stow", f"http://127.0.0.1:{port}/dicom-web"])  # fmt: skip
    result = CliRunner().invoke(main, ["send", str(nifti_outputs), *target, "--timeout", "5"])
    assert result.exit_code == 1
    n = len(output_objects(nifti_outputs))
    assert result.output.count("NOT STORED") == n
    assert f"0 of {n} object(s) stored" in result.output
    if how == "c-store":
        assert "cannot connect to 127.0.0.1" in result.output
    assert "not stored in" in result.output  # the closing message says what to do


def test_a_node_that_refuses_the_association(node_factory, nifti_outputs):
    node = node_factory(allow=("SOMEONE",))  # a medsi node that refuses our calling title
    result = CliRunner().invoke(
        main, ["send", str(nifti_outputs), "--to", f"MEDSI@127.0.0.1:{node.port}"]
    )
    assert result.exit_code == 1
    assert "refused the association" in result.output and "calling AE title" in result.output
    assert "0 of" in result.output


def test_send_needs_exactly_one_way(nifti_outputs):
    result = CliRunner().invoke(main, ["send", str(nifti_outputs)])
    assert result.exit_code == 2 and "exactly one of --to" in result.output
    result = CliRunner().invoke(main, ["send", str(nifti_outputs), "--to", "bad"])
    assert result.exit_code == 1 and "AET@HOST:PORT" in result.output
