"""``medsi batch``: analyse every scan of an archive, resumably, locally or on a Dask cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from medsi.cli.run import _common_options

__all__ = ["batch"]

_LISTED_FAILURES = 10  # failures named on the terminal; all of them are in the manifest


def _default_workers() -> int:
    """The CPUs this process may use, at most 8 (each worker uses one torch thread)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))


@click.command()
@click.argument(
    "archive", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="ARCHIVE"
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for one result folder per scan, manifest.json, summary.csv and summary.json.",
)
@_common_options
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=_default_workers,
    show_default="the CPUs available, at most 8",
    help="Local worker processes (1: one scan after the other in this process); with "
    "--scheduler local, the workers of the Dask LocalCluster.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run the scans on a Dask distributed cluster: the scheduler's address (e.g. "
    "tcp://host:8786; the workers must see ARCHIVE and the output folder at the same paths), "
    "or 'local' to start a LocalCluster here.",
)
@click.option("--force", is_flag=True, help="Analyse every scan again, even those already done.")
def batch(archive, output, model, quiet, workers, scheduler, force, **options) -> None:
    """Analyse every scan of ARCHIVE: NIfTI files and DICOM series in any folder layout.

    Each scan's lesions.nii.gz and report.json go to OUTPUT/<scan id>/. The run can be
    stopped and started again: OUTPUT/manifest.json records every scan's state, and a
    re-run with the same settings skips the scans already done and redoes the failed ones.
    Exit status 1 when a scan failed (the errors are in the manifest and summary.json).
    """
    from medsi.pipeline.batch import run_batch
    from medsi.pipeline.settings import RunSettings

    settings = RunSettings(**options)  # the common options are RunSettings' fields
    log = (lambda _: None) if quiet else (lambda m: click.echo(m, err=True))
    result = run_batch(
        archive,
        output,
        settings,
        model=model,
        workers=workers,
        scheduler=scheduler,
        force=force,
        progress=not quiet,
        log=log,
    )
    records = result.scans.values()
    done = sum(r["state"] == "done" for r in records)
    lesions = sum(r.get("lesions") or 0 for r in records if r["state"] == "done")
    significant = sum(r.get("significant") or 0 for r in records if r["state"] == "done")
    failed = result.failed
    click.echo(
        f"{len(result.scans)} scan(s): {len(result.analysed)} analysed now, "
        f"{len(result.reused)} reused from an earlier run; {done} done, {len(failed)} failed; "
        f"{lesions} lesion(s), {significant} significant; "
        f"{len(result.skipped)} file(s) skipped as not scans."
    )
    for record in failed[:_LISTED_FAILURES]:
        click.echo(f"- failed: {record['id']} ({record['source']}): {record['error']['message']}")
    if len(failed) > _LISTED_FAILURES:
        click.echo(f"- and {len(failed) - _LISTED_FAILURES} more failed scan(s)")
    click.echo(f"Wrote {result.summary_csv} and {result.summary_json}.")
    if failed:
        click.echo(
            f"{len(failed)} scan(s) failed; each error is recorded in {result.manifest}; fix "
            "the inputs and run the same command again to redo only those.",
            err=True,
        )
        sys.exit(1)
