"""Send a scan's DICOM outputs to a PACS: C-STORE (pynetdicom) or STOW-RS (dicomweb-client).

What is sent from an output folder of ``medsi run`` (:mod:`medsi.export.dicom`): the
converted source series (``source_series/``, NIfTI inputs only) first, so that a PACS has
the images before the objects that reference them, then ``lesions_seg.dcm`` (when there is
a lesion) and ``lesions_sr.dcm``.

An object counts as stored only on the receiver's word: a C-STORE response with a success
or warning status (PS3.4 B.2.3), or, over STOW-RS, its SOP Instance UID in the response's
Referenced SOP Sequence (PS3.18 10.5.3). Everything else is reported with the reason, never
raised, so one refused object does not hide the others.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from medsi.errors import ConfigError
from medsi.export.dicom import SEG_FILENAME, SOURCE_SERIES_FOLDER, SR_FILENAME
from medsi.pacs.destination import Destination, check_ae_title, parse_destination

__all__ = ["SentObject", "SendResult", "output_objects", "send_outputs", "stow_outputs"]

_NOT_SENT = "not sent"


@dataclasses.dataclass(frozen=True)
class SentObject:
    """What happened to one DICOM object.

    Attributes
    ----------
    path
        The file sent.
    sop_class_uid, sop_instance_uid
        The object's identity (empty when the file could not be read).
    stored
        True only when the receiver confirmed it.
    status
        The receiver's answer: a C-STORE status such as ``"0x0000"``, ``"HTTP 200"`` for
        STOW-RS, or ``"not sent"``.
    message
        The reason in words (empty for a plain success).
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    stored: bool
    status: str
    message: str = ""

    @property
    def sop_class_name(self) -> str:
        """The SOP class by name, e.g. ``"Segmentation Storage"``."""
        return _class_name(self.sop_class_uid)


def _class_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name if uid else "?"


@dataclasses.dataclass(frozen=True)
class SendResult:
    """The outcome of sending one output folder.

    Attributes
    ----------
    destination
        Where it went, in words (``AET@HOST:PORT`` or the STOW-RS URL).
    folder
        The output folder.
    objects
        One row per file, in the order sent.
    """

    destination: str
    folder: Path
    objects: tuple[SentObject, ...]

    @property
    def stored(self) -> tuple[SentObject, ...]:
        """The objects the receiver confirmed."""
        return tuple(o for o in self.objects if o.stored)

    @property
    def failed(self) -> tuple[SentObject, ...]:
        """The objects not stored."""
        return tuple(o for o in self.objects if not o.stored)

    @property
    def ok(self) -> bool:
        """Every object was stored."""
        return bool(self.objects) and not self.failed

    def format_table(self) -> str:
        """A terminal table: one line per object, then a summary line."""
        head = f"{'status':<10} {'code':<8} {'SOP class':<34} {'SOP instance UID':<64}  file"
        lines = [head]
        for o in self.objects:
            try:
                name = o.path.relative_to(self.folder)
            except ValueError:
                name = o.path
            state = "stored" if o.stored else "NOT STORED"
            lines.append(
                f"{state:<10} {o.status:<8} {o.sop_class_name[:34]:<34} "
                f"{o.sop_instance_uid or '?':<64}  {name}"
                + (f"  ({o.message})" if o.message else "")
            )
        lines.append(
            f"{len(self.stored)} of {len(self.objects)} object(s) stored in {self.destination}."
        )
        return "\n".join(lines)


def output_objects(out_dir: str | os.PathLike, *, source_series: bool = True) -> list[Path]:
    """The DICOM files of an output folder, in the order they are sent.

    Parameters
    ----------
    out_dir
        A folder written by ``medsi run`` (or the serve node).
    source_series
        Include ``source_series/*.dcm`` when the folder has them (NIfTI inputs).

    Returns
    -------
    list of Path

    Raises
    ------
    ConfigError
        If ``out_dir`` is not a folder or holds no ``lesions_sr.dcm``.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise ConfigError(
            f'"out_dir" must be an output folder of medsi run, got "{folder}", which is not a '
            "folder; pass the folder given to medsi run -o."
        )
    sr = folder / SR_FILENAME
    if not sr.is_file():
        raise ConfigError(
            f'"out_dir" must hold the DICOM outputs of medsi run ({SR_FILENAME}), got '
            f'"{folder}" without it; run medsi run with --dicom (the default) and pass its '
            "output folder."
        )
    files = []
    if source_series and (folder / SOURCE_SERIES_FOLDER).is_dir():
        files += sorted((folder / SOURCE_SERIES_FOLDER).glob("*.dcm"))
    if (folder / SEG_FILENAME).is_file():
        files.append(folder / SEG_FILENAME)
    files.append(sr)
    return files


@dataclasses.dataclass
class _Item:
    path: Path
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""
    error: str = ""

    def row(self, stored: bool, status: str, message: str = "") -> SentObject:
        return SentObject(
            self.path, self.sop_class_uid, self.sop_instance_uid, stored, status, message
        )


def _headers(paths: Sequence[Path]) -> list[_Item]:
    """Identity and transfer syntax of each file; unreadable files carry their error."""
    import pydicom

    items = []
    for path in paths:
        item = _Item(Path(path))
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            item.sop_class_uid = str(ds.SOPClassUID)
            item.sop_instance_uid = str(ds.SOPInstanceUID)
            item.transfer_syntax_uid = str(ds.file_meta.TransferSyntaxUID)
        except Exception as e:  # any unreadable file is reported in its row, not raised
            item.error = f"the file could not be read as DICOM ({type(e).__name__}: {e})"
        items.append(item)
    return items


def _contexts(items: Sequence[_Item]) -> list[tuple[str, list[str]]]:
    """Presentation contexts to propose, as few as will carry every object.

    One per SOP class for uncompressed data, offering the file's syntax and both
    little-endian ones (pynetdicom converts between them), and one per compressed syntax.
    """
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    contexts: dict[tuple[str, str], list[str]] = {}
    for item in items:
        if item.error:
            continue
        syntax = UID(item.transfer_syntax_uid)
        if syntax.is_compressed or not syntax.is_little_endian:
            contexts.setdefault((item.sop_class_uid, syntax), [syntax])
            continue
        offered = contexts.setdefault((item.sop_class_uid, "uncompressed"), [])
        for uid in (syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if uid not in offered:
                offered.append(uid)
    return [(sop_class, syntaxes) for (sop_class, _), syntaxes in contexts.items()]


def _unreachable(destination: Destination, timeout: float) -> str:
    """Why no association could be opened, as precisely as a TCP connect can tell."""
    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        return (
            f"cannot connect to {destination.host}:{destination.port} ({reason}); check that "
            "the node is running and the host and port are right"
        )
    return (
        f"{destination} accepted the connection but no association was established (no "
        "answer within the timeout, or an answer that is not DICOM); check the port"
    )


def _status_text(status) -> tuple[bool, str, str]:
    """(stored, code, words) of a C-STORE response status dataset."""
    from pynetdicom.status import code_to_category

    if status is None or "Status" not in status:
        return False, "none", "no answer from the destination (timeout or connection lost)"
    code = int(status.Status)
    category = code_to_category(code)
    words = str(status.get("ErrorComment", "") or "")
    match category:
        case "Success":
            return True, f"0x{code:04X}", words
        case "Warning":
            return True, f"0x{code:04X}", f"stored with a warning: {words or 'no comment'}"
        case _:
            return False, f"0x{code:04X}", f"refused by the destination ({category}) {words}"


def send_outputs(
    out_dir: str | os.PathLike,
    destination: str | Destination,
    *,
    calling_aet: str = "MEDSI",
    source_series: bool = True,
    timeout: float = 30.0,
    log: Callable[[str], None] = lambda _: None,
) -> SendResult:
    """Send an output folder's DICOM objects by C-STORE over one association.

    Parameters
    ----------
    out_dir
        Output folder of ``medsi run`` (see :func:`output_objects`).
    destination
        ``AET@HOST:PORT`` or a :class:`~medsi.pacs.destination.Destination`.
    calling_aet
        Our AE title, which the destination may have to know.
    source_series
        Also send the converted source series of a NIfTI input.
    timeout
        Seconds for the connection, the association and each response.
    log
        Receives one line per association event.

    Returns
    -------
    SendResult
        One row per object; objects not stored say why (association refused, presentation
        context not accepted, failure status, no answer).

    Raises
    ------
    ConfigError
        If the folder is not an output folder, the destination cannot be parsed, or
        ``calling_aet`` is not a valid AE title.
    """
    from pynetdicom import AE, evt
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    if not isinstance(destination, Destination):
        destination = parse_destination(destination)
    calling_aet = check_ae_title(calling_aet, "calling_aet")
    folder = Path(out_dir)
    items = _headers(output_objects(folder, source_series=source_series))
    contexts = _contexts(items)
    rows: dict[int, SentObject] = {
        i: item.row(False, _NOT_SENT, item.error) for i, item in enumerate(items) if item.error
    }

    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    rejection: list[str] = []
    connected: list[bool] = []

    def on_connect(event) -> None:
        connected.append(True)

    def on_acse(event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            rejection.append(
                f"{primitive.result_str.lower()} by the {primitive.source_str.lower()}: "
                f"{primitive.reason_str.lower()}"
            )

    log(f"associating {calling_aet} -> {destination} for {len(items)} object(s)")
    assoc = (
        ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            evt_handlers=[(evt.EVT_ACSE_RECV, on_acse), (evt.EVT_CONN_OPEN, on_connect)],
        )
        if contexts
        else None
    )
    if assoc is None or not assoc.is_established:
        if assoc is None:
            reason = "no readable object to send"
        elif not connected:
            reason = _unreachable(destination, timeout)
        elif assoc.is_rejected:
            detail = rejection[0] if rejection else "no reason given"
            reason = (
                f"{destination} refused the association ({detail}); ask its administrator to "
                f"accept the calling AE title {calling_aet!r} (--calling-aet) and the called "
                f"title {destination.ae_title!r}"
            )
        elif assoc.is_aborted:
            reason = (
                f"{destination} aborted the association: it accepts none of the SOP classes "
                "offered, or does not know us"
            )
        else:
            reason = f"{destination} did not answer the association request within {timeout:g} s"
        log(f"not sent: {reason}")
        for i, item in enumerate(items):
            rows.setdefault(i, item.row(False, _NOT_SENT, reason))
        return SendResult(str(destination), folder, tuple(rows[i] for i in range(len(items))))

    ended = ""  # why the association ended early: the objects left are not sent
    try:
        for i, item in enumerate(items):
            if i in rows:
                continue
            if ended or not assoc.is_established:
                ended = ended or f"{destination} ended the association before this object"
                rows[i] = item.row(False, _NOT_SENT, ended)
                continue
            try:
                status = assoc.send_c_store(item.path)
            except ValueError as e:  # no accepted presentation context for this object
                rows[i] = item.row(
                    False,
                    _NOT_SENT,
                    f"{destination} does not accept {_class_name(item.sop_class_uid)} in "
                    f"this transfer syntax ({e})",
                )
                continue
            stored, code, words = _status_text(status)
            if code == "none":  # no answer: the association is over
                words = ended = (
                    f"{destination} closed the association or did not answer within "
                    f"{timeout:g} s; it may not accept objects from the calling AE title "
                    f"{calling_aet!r} (ask its administrator to add it) or be overloaded"
                )
            rows[i] = item.row(stored, code, words.strip())
    finally:
        if assoc.is_established:
            if ended:
                assoc.abort()
            else:
                assoc.release()
    result = SendResult(str(destination), folder, tuple(rows[i] for i in range(len(items))))
    log(f"{len(result.stored)} of {len(items)} object(s) stored in {destination}")
    return result


def stow_outputs(
    out_dir: str | os.PathLike,
    url: str,
    *,
    source_series: bool = True,
    timeout: float = 60.0,
    per_request: int = 32,
    headers: dict[str, str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> SendResult:
    """Send an output folder's DICOM objects by DICOMweb STOW-RS.

    Parameters
    ----------
    out_dir
        Output folder of ``medsi run`` (see :func:`output_objects`).
    url
        The DICOMweb root, e.g. ``"http://127.0.0.1:8042/dicom-web"``; objects are posted
        to ``URL/studies``.
    source_series
        Also send the converted source series of a NIfTI input.
    timeout
        Seconds per HTTP request.
    per_request
        Objects per request (a large series goes in several requests).
    headers
        Extra HTTP headers, e.g. an ``Authorization`` header.
    log
        Receives one line per request.

    Returns
    -------
    SendResult
        An object is stored only when the response lists it in its Referenced SOP Sequence
        and not in its Failed SOP Sequence.

    Raises
    ------
    ConfigError
        If the folder is not an output folder, ``url`` is not an http(s) URL, or
        ``per_request`` is not positive.
    """
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(
            f'"url" must be the http(s) root of a DICOMweb service, got {url!r}; pass e.g. '
            '"http://127.0.0.1:8042/dicom-web".'
        )
    if not (isinstance(per_request, int) and per_request >= 1):
        raise ConfigError(f'"per_request" must be a positive integer, got {per_request!r}.')
    folder = Path(out_dir)
    items = _headers(output_objects(folder, source_series=source_series))
    client = DICOMwebClient(url=url.rstrip("/"), headers=headers, timeout=timeout)
    # a busy server (429, 503) gets two more tries, seconds apart, not the default 30 s
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)
    rows: dict[int, SentObject] = {
        i: item.row(False, _NOT_SENT, item.error) for i, item in enumerate(items) if item.error
    }
    todo = [i for i in range(len(items)) if i not in rows]
    for start in range(0, len(todo), per_request):
        chunk = todo[start : start + per_request]
        code, response, problem = "", None, ""
        try:
            datasets = [pydicom.dcmread(items[i].path) for i in chunk]
            response = client.store_instances(datasets)
            code = "HTTP 200"
        except requests.HTTPError as e:
            code = f"HTTP {e.response.status_code}"
            problem = f"the server answered {e.response.status_code} {e.response.reason}"
            response = _stow_response(e.response)
        except (requests.RequestException, OSError, ValueError) as e:
            code = _NOT_SENT
            problem = f"could not post to {url} ({type(e).__name__}: {e}); check the URL"
        referenced = _uids(response, "ReferencedSOPSequence")
        failed = {
            uid: f"failure reason 0x{int(reason):04X}" if reason is not None else "failed"
            for uid, reason in _uids(response, "FailedSOPSequence", "FailureReason").items()
        }
        for i in chunk:
            item = items[i]
            uid = item.sop_instance_uid
            if uid in failed:
                rows[i] = item.row(False, code, f"in the Failed SOP Sequence: {failed[uid]}")
            elif uid in referenced:
                warning = referenced[uid]
                note = f"warning reason 0x{int(warning):04X}" if warning is not None else ""
                rows[i] = item.row(True, code, note)
            else:
                reason = problem or "the server's response does not list it"
                rows[i] = item.row(False, code, reason)
        log(f"STOW-RS request of {len(chunk)} object(s) to {url}: {code}")
    return SendResult(url, folder, tuple(rows[i] for i in range(len(items))))


def _stow_response(response):
    """The DICOM JSON body of a STOW-RS error response, or None."""
    import pydicom

    try:
        return pydicom.Dataset.from_json(response.json())
    except Exception:  # any body that is not DICOM JSON: nothing to learn from it
        return None


def _uids(response, sequence: str, reason: str = "WarningReason") -> dict[str, int | None]:
    """SOP Instance UIDs listed in a STOW-RS response sequence, with their reason codes."""
    if response is None:
        return {}
    out = {}
    for item in response.get(sequence, None) or []:
        uid = item.get("ReferencedSOPInstanceUID", None)
        if uid:
            value = item.get(reason, None)
            out[str(uid)] = None if value in (None, "") else int(value)
    return out
