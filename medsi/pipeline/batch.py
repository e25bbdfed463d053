"""``medsi batch``: every scan of an archive through ``medsi run``, resumable (DESIGN.md 5).

:func:`run_batch` lists the scans (:func:`~medsi.pipeline.archive.find_scans`), runs each
through :func:`~medsi.pipeline.run.analyse_scan` and
:func:`~medsi.pipeline.run.write_outputs` into ``OUT/<scan id>/``, and keeps
``OUT/manifest.json`` up to date after every scan (written atomically), so a batch that is
killed loses at most the scans in flight. The manifest records each scan's state
(``done``, ``failed`` with the file and the error, ``pending``), its output folder and the
settings hash; files that are not scans are listed as skipped. A re-run reuses a scan that
is done with the same settings hash and unchanged input files, and analyses again every
other one. One broken scan never stops the batch: its error is recorded and the rest go
on. At the end ``summary.csv`` (one row per lesion, one per scan without findings, one per
failed scan) and ``summary.json`` are written.

Executors: one scan after the other in this process (``workers=1``), a pool of local
processes (``workers > 1``, started with "spawn"), or a Dask distributed cluster
(``scheduler``: an address, or ``"local"`` for a :class:`distributed.LocalCluster`). Every
executor runs the same task function, :func:`analyse_task`: it loads the model bundle
from its folder (once per process), uses one torch thread, and writes the scan's outputs
itself. So the reports are identical whichever executor ran them, and a Dask cluster must
see the archive and the output folder at the same paths as this machine (a shared file
system).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from medsi import __version__
from medsi.atomic import atomic_write_text
from medsi.errors import ConfigError, MedsiError
from medsi.pipeline.archive import ScanSource, SkippedFile, find_scans
from medsi.pipeline.settings import RunSettings

__all__ = [
    "BatchResult",
    "ScanTask",
    "run_batch",
    "analyse_task",
    "settings_hash",
    "MANIFEST",
    "SUMMARY_CSV",
    "SUMMARY_JSON",
    "SUMMARY_COLUMNS",
]

MANIFEST = "manifest.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
_STAGING = ".series"  # OUT/.series/<scan id>: links to the files of a series read from there
_MANIFEST_FORMAT = 1

SUMMARY_COLUMNS = (
    "scan_id",
    "state",
    "result",
    "kind",
    "source",
    "series_instance_uid",
    "lesion_id",
    "model_planes",
    "native_slices",
    "voxels",
    "volume_mm3",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "mean_difference",
    "z",
    "p_naive",
    "p_oc",
    "p_selective",
    "p_selective_lower",
    "p_selective_upper",
    "p_method",
    "p_holm",
    "significant",
    "output",
    "error",
)
"""Columns of ``summary.csv``. ``result`` is ``lesion``, ``no findings`` or ``failed``;
lesion columns are empty on the other rows; centroids are RAS+ mm."""


_EXECUTION_ONLY = ("search_workers", "search_scheduler")
"""RunSettings fields that say how a search is spread over processes, not what it computes
(the p-values do not change): left out of the settings hash, so changing them redoes
nothing."""


def settings_hash(settings: RunSettings, bundle_hash: str) -> str:
    """sha256 of the run's options (those that change results) and the bundle's content hash.

    A scan done under another hash is analysed again on a re-run. ``search_workers`` and
    ``search_scheduler`` are left out: they change how long a search takes, not its result.

    Parameters
    ----------
    settings
        The options of every scan's analysis.
    bundle_hash
        :attr:`medsi.model.ModelBundle.content_hash` of the bundle used.

    Returns
    -------
    str
        64 hex digits.
    """
    options = {k: v for k, v in settings.to_dict().items() if k not in _EXECUTION_ONLY}
    text = json.dumps({"settings": options, "model": bundle_hash}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class ScanTask:
    """One scan's work, in plain values so that any executor can ship it to a worker.

    Attributes
    ----------
    scan_id
        The scan's identifier (its output folder's name).
    path
        NIfTI file or DICOM folder, as :func:`~medsi.pipeline.run.analyse_scan` takes it.
    series
        SeriesInstanceUID to read from ``path``; None for NIfTI.
    output
        Folder for the scan's outputs.
    settings
        :meth:`RunSettings.to_dict` of the run.
    bundle_path, bundle_hash
        The model bundle's folder and the content hash it must have.
    """

    scan_id: str
    path: str
    series: str | None
    output: str
    settings: dict
    bundle_path: str
    bundle_hash: str


_BUNDLES: dict[str, object] = {}  # bundle folder -> loaded bundle, one load per process


def _bundle(path: str, expected_hash: str):
    from medsi.model import load_bundle

    bundle = _BUNDLES.get(path)
    if bundle is None or bundle.content_hash != expected_hash:  # new, or saved again since
        bundle = _BUNDLES[path] = load_bundle(path)
    if bundle.content_hash != expected_hash:
        raise ConfigError(
            f'the model bundle "{path}" must keep the content hash {expected_hash[:12]} the '
            f"batch started with, got {bundle.content_hash[:12]}; it was changed during the "
            "batch: run the batch again."
        )
    return bundle


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def analyse_task(task: ScanTask) -> dict:
    """Analyse one scan and write its outputs; never raises for a bad scan.

    Runs in whichever process the executor chose, with one torch thread (restored
    afterwards), so that N workers use N cores and every executor computes the same numbers.

    Parameters
    ----------
    task
        What to analyse and where to write it.

    Returns
    -------
    dict
        ``scan_id``, ``state`` (``"done"`` or ``"failed"``), ``seconds``; when done
        ``lesions``, ``significant`` and ``summary``; when failed ``error``: ``file``,
        ``type``, ``message`` and, for errors medsi did not raise on purpose, ``traceback``.
    """
    import torch

    from medsi.pipeline.run import analyse_scan, write_outputs

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundle = _bundle(task.bundle_path, task.bundle_hash)
        settings = RunSettings(**task.settings)
        analysis = analyse_scan(task.path, bundle, settings, series=task.series, progress=False)
        files = write_outputs(analysis, task.output)
        report = json.loads(Path(files["report"]).read_text(encoding="utf-8"))
        return {
            "scan_id": task.scan_id,
            "state": "done",
            "lesions": len(report["lesions"]),
            "significant": sum(bool(lesion["significant"]) for lesion in report["lesions"]),
            "summary": report["summary"],
            "seconds": time.perf_counter() - start,
        }
    except Exception as e:  # one broken scan must not stop the batch: record it instead
        return _failure(task, e, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def _failure(task: ScanTask, error: BaseException, seconds: float = 0.0) -> dict:
    record = {"file": task.path, "type": type(error).__name__, "message": _one_line(error)}
    if not isinstance(error, MedsiError):  # not a message medsi wrote: keep where it came from
        record["traceback"] = "".join(traceback.format_exception(error))
    return {"scan_id": task.scan_id, "state": "failed", "error": record, "seconds": seconds}


def _lost(task: ScanTask, error: BaseException) -> dict:
    """The record of a scan whose worker died or was lost before it could report."""
    result = _failure(task, error)
    result["error"]["message"] = (
        f"the worker analysing this scan stopped before it finished ({type(error).__name__}: "
        f"{_one_line(error)}); run the batch again to redo it (if it stops again, the "
        "worker may run out of memory: use fewer --workers)."
    )
    return result


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pools
    import torch

    torch.set_num_threads(1)


# Executors: each yields (task, result) as scans finish, in any order.


def _run_here(tasks: Sequence[ScanTask]) -> Iterator[tuple[ScanTask, dict]]:
    for task in tasks:
        yield task, analyse_task(task)


def _run_in_processes(tasks: Sequence[ScanTask], workers: int) -> Iterator[tuple[ScanTask, dict]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=multiprocessing.get_context("spawn"),  # no forked torch or thread state
        initializer=_init_worker,
    )
    try:
        futures = {pool.submit(analyse_task, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                yield task, future.result()
            except Exception as e:  # the worker process died (killed, out of memory)
                yield task, _lost(task, e)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_on_dask(
    tasks: Sequence[ScanTask], scheduler: str, workers: int
) -> Iterator[tuple[ScanTask, dict]]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler)  # waits distributed.comm.timeouts.connect (Dask config)
        except (OSError, TimeoutError, ValueError) as e:
            raise ConfigError(
                f'"--scheduler" must be the address of a running Dask scheduler, got '
                f'"{scheduler}", which could not be reached ({_one_line(e)}); check the '
                "address (e.g. tcp://host:8786), pass local to start a cluster here, or leave "
                "it out to use local processes."
            ) from e
    key = f"medsi-batch-{os.getpid()}-{time.time_ns()}"  # unique per run on a shared cluster
    try:
        futures = {
            client.submit(analyse_task, task, key=f"{key}-{task.scan_id}", pure=False): task
            for task in tasks
        }
        for future in as_completed(futures):
            task = futures[future]
            try:
                yield task, future.result()
            except Exception as e:  # the worker was lost, or the task could not be shipped
                yield task, _lost(task, e)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _executor(
    workers: int, scheduler: str | None
) -> Callable[[Sequence[ScanTask]], Iterator[tuple[ScanTask, dict]]]:
    if scheduler:
        return lambda tasks: _run_on_dask(tasks, scheduler, workers)
    if workers > 1:
        return lambda tasks: _run_in_processes(tasks, workers)
    return _run_here


# Manifest


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _read_manifest(out: Path, log: Callable[[str], None]) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(manifest["scans"], dict):
            raise ValueError(f"format {manifest.get('format')!r}, not {_MANIFEST_FORMAT}")
    except (OSError, ValueError, KeyError, AttributeError) as e:
        log(f"{path} could not be used ({_one_line(e)}): every scan is analysed again")
        return {}
    return manifest["scans"]


def _scan_record(source: ScanSource, root: Path, out: Path, digest: str) -> dict:
    return {
        "id": source.scan_id,
        "kind": source.kind,
        "source": source.label,
        "location": str(source.location),
        "series_instance_uid": source.series_instance_uid,
        "files": len(source.files),
        "input_fingerprint": source.fingerprint(root),
        "notes": list(source.notes),
        "state": "pending",
        "output": str(out / source.scan_id),
        "settings_hash": digest,
        "error": None,
        "lesions": None,
        "significant": None,
        "summary": None,
        "seconds": None,
        "finished": None,
    }


def _reusable(previous: dict | None, record: dict, out: Path) -> bool:
    return (
        previous is not None
        and previous.get("state") == "done"
        and previous.get("settings_hash") == record["settings_hash"]
        and previous.get("input_fingerprint") == record["input_fingerprint"]
        and (out / record["id"] / "report.json").is_file()
    )


def _stage_series(source: ScanSource, out: Path) -> Path:
    """Gather a series' files into OUT/.series/<id> (links, or copies where links fail)."""
    folder = out / _STAGING / source.scan_id
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for index, file in enumerate(source.files):
        target = folder / f"{index:05d}.dcm"
        try:
            target.symlink_to(file)
        except OSError:  # file systems or platforms without symbolic links
            shutil.copy2(file, target)
    return folder


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """What :func:`run_batch` did.

    Attributes
    ----------
    output
        The output folder.
    manifest, summary_csv, summary_json
        The files written there.
    scans
        The manifest's record of every scan, by identifier.
    skipped
        Files of the archive that are not scans.
    analysed, reused
        Identifiers of the scans analysed by this run, and of those reused from an earlier
        run with the same settings.
    """

    output: Path
    manifest: Path
    summary_csv: Path
    summary_json: Path
    scans: dict[str, dict]
    skipped: tuple[SkippedFile, ...]
    analysed: tuple[str, ...]
    reused: tuple[str, ...]

    @property
    def failed(self) -> list[dict]:
        """Records of the scans that failed, sorted by identifier."""
        return [r for _, r in sorted(self.scans.items()) if r["state"] == "failed"]

    @property
    def ok(self) -> bool:
        """Whether every scan is done."""
        return not self.failed


def run_batch(
    archive: str | os.PathLike,
    output: str | os.PathLike,
    settings: RunSettings | None = None,
    *,
    model: str | os.PathLike | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> BatchResult:
    """Analyse every scan of an archive, resuming an earlier run into the same folder.

    Parameters
    ----------
    archive
        Folder of NIfTI files and DICOM series, in any layout (see
        :func:`~medsi.pipeline.archive.find_scans`).
    output
        Folder for ``<scan id>/`` result folders, the manifest and the summaries; created
        if needed. If it lies inside ``archive`` it is left out of the search.
    settings
        Options of every scan's analysis; default :class:`RunSettings`.
    model
        Model bundle folder; None uses the default bundle shipped with medsi.
    workers
        Local worker processes (1: in this process), or the workers of the LocalCluster
        when ``scheduler`` is ``"local"``; ignored with the address of a cluster.
    scheduler
        None for local processes; ``"local"`` to start a Dask ``LocalCluster``; or the
        address of a running Dask scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
    force
        Analyse every scan again, even those done with the same settings.
    progress
        Show a progress bar over the scans.
    log
        Receives one-line messages (a scan failed, the manifest could not be used).

    Returns
    -------
    BatchResult

    Raises
    ------
    ConfigError
        If ``archive`` is not a folder, ``output`` is the archive or a folder above it,
        ``workers`` is below 1, or the scheduler cannot be reached.
    InputDataError
        If the model bundle cannot be loaded (no scan could be analysed with it).
    NotPiecewiseLinearError
        If the bundle's model is not piecewise linear.
    """
    from tqdm.auto import tqdm

    from medsi.model import load_bundle
    from medsi.pipeline.run import default_bundle_path

    settings = settings or RunSettings()
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(
            f'"workers" must be a whole number of at least 1, got {workers!r}; pass 1 to '
            "analyse in this process, or the number of CPUs to use."
        )
    out = Path(output).resolve()
    if out == Path(archive).resolve() or out in Path(archive).resolve().parents:
        raise ConfigError(
            f'"output" must not be the archive or a folder above it, got "{output}" for the '
            f'archive "{archive}"; its results would be read as scans; pass another folder.'
        )
    listing = find_scans(archive, exclude=[out])
    bundle_path = Path(model).resolve() if model is not None else default_bundle_path()
    bundle = load_bundle(bundle_path)  # once here: a broken bundle stops the batch before it starts
    _BUNDLES[str(bundle_path)] = bundle  # the in-process executor reuses it
    digest = settings_hash(settings, bundle.content_hash)
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(out, log)

    header = {
        "format": _MANIFEST_FORMAT,
        "medsi_version": __version__,
        "archive": str(listing.root),
        "output": str(out),
        "settings": settings.to_dict(),
        "model": {"path": str(bundle_path), "content_hash": bundle.content_hash},
        "settings_hash": digest,
    }
    scans: dict[str, dict] = {}
    todo: list[ScanSource] = []
    reused: list[str] = []
    for source in listing.scans:
        record = _scan_record(source, listing.root, out, digest)
        old = previous.get(source.scan_id)
        if not force and _reusable(old, record, out):
            # where the scan and its results are now (the folders may have been moved)
            current = {k: record[k] for k in ("source", "location", "notes", "output")}
            scans[source.scan_id] = {**old, **current}
            reused.append(source.scan_id)
        elif source.error is not None:
            error = {"file": str(source.location), "type": "InputDataError"}
            scans[source.scan_id] = {
                **record,
                "state": "failed",
                "error": {**error, "message": source.error},
                "finished": _now(),
            }
        else:
            scans[source.scan_id] = record
            todo.append(source)

    def save() -> Path:
        manifest = {
            **header,
            "updated": _now(),
            "scans": scans,
            "skipped": [
                {"path": s.path, "state": "skipped", "reason": s.reason} for s in listing.skipped
            ],
        }
        return atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    manifest_path = save()  # pending states first: a killed run redoes exactly those
    tasks = []
    for source in todo:
        folder = out / source.scan_id
        if folder.exists():  # results of other settings or of a run killed midway
            shutil.rmtree(folder)
        path = source.location if source.direct else _stage_series(source, out)
        tasks.append(
            ScanTask(
                scan_id=source.scan_id,
                path=str(path),
                series=source.series_instance_uid,
                output=str(folder),
                settings=settings.to_dict(),
                bundle_path=str(bundle_path),
                bundle_hash=bundle.content_hash,
            )
        )

    bar = tqdm(
        total=len(listing.scans),
        initial=len(listing.scans) - len(tasks),
        desc="scans",
        unit="scan",
        disable=not progress,
    )
    analysed = []
    try:
        for task, result in _executor(workers, scheduler)(tasks) if tasks else ():
            record = scans[task.scan_id]
            record.update({k: v for k, v in result.items() if k != "scan_id"}, finished=_now())
            analysed.append(task.scan_id)
            if result["state"] == "failed":
                # the archive's file or folder, not the links a split series is read through
                record["error"]["file"] = record["location"]
                message = f"failed: {task.scan_id} ({record['source']}); the error is in {MANIFEST}"
                if progress:
                    bar.write(message)  # above the bar, not through it
                else:
                    log(message)
            save()
            bar.update(1)
    finally:
        bar.close()
    skipped = listing.skipped
    csv_path, json_path = _write_summaries(out, header, scans, skipped, analysed, reused)
    return BatchResult(
        output=out,
        manifest=manifest_path,
        summary_csv=csv_path,
        summary_json=json_path,
        scans=scans,
        skipped=skipped,
        analysed=tuple(analysed),
        reused=tuple(reused),
    )


# Summaries


def _lesion_row(record: dict, lesion: dict) -> dict:
    lower, upper = lesion["p_selective_bounds"]
    centroid = lesion["centroid_ras_mm"] or [None, None, None]
    return {
        "result": "lesion",
        "lesion_id": lesion["id"],
        "model_planes": " ".join(map(str, lesion["model_planes"])),
        "native_slices": " ".join(map(str, lesion["native_slices"])),
        "voxels": lesion["voxels"],
        "volume_mm3": lesion["volume_mm3"],
        "centroid_x_mm": centroid[0],
        "centroid_y_mm": centroid[1],
        "centroid_z_mm": centroid[2],
        "mean_difference": lesion["mean_difference"],
        "z": lesion["z"],
        "p_naive": lesion["p_naive"],
        "p_oc": lesion["p_oc"],
        "p_selective": lesion["p_selective"],
        "p_selective_lower": lower,
        "p_selective_upper": upper,
        "p_method": lesion["p_method"],
        "p_holm": lesion["p_holm"],
        "significant": lesion["significant"],
    }


def _summary_rows(scans: dict[str, dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    rows: list[dict] = []
    lesions_by_scan: dict[str, list[dict]] = {}
    for scan_id, record in sorted(scans.items()):
        base = {
            "scan_id": scan_id,
            "state": record["state"],
            "kind": record["kind"],
            "source": record["source"],
            "series_instance_uid": record["series_instance_uid"],
            "output": record["output"],
        }
        if record["state"] == "done":
            try:
                report = json.loads((Path(record["output"]) / "report.json").read_text("utf-8"))
                lesions = report["lesions"]
            except (OSError, ValueError, KeyError) as e:  # deleted or edited after the run
                error = f"report.json unreadable ({_one_line(e)}); run the batch with --force"
                rows.append({**base, "result": "failed", "error": error})
                continue
            lesions_by_scan[scan_id] = lesions
            rows.extend({**base, **_lesion_row(record, lesion)} for lesion in lesions)
            if not lesions:
                rows.append({**base, "result": "no findings"})
        else:
            error = record.get("error") or {"message": "not analysed (the run was stopped)"}
            rows.append({**base, "result": "failed", "output": None, "error": error["message"]})
    return rows, lesions_by_scan


def _write_summaries(
    out: Path,
    header: dict,
    scans: dict[str, dict],
    skipped: Sequence[SkippedFile],
    analysed: Sequence[str],
    reused: Sequence[str],
) -> tuple[Path, Path]:
    rows, lesions_by_scan = _summary_rows(scans)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {c: ("" if row.get(c) is None else row.get(c)) for c in SUMMARY_COLUMNS} for row in rows
    )
    csv_path = atomic_write_text(out / SUMMARY_CSV, buffer.getvalue())

    states = [r["state"] for r in scans.values()]
    all_lesions = [lesion for lesions in lesions_by_scan.values() for lesion in lesions]
    summary = {
        **header,
        "created": _now(),
        "counts": {
            "scans": len(scans),
            "done": states.count("done"),
            "failed": states.count("failed"),
            "pending": states.count("pending"),
            "skipped_files": len(skipped),
            "lesions": len(all_lesions),
            "significant": sum(bool(lesion["significant"]) for lesion in all_lesions),
        },
        "this_run": {"analysed": sorted(analysed), "reused": sorted(reused)},
        "scans": [
            {
                key: record.get(key)
                for key in ("id", "state", "kind", "source", "series_instance_uid", "output")
            }
            | {
                "lesions": len(lesions_by_scan.get(scan_id, [])),
                "significant": sum(
                    bool(x["significant"]) for x in lesions_by_scan.get(scan_id, [])
                ),
                "summary": record.get("summary"),
                "notes": record.get("notes", []),
                "error": record.get("error"),
            }
            for scan_id, record in sorted(scans.items())
        ],
        "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        "files": {"manifest": str(out / MANIFEST), "summary_csv": str(csv_path)},
    }
    json_path = atomic_write_text(out / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    return csv_path, json_path
