"""``medsi serve``: a DICOM node that analyses the series it receives and forwards the results.

The node is a C-STORE and C-ECHO SCP (pynetdicom). What happens to a series:

1. Each instance is checked (decodable, MR or CT image of the negotiated SOP class, valid
   Series and SOP Instance UIDs, pixel data) and written atomically to
   ``SPOOL/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; a bad instance gets a failure
   status (PS3.4 B.2.3: 0xC000 cannot understand, 0xA900 does not match the SOP class,
   0xA700 out of resources) and the node goes on serving.
2. Once no instance of the series has arrived for ``quiet_seconds``, one worker thread
   analyses it (:func:`~medsi.pipeline.run.analyse_scan`, one series after the other) and
   writes the outputs to ``OUT/<SeriesInstanceUID>/`` (:func:`~medsi.pipeline.run.write_outputs`).
3. The SEG and SR (not the source series, which came from the sender) are sent to the
   forward destination by C-STORE (:func:`~medsi.pacs.send.send_outputs`). Only when every
   object is stored is the spooled series removed; otherwise it is kept and sending is
   tried again every ``retry_seconds``.

``OUT/<uid>/serve.json`` records which instances were analysed and whether the results were
sent, so a node restarted on the same spool sends results already made without analysing
again, and analyses the rest. Folder names are UIDs checked against the UID syntax
(PS3.5 9.1): a received value never becomes a path unchecked.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from medsi.atomic import atomic_write_text
from medsi.errors import ConfigError, MedsiError, PacsError
from medsi.pacs.destination import Destination, check_ae_title, parse_destination

__all__ = ["NodeConfig", "DicomNode", "SeriesOutcome", "ACCEPTED_SOP_CLASSES", "STATE_FILENAME"]

ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
}
"""Storage SOP classes the node accepts: classic single-frame images, which medsi reads."""

STATE_FILENAME = "serve.json"
"""Record of the node's work on one series, in that series' results folder."""

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_INCOMING = ".incoming"  # temporary files of instances being written, inside the spool

# C-STORE failure statuses (PS3.4 B.2.3)
_OUT_OF_RESOURCES = 0xA700
_DOES_NOT_MATCH = 0xA900
_CANNOT_UNDERSTAND = 0xC000


def _is_uid(value) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.match(value))


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """Where and how a :class:`DicomNode` listens, keeps data and forwards results.

    Parameters
    ----------
    out
        Results folder: one ``<SeriesInstanceUID>/`` per analysed series.
    spool
        Received instances until their results are sent; None: ``out/spool``.
    ae_title
        The node's AE title (called title of incoming associations, calling title when it
        forwards).
    port
        TCP port; 0 lets the system choose a free one (see :attr:`DicomNode.port`).
    bind
        Address to listen on. The default ``127.0.0.1`` accepts only this machine; pass
        ``0.0.0.0`` (or a network interface's address) for a PACS on another host.
    forward
        ``AET@HOST:PORT`` (or a :class:`Destination`) that receives the SEG and SR; None keeps
        the results in ``out`` only.
    allow
        Calling AE titles accepted (exact, case-sensitive); empty accepts any.
    quiet_seconds
        How long a series must receive nothing before it is analysed.
    retry_seconds
        Wait before sending again after a failed forward (or an unexpected error).
    send_timeout
        Seconds for the forward's connection, association and each response.

    Raises
    ------
    ConfigError
        If a title, the destination, the port or a duration is not valid.
    """

    out: Path
    spool: Path | None = None
    ae_title: str = "MEDSI"
    port: int = 11112
    bind: str = "127.0.0.1"
    forward: Destination | str | None = None
    allow: tuple[str, ...] = ()
    quiet_seconds: float = 30.0
    retry_seconds: float = 60.0
    send_timeout: float = 30.0

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "out", Path(self.out))
        set_(self, "spool", Path(self.spool) if self.spool is not None else self.out / "spool")
        set_(self, "ae_title", check_ae_title(self.ae_title, "ae_title"))
        if isinstance(self.forward, str):
            set_(self, "forward", parse_destination(self.forward))
        if isinstance(self.allow, str):
            raise TypeError('"allow" must be a sequence of AE titles, not one str.')
        set_(self, "allow", tuple(check_ae_title(a, "allow") for a in self.allow))
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigError(
                f'"port" must be an integer in 0-65535 (0: any free port), got {self.port!r}; '
                "pass e.g. 11112."
            )
        for name in ("quiet_seconds", "retry_seconds", "send_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f'"{name}" must be a number of seconds >= 0, got {value!r}.')


@dataclasses.dataclass(frozen=True)
class SeriesOutcome:
    """What the node did with one series (one entry per attempt).

    Attributes
    ----------
    series_instance_uid
        The series.
    state
        ``"sent"`` (results stored at the forward destination, spool removed), ``"kept"``
        (no forward destination: results written, spool removed), ``"forward-failed"``
        (results written, spool kept, sending tried again), ``"analysis-failed"`` (spool kept
        until new instances arrive), ``"superseded"`` (instances arrived meanwhile: the series
        waits for quiet again), ``"error"`` (an unexpected error, e.g. a full disk: spool
        kept, tried again).
    results
        The series' results folder, when written.
    message
        Details in words.
    instances
        Instances analysed.
    first_received, finished
        Wall-clock times (``time.time()``) of the first spooled instance and of this outcome.
    send
        The forward's per-object result, when one was tried.
    """

    series_instance_uid: str
    state: str
    results: Path | None
    message: str
    instances: int
    first_received: float
    finished: float
    send: object | None = None


@dataclasses.dataclass
class _Series:
    uid: str
    folder: Path
    instances: set[str]
    first_received: float
    due: float  # monotonic time from which the worker may take it
    generation: int = 1  # bumped by every stored instance
    analysed: int | None = None  # generation whose results are written but not yet sent
    failed: int | None = None  # generation whose analysis failed for a reason in the data
    busy: bool = False


@dataclasses.dataclass
class _AssociationCount:
    calling: str
    address: str
    stored: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: int = 0


class DicomNode:
    """A DICOM node: receives series, analyses each once quiet, forwards the SEG and SR.

    Use :meth:`start` and :meth:`stop`, or the node as a context manager::

        with DicomNode(NodeConfig(out="results", port=0, forward="PACS@pacs:104")) as node:
            print(node.port)

    Parameters
    ----------
    config
        Addresses, folders and timings.
    bundle
        A :class:`~medsi.model.ModelBundle` or the folder of one; None: the default bundle.
    settings
        Options of each analysis (:class:`~medsi.pipeline.settings.RunSettings`).
    log
        Receives one line per association, series and result; called from several threads.
    analysis_log
        Receives the analysis' stage messages (prefixed with the series); None: ``log``.
    """

    def __init__(
        self,
        config: NodeConfig,
        bundle=None,
        settings=None,
        *,
        log: Callable[[str], None] = lambda _: None,
        analysis_log: Callable[[str], None] | None = None,
    ):
        from medsi.pipeline.settings import RunSettings

        if not isinstance(config, NodeConfig):
            raise TypeError(f'"config" must be a NodeConfig, got {type(config).__name__}.')
        self.config = config
        self.settings = settings or RunSettings()
        self._bundle_source = bundle
        self.bundle = None
        self._log = log
        self._analysis_log = log if analysis_log is None else analysis_log
        self._cond = threading.Condition()
        self._series: dict[str, _Series] = {}
        self._associations: dict[int, _AssociationCount] = {}
        self._outcomes: list[SeriesOutcome] = []
        self._stopping = False
        self._ae = None
        self._server = None
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    @property
    def port(self) -> int:
        """The port the node listens on (the chosen one when the config says 0)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        """The node is listening."""
        return self._server is not None

    def start(self) -> DicomNode:
        """Load the model, pick up spooled series and start listening.

        Returns
        -------
        DicomNode
            The node itself.

        Raises
        ------
        PacsError
            If the node runs already, or the address cannot be listened on (port taken,
            address not on this machine, port below 1024 without the right).
        ConfigError
            If the bundle is not an MRI bundle.
        """
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        from medsi.model import load_bundle
        from medsi.pipeline.run import default_bundle_path, grid_of_bundle

        if self._server is not None:
            raise PacsError("the node is running already; call stop() before start().")
        cfg = self.config
        bundle = self._bundle_source
        if bundle is None or isinstance(bundle, str | os.PathLike):
            bundle = load_bundle(default_bundle_path() if bundle is None else bundle)
        grid_of_bundle(bundle)  # refuses a bundle not made for MRI, before anything arrives
        self.bundle = bundle
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.spool / _INCOMING).mkdir(parents=True, exist_ok=True)
        self._recover()

        ae = AE(ae_title=cfg.ae_title)
        ae.require_calling_aet = list(cfg.allow)
        ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        try:
            self._server = ae.start_server((cfg.bind, cfg.port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise PacsError(
                f"cannot listen on {cfg.bind}:{cfg.port} ({e.strerror or e}); choose another "
                "--port (another program may use it; ports below 1024 need privileges) or "
                "--bind an address of this machine."
            ) from e
        self._ae = ae
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="medsi-serve-worker", daemon=True)
        self._worker.start()
        self._log(
            f"listening as {cfg.ae_title} on {cfg.bind}:{self.port}; spool {cfg.spool}, "
            f"results {cfg.out}; series analysed after {cfg.quiet_seconds:g} s without "
            "new instances"
        )
        if cfg.allow:
            self._log(f"accepting calling AE titles: {', '.join(cfg.allow)}")
        else:
            self._log(
                "accepting any calling AE title (no --allow list): pass --allow AET for each "
                "sender to refuse the others"
            )
        if cfg.forward is None:
            self._log("no forward destination: results stay in the results folder")
        else:
            self._log(f"forwarding SEG and SR to {cfg.forward}")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop listening, then let the worker finish the analysis in progress.

        Open associations are aborted; spooled series stay for the next start.

        Parameters
        ----------
        timeout
            Seconds to wait for the worker; None waits until it is done.
        """
        if self._server is None:
            return
        self._ae.shutdown()
        self._server = None
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        self._log(f"stopped {self.config.ae_title}; spooled series: {len(self.pending())}")

    def __enter__(self) -> DicomNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ what tests and CLIs see

    def outcomes(self) -> list[SeriesOutcome]:
        """Every outcome so far, oldest first (a copy)."""
        with self._cond:
            return list(self._outcomes)

    def pending(self) -> dict[str, int]:
        """Spooled series not yet done: SeriesInstanceUID -> instances received."""
        with self._cond:
            return {uid: len(s.instances) for uid, s in self._series.items()}

    # ------------------------------------------------------------------ SCP event handlers

    def _on_established(self, event) -> None:
        assoc = event.assoc
        count = _AssociationCount(
            assoc.requestor.ae_title, f"{assoc.requestor.address}:{assoc.requestor.port}"
        )
        with self._cond:
            self._associations[id(assoc)] = count
        self._log(f"association from {count.calling} ({count.address}) accepted")

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        calling = requestor.ae_title
        if self.config.allow and calling not in self.config.allow:
            why = "its calling AE title is not on the allow list (--allow)"
        else:
            why = "too many associations at once, or the called AE title does not match"
        self._log(f"association from {calling} ({requestor.address}) refused: {why}")

    def _on_closed(self, event) -> None:
        with self._cond:
            count = self._associations.pop(id(event.assoc), None)
        if count is None:
            return
        how = "released" if event.event.name == "EVT_RELEASED" else "aborted"
        stored = sum(count.stored.values())
        series = ", ".join(f"{uid}: {n}" for uid, n in count.stored.items())
        self._log(
            f"association from {count.calling} {how}: {stored} instance(s) stored"
            + (f" (series {series})" if series else "")
            + (f", {count.refused} refused" if count.refused else "")
        )

    def _on_echo(self, event) -> int:
        return 0x0000

    def _refuse(self, event, code: int, why: str):
        """A failure status with a comment, logged and counted."""
        from pydicom import Dataset

        with self._cond:
            count = self._associations.get(id(event.assoc))
            if count is not None:
                count.refused += 1
        self._log(f"refused an instance from {event.assoc.requestor.ae_title}: {why}")
        status = Dataset()
        status.Status = code
        status.ErrorComment = why[:64]
        return status

    def _on_store(self, event):
        """Check one instance, spool it atomically and note the series as active."""
        context_class = str(event.context.abstract_syntax)
        try:
            ds = event.dataset
            sop_class = str(ds.get("SOPClassUID", ""))
            series = ds.get("SeriesInstanceUID", None)
            instance = ds.get("SOPInstanceUID", None)
            has_pixels = "PixelData" in ds and "Rows" in ds
        except Exception as e:  # whatever the decoder says, the sender gets a status
            return self._refuse(event, _CANNOT_UNDERSTAND, f"undecodable ({type(e).__name__})")
        if sop_class != context_class or sop_class not in ACCEPTED_SOP_CLASSES:
            return self._refuse(event, _DOES_NOT_MATCH, f"SOP class {sop_class or 'missing'}")
        if not _is_uid(None if series is None else str(series)):
            return self._refuse(event, _DOES_NOT_MATCH, "no valid SeriesInstanceUID")
        if not _is_uid(None if instance is None else str(instance)):
            return self._refuse(event, _DOES_NOT_MATCH, "no valid SOPInstanceUID")
        if not has_pixels:
            return self._refuse(event, _DOES_NOT_MATCH, "no pixel data")
        series, instance = str(series), str(instance)
        spool = self.config.spool
        tmp = spool / _INCOMING / f"{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(event.encoded_dataset(include_meta=True))
                f.flush()
                os.fsync(f.fileno())
            with self._cond:
                folder = spool / series
                folder.mkdir(exist_ok=True)
                os.replace(tmp, folder / f"{instance}.dcm")
                self._note_instance(series, instance, folder)
                count = self._associations.get(id(event.assoc))
                if count is not None:
                    count.stored[series] = count.stored.get(series, 0) + 1
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return self._refuse(event, _OUT_OF_RESOURCES, f"cannot spool ({e.strerror or e})")
        return 0x0000

    def _note_instance(self, series: str, instance: str, folder: Path) -> None:
        """Record an instance (caller holds the lock); the series waits for quiet again."""
        now = time.monotonic()
        entry = self._series.get(series)
        if entry is None:
            entry = self._series[series] = _Series(series, folder, set(), time.time(), now)
        entry.instances.add(instance)
        entry.generation += 1
        entry.due = now + self.config.quiet_seconds
        self._cond.notify_all()

    # ------------------------------------------------------------------ spool on restart

    def _recover(self) -> None:
        """Pick up spooled series; results already made for the same instances are reused."""
        spool = self.config.spool
        for leftover in (spool / _INCOMING).glob("*.tmp"):
            leftover.unlink(missing_ok=True)  # an instance whose store never completed
        due = time.monotonic() + self.config.quiet_seconds
        for folder in sorted(spool.iterdir()):
            if not folder.is_dir() or not _is_uid(folder.name):
                continue
            instances = {p.stem for p in folder.glob("*.dcm")}
            if not instances:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            mtime = max(p.stat().st_mtime for p in folder.glob("*.dcm"))
            entry = _Series(folder.name, folder, instances, mtime, due)
            state = self._read_state(folder.name)
            same = state is not None and set(state.get("instances", [])) == instances
            if same and state.get("state") == "analysed":
                entry.analysed = entry.generation
                note = "results made before, to be sent"
            elif same and state.get("state") == "analysis-failed":
                entry.failed = entry.generation
                note = (
                    f"its analysis failed before ({state.get('message', '')}); it waits for new "
                    f"instances (delete {folder} to drop it)"
                )
            else:
                note = "to be analysed"
            self._series[folder.name] = entry
            self._log(f"spooled series {folder.name} ({len(instances)} instance(s)): {note}")

    def _read_state(self, uid: str) -> dict | None:
        path = self.config.out / uid / STATE_FILENAME
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _write_state(self, uid: str, instances: set[str], state: str, message: str, send=None):
        record = {
            "series_instance_uid": uid,
            "state": state,
            "message": message,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "forward": None if self.config.forward is None else str(self.config.forward),
            "instances": sorted(instances),
        }
        if send is not None:
            record["objects"] = [
                {
                    "file": o.path.name,
                    "sop_class_uid": o.sop_class_uid,
                    "sop_instance_uid": o.sop_instance_uid,
                    "stored": o.stored,
                    "status": o.status,
                    "message": o.message,
                }
                for o in send.objects
            ]
        atomic_write_text(self.config.out / uid / STATE_FILENAME, json.dumps(record, indent=2))

    # ------------------------------------------------------------------ the worker

    def _next_due(self) -> tuple[_Series | None, float]:
        """The quiet series to take now (oldest first), else how long to wait."""
        now = time.monotonic()
        ready = [
            s
            for s in self._series.values()
            if not s.busy and s.failed != s.generation and s.due <= now
        ]
        if ready:
            return min(ready, key=lambda s: s.due), 0.0
        waiting = [s.due for s in self._series.values() if s.failed != s.generation]
        return None, min([max(0.05, d - now) for d in waiting], default=1.0)

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                entry, wait = self._next_due()
                if entry is None:
                    self._cond.wait(min(wait, 1.0))
                    continue
                entry.busy = True
                generation, instances = entry.generation, set(entry.instances)
            try:
                self._process(entry, generation, instances)
            except Exception as e:  # the worker must outlive any one series
                with self._cond:
                    entry.due = time.monotonic() + self.config.retry_seconds
                message = (
                    f"unexpected {type(e).__name__}: {' '.join(str(e).split())}; the series "
                    f"stays spooled, next try in {self.config.retry_seconds:g} s"
                )
                self._finish(entry, generation, instances, "error", None, message)
            finally:
                with self._cond:
                    entry.busy = False

    def _process(self, entry: _Series, generation: int, instances: set[str]) -> None:
        from medsi.pipeline.run import analyse_scan, write_outputs

        cfg = self.config
        uid = entry.uid
        results = cfg.out / uid
        if entry.analysed != generation:
            self._log(f"series {uid}: quiet, analysing {len(instances)} instance(s)")
            start = time.perf_counter()
            try:
                analysis = analyse_scan(
                    entry.folder,
                    self.bundle,
                    self.settings,
                    series=uid,
                    progress=False,
                    log=lambda m: self._analysis_log(f"series {uid}: {m}"),
                )
                write_outputs(analysis, results)
            except MedsiError as e:  # the data cannot be analysed: wait for new instances
                message = " ".join(str(e).split())
                with self._cond:
                    entry.failed = generation
                self._write_state(uid, instances, "analysis-failed", message)
                self._finish(
                    entry,
                    generation,
                    instances,
                    "analysis-failed",
                    None,
                    f"{message}; the series stays in {entry.folder} until new instances arrive "
                    "(or delete the folder)",
                )
                return
            summary = analysis.report()["summary"]
            self._log(f"series {uid}: {summary} ({time.perf_counter() - start:.1f} s)")
            with self._cond:
                if entry.generation != generation:
                    self._finish_superseded(entry, generation, instances)
                    return
                entry.analysed = generation
            self._write_state(uid, instances, "analysed", summary)

        if cfg.forward is None:
            if self._drop_spool(entry, generation):
                self._write_state(uid, instances, "kept", "no forward destination")
                self._finish(entry, generation, instances, "kept", results, f"results in {results}")
            return

        send = _send_results(results, cfg, log=lambda m: self._log(f"series {uid}: {m}"))
        if not send.ok:
            failed = send.failed
            reasons = "; ".join(sorted({o.message for o in failed if o.message})) or "no reason"
            with self._cond:
                entry.due = time.monotonic() + cfg.retry_seconds
            self._write_state(uid, instances, "analysed", f"forward failed: {reasons}", send)
            self._finish(
                entry,
                generation,
                instances,
                "forward-failed",
                results,
                f"{len(failed)} of {len(send.objects)} object(s) not stored in {cfg.forward} "
                f"({reasons}); the series stays spooled, next try in {cfg.retry_seconds:g} s",
                send,
            )
            return
        if not self._drop_spool(entry, generation):
            self._finish_superseded(entry, generation, instances, send)
            return
        self._write_state(uid, instances, "sent", f"stored in {cfg.forward}", send)
        self._finish(
            entry,
            generation,
            instances,
            "sent",
            results,
            f"{len(send.objects)} object(s) stored in {cfg.forward}; results in {results}",
            send,
        )

    def _drop_spool(self, entry: _Series, generation: int) -> bool:
        """Remove a done series from the spool, unless instances arrived meanwhile."""
        with self._cond:
            if entry.generation != generation:
                return False
            retired = self.config.spool / _INCOMING / f"done-{uuid.uuid4().hex}"
            os.replace(entry.folder, retired)  # a new instance would make a fresh folder
            del self._series[entry.uid]
        shutil.rmtree(retired, ignore_errors=True)
        return True

    def _finish_superseded(self, entry, generation, instances, send=None) -> None:
        self._finish(
            entry,
            generation,
            instances,
            "superseded",
            None,
            "new instances arrived during the work; the series is analysed again once quiet",
            send,
        )

    def _finish(self, entry, generation, instances, state, results, message, send=None) -> None:
        outcome = SeriesOutcome(
            entry.uid, state, results, message, len(instances), entry.first_received, time.time()
        )
        outcome = dataclasses.replace(outcome, send=send)
        with self._cond:
            self._outcomes.append(outcome)
        self._log(f"series {entry.uid}: {state}: {message}")


def _send_results(results: Path, cfg: NodeConfig, log):
    from medsi.pacs.send import send_outputs

    return send_outputs(
        results,
        cfg.forward,
        calling_aet=cfg.ae_title,
        source_series=False,
        timeout=cfg.send_timeout,
        log=log,
    )
