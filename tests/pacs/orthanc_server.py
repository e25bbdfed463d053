"""A throwaway Orthanc on loopback for the PACS tests and the PACS benchmark.

Debian packages: orthanc, orthanc-dicomweb (STOW-RS) and dcmtk (storescu). Each server gets
its own configuration, storage folder and log in a given folder, and free loopback ports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def missing_tools() -> str | None:
    """Why the real servers cannot run here, or None when everything is installed."""
    missing = []
    if not (os.access(ORTHANC, os.X_OK) or shutil.which("Orthanc")):
        missing.append("Orthanc (Debian package orthanc)")
    if not Path(DICOMWEB_PLUGIN).exists():
        missing.append(f"the DICOMweb plugin {DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb)")
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian package dcmtk)")
    if not missing:
        return None
    return (
        "the PACS tests need real DICOM servers and tools on loopback, missing: "
        + ", ".join(missing)
        + "; install them with apt-get install orthanc orthanc-dicomweb dcmtk"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Orthanc:
    """A running Orthanc and the means to ask it what it holds."""

    process: subprocess.Popen
    folder: Path
    aet: str
    dicom_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        with urllib.request.urlopen(
            urllib.request.Request(self.url + path, data=data, method="POST"), timeout=10
        ) as r:
            return json.loads(r.read())

    def instance(self, sop_instance_uid: str) -> dict | None:
        """Orthanc's record of an instance (with its tags), or None when not stored."""
        found = self.post(
            "/tools/find",
            {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}, "Expand": True},
        )
        return found[0] if found else None

    def has_all(self, uids) -> bool:
        return all(self.instance(uid) is not None for uid in uids)

    def wait_for(self, uids, timeout: float) -> bool:
        """Poll until every SOP Instance UID is stored; False at the timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.has_all(uids):
                return True
            time.sleep(0.25)
        return self.has_all(uids)

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_orthanc(
    folder: Path,
    *,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    aet: str = "ORTHANC",
    dicom_port: int | None = None,
    always_allow_store: bool = False,
    timeout: float = 30.0,
) -> Orthanc:
    """Start Orthanc with its configuration, storage and log in ``folder``.

    ``modalities``: Orthanc's ``DicomModalities`` (name -> (AET, host, port)), the nodes it
    knows; unless ``always_allow_store``, only they may store. Returns once its REST API
    answers ``/system``; raises RuntimeError with its log otherwise.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    dicom_port = dicom_port or free_port()
    config = {
        "Name": f"medsi-test-{dicom_port}",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": always_allow_store,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 10,
        "StableAge": 1,
        "SaveJobs": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (kept open for the process)
    process = subprocess.Popen(
        [shutil.which("Orthanc") or ORTHANC, str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    log.close()
    server = Orthanc(process, folder, aet, dicom_port, http_port)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            break
        try:
            server.get("/system")
            return server
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"Orthanc did not start in {timeout:g} s; its log:\n{server.log()}")
