"""``medsi run`` and ``medsi demo``: analyse one scan (or a phantom) end to end."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["run", "demo"]


def _common_options(function):
    options = [
        click.option(
            "--model",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Model bundle folder [default: the bundled MRI model].",
        ),
        click.option("--alpha", type=float, default=0.05, show_default=True),
        click.option("--threshold", type=float, help="lambda [default: the bundle's]."),
        click.option(
            "--score",
            type=click.Choice(["signed", "absolute"]),
            default="signed",
            show_default=True,
            help="signed: only brighter-than-normal findings (FLAIR lesions); absolute: both.",
        ),
        click.option(
            "--event", type=click.Choice(["full", "component"]), default="full", show_default=True
        ),
        click.option(
            "--unit",
            type=click.Choice(["lesion", "slice"]),
            default="lesion",
            show_default=True,
            help="lesion: 3-D components across slices; slice: components per slice.",
        ),
        click.option(
            "--termination",
            type=click.Choice(["decision", "precision", "exhaustive", "oc"]),
            default="decision",
            show_default=True,
            help="How far each search goes: decision (until the p's side of alpha is certain), "
            "precision, exhaustive, or oc (one evaluation: the over-conditioned p; fastest).",
        ),
        click.option(
            "--alternative",
            type=click.Choice(["two-sided", "greater"]),
            default="two-sided",
            show_default=True,
        ),
        click.option(
            "--max-evaluations",
            type=click.IntRange(min=1),
            default=1024,
            show_default=True,
            help="Model evaluations (slice images) per lesion; a search stopped there decides "
            "by its p's upper bound.",
        ),
        click.option("--device", default="cpu", show_default=True, help="Torch device."),
        click.option(
            "--search-workers",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Local worker processes sharing each p-value's search (e.g. the number of "
            "cores); the p-values do not change.",
        ),
        click.option(
            "--search-scheduler",
            metavar="ADDRESS",
            help="Dask scheduler address (or 'local') whose workers share each p-value's "
            "search; the p-values do not change.",
        ),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--quiet", is_flag=True, help="No progress bars or stage messages."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _bundle(model):
    if model is None:
        return None
    from medsi.model import load_bundle

    return load_bundle(model)


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output folder [default: ./<input name>_medsi].",
)
@_common_options
@click.option(
    "--mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Brain mask (NIfTI on the input's grid); wins over the automatic masks.",
)
@click.option("--series", help="SeriesInstanceUID of the DICOM series to use.")
@click.option(
    "--volume",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Which volume of a 4-D file.",
)
@click.option("--registered", is_flag=True, help="The input is already in template space.")
@click.option(
    "--reference",
    type=click.Path(exists=True, path_type=Path),
    help="Reference scan (e.g. an earlier scan of the patient) instead of the reference bank.",
)
@click.option(
    "--dicom/--no-dicom",
    default=True,
    show_default=True,
    help="Also write DICOM-SEG, DICOM SR and (for a NIfTI input) the converted MR series.",
)
@click.option(
    "--patient-name",
    help="PatientName for the converted series of a NIfTI input [default: a placeholder].",
)
@click.option(
    "--patient-id",
    help="PatientID for the converted series of a NIfTI input [default: a placeholder].",
)
def run(
    input_path,
    output,
    model,
    quiet,
    mask,
    series,
    volume,
    registered,
    reference,
    dicom,
    patient_name,
    patient_id,
    **options,
) -> None:
    """Find anomalies in a brain MRI (NIfTI file or DICOM folder), each with a valid p-value.

    Writes to the output folder: lesions.nii.gz (lesion ids on the input's grid),
    report.json, report.html (a self-contained report with overlay pictures), and DICOM:
    lesions_seg.dcm (DICOM-SEG, one segment per lesion; none without findings),
    lesions_sr.dcm (TID 1500 measurement report with the p-values) and, for a NIfTI input,
    source_series/ (the scan as a DICOM MR series that the SEG and SR reference).
    Prints a table of the lesions.
    """
    from medsi.pipeline.run import analyse_scan, format_lesion_table, write_outputs
    from medsi.pipeline.settings import RunSettings

    settings = RunSettings(**options)  # the common options are RunSettings' fields
    log = (lambda _: None) if quiet else (lambda m: click.echo(m, err=True))
    analysis = analyse_scan(
        input_path,
        _bundle(model),
        settings,
        reference=reference,
        registered=registered,
        mask=mask,
        volume=volume,
        series=series,
        progress=not quiet,
        log=log,
    )
    if output is None:
        name = input_path.name.removesuffix(".gz").removesuffix(".nii")
        output = Path.cwd() / f"{name}_medsi"
    files = write_outputs(
        analysis, output, dicom=dicom, patient_name=patient_name, patient_id=patient_id
    )
    if not quiet:
        for note in analysis.scan.notes:
            click.echo(f"- {note}")
    click.echo(format_lesion_table(analysis))
    click.echo(analysis.report()["summary"])
    click.echo(f"Wrote {files['labels']}, {files['report']} and {files['html']}.")
    if dicom:
        seg = files["dicom_seg"]
        click.echo(
            f"DICOM: {files['dicom_sr']}"
            + (f", {seg}" if seg else " (no SEG: no lesion)")
            + (f", {files['dicom_source_series']}/" if files["dicom_source_series"] else "")
            + f"; send them to a PACS with: medsi send {files['report'].parent} --to AET@HOST:PORT"
        )


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("medsi_demo"),
    show_default=True,
    help="Folder for the phantom and the results.",
)
@click.option("--lesions", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--baseline/--bank",
    default=True,
    show_default=True,
    help="Compare with a lesion-free earlier scan of the same subject (a follow-up, as "
    "--reference does), or with the model's reference bank of other subjects (as medsi run "
    "does without --reference; anatomy differs, so the tests are far less powerful).",
)
@_common_options
def demo(output, lesions, baseline, model, quiet, **options) -> None:
    """Make a FLAIR-like phantom with known lesions, analyse it, and score the findings.

    The phantom (and its ground truth, and the baseline scan) is written to OUTPUT/phantom,
    the results to OUTPUT; a table says, for each inserted lesion, whether medsi found it and
    its Holm-adjusted p.
    """
    import json

    import nibabel as nib
    import numpy as np

    from medsi.atomic import atomic_write_text
    from medsi.pipeline.demo import make_demo_phantom, match_lesions
    from medsi.pipeline.run import analyse_scan, format_lesion_table, write_outputs
    from medsi.pipeline.settings import RunSettings

    settings = RunSettings(**options)
    log = (lambda _: None) if quiet else (lambda m: click.echo(m, err=True))
    log(f"making a phantom with {lesions} lesion(s) in {output / 'phantom'}")
    files = make_demo_phantom(
        output / "phantom", seed=settings.seed, lesions=lesions, baseline=baseline
    )
    analysis = analyse_scan(
        files["image"],
        _bundle(model),
        settings,
        reference=files["baseline"],
        progress=not quiet,
        log=log,
    )
    write_outputs(analysis, output)
    truth = np.asarray(nib.load(files["lesion_labels"]).dataobj)
    rows = match_lesions(truth, analysis)
    atomic_write_text(output / "demo.json", json.dumps(rows, indent=2) + "\n")
    click.echo(format_lesion_table(analysis))
    click.echo(f"{'true lesion':>11} {'voxels':>7} {'found as':>10} {'overlap':>8} {'p Holm':>8}")
    for r in rows:
        found = ",".join(map(str, r["found"])) or "-"
        p = "-" if r["best_p_holm"] is None else f"{r['best_p_holm']:.2g}"
        click.echo(f"{r['truth_id']:>11} {r['voxels']:>7} {found:>10} {r['overlap']:>8.2f} {p:>8}")
    detected = sum(r["detected"] for r in rows)
    click.echo(f"{detected} of {len(rows)} inserted lesion(s) detected (significant after Holm).")
    click.echo(f"Reference: {analysis.reference}.")
