"""``medsi send`` and ``medsi serve``: hand results to a PACS, or act as a DICOM node."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medsi.cli.run import _common_options

__all__ = ["send", "serve"]


def _stamped(message: str) -> None:
    import datetime

    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    click.echo(f"{now} {message}", err=True)


@click.command()
@click.argument(
    "out_dir", metavar="OUTDIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--to",
    "destination",
    metavar="AET@HOST:PORT",
    help="Send by DICOM C-STORE to this node, e.g. ORTHANC@127.0.0.1:4242.",
)
@click.option(
    "--stow",
    metavar="URL",
    help="Send by DICOMweb STOW-RS to this root, e.g. http://127.0.0.1:8042/dicom-web.",
)
@click.option(
    "--calling-aet",
    default="MEDSI",
    show_default=True,
    help="Our AE title for C-STORE (the destination may have to know it).",
)
@click.option(
    "--source-series/--no-source-series",
    default=True,
    show_default=True,
    help="Also send source_series/ (the converted MR series of a NIfTI input).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds for the connection and each answer.",
)
@click.option("--quiet", is_flag=True, help="Print only the table.")
def send(out_dir, destination, stow, calling_aet, source_series, timeout, quiet) -> None:
    """Send the DICOM outputs of OUTDIR (a medsi run output folder) to a PACS.

    Sends source_series/ (NIfTI inputs only), lesions_seg.dcm (when there is a lesion) and
    lesions_sr.dcm, by C-STORE (--to) or STOW-RS (--stow), and prints one line per object.
    An object counts as stored only when the receiver confirms it; exit status 1 when any
    object was not stored.
    """
    from medsi.errors import ConfigError
    from medsi.pacs.send import send_outputs, stow_outputs

    if (destination is None) == (stow is None):
        raise click.UsageError("pass exactly one of --to AET@HOST:PORT or --stow URL.")
    log = (lambda _: None) if quiet else (lambda m: click.echo(m, err=True))
    if destination is not None:
        result = send_outputs(
            out_dir,
            destination,
            calling_aet=calling_aet,
            source_series=source_series,
            timeout=timeout,
            log=log,
        )
    else:
        if calling_aet != "MEDSI":
            raise ConfigError('"--calling-aet" applies to --to only; leave it out with --stow.')
        result = stow_outputs(out_dir, stow, source_series=source_series, timeout=timeout, log=log)
    click.echo(result.format_table())
    if not result.ok:
        click.echo(
            f"{len(result.failed)} object(s) not stored in {result.destination}; the reasons "
            "are in the table; fix them and run the same command again (objects already "
            "stored are sent again and kept once by the PACS).",
            err=True,
        )
        sys.exit(1)


@click.command()
@click.option("--aet", default="MEDSI", show_default=True, help="AE title of this node.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=11112, show_default=True, help="TCP port."
)
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on: the default accepts only this machine; 0.0.0.0 accepts "
    "any network (then use --allow).",
)
@click.option(
    "--forward",
    metavar="AET@HOST:PORT",
    help="Node that receives the SEG and SR of each series [default: none, results stay in --out].",
)
@click.option(
    "--allow",
    metavar="AET",
    multiple=True,
    help="Calling AE title accepted (repeat for several); without it, any title is accepted.",
)
@click.option(
    "--quiet-seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="A series is analysed once nothing of it has arrived for this long.",
)
@click.option(
    "--retry-seconds",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Wait before sending again when the forward destination did not store the results.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("medsi_serve"),
    show_default=True,
    help="Results folder: one folder per series, named by its SeriesInstanceUID.",
)
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where received instances are kept until their results are sent [default: OUT/spool].",
)
@_common_options
def serve(
    aet,
    port,
    bind,
    forward,
    allow,
    quiet_seconds,
    retry_seconds,
    out,
    spool,
    model,
    quiet,
    **options,
) -> None:
    """Run a DICOM node that analyses every series it receives and forwards SEG + SR.

    Accepts C-ECHO and C-STORE of MR and CT images. A series is analysed once it has been
    quiet for --quiet-seconds, with the same options as medsi run; its outputs go to
    OUT/<SeriesInstanceUID>/ and its SEG and SR to --forward. Received data stay in the
    spool until their results are stored there, also across restarts. Stop with Ctrl+C.
    """
    import signal
    import threading
    import time

    from medsi.pacs.serve import DicomNode, NodeConfig
    from medsi.pipeline.settings import RunSettings

    settings = RunSettings(**options)  # the common options are RunSettings' fields
    config = NodeConfig(
        out=out,
        spool=spool,
        ae_title=aet,
        port=port,
        bind=bind,
        forward=forward,
        allow=allow,
        quiet_seconds=quiet_seconds,
        retry_seconds=retry_seconds,
    )
    node = DicomNode(
        config,
        model,
        settings,
        log=_stamped,
        analysis_log=(lambda _: None) if quiet else _stamped,
    )

    def terminate(signum, frame):
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        node.start()
        caller = allow[0] if allow else "ANY"
        _stamped(
            f"ready; test it with: echoscu -aet {caller} -aec {config.ae_title} "
            f"{'127.0.0.1' if bind in ('0.0.0.0', '::') else bind} {node.port}; "
            "stop with Ctrl+C"
        )
        try:
            while node.running:
                time.sleep(1.0)
        except KeyboardInterrupt:
            _stamped("stopping: the analysis in progress (if any) is finished first")
    finally:
        node.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
