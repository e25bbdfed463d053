"""``medsi run``: one scan in, lesions with selective p-values out (DESIGN.md sections 4-5).

:func:`analyse_scan` does the work and returns a :class:`ScanAnalysis`;
:func:`write_outputs` writes the lesion label map (NIfTI, on the input's own grid) and
``report.json`` atomically, so a crash never leaves a file that looks like a result.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsi import __version__
from medsi.atomic import atomic_write_bytes, atomic_write_text
from medsi.errors import ConfigError, InputDataError
from medsi.pipeline.inference import LesionResult, assess_lesions, find_lesions, holm_adjust
from medsi.pipeline.preprocess import PreparedScan, prepare_scan
from medsi.pipeline.settings import RunSettings
from medsi.si import Covariance
from medsi.transforms.spatial import ModelGrid, default_model_grid, grid_to_native

__all__ = [
    "ScanAnalysis",
    "analyse_scan",
    "write_outputs",
    "grid_of_bundle",
    "GRID_SPACE",
    "default_bundle_path",
]

GRID_SPACE = "medsi model grid"
"""Start of the ``input_space`` of bundles trained on the MRI model grid, followed by the
grid's parameters, e.g. ``"medsi model grid: size=64 plane_spacing=2.0 margin=4.0"``."""


def default_bundle_path() -> Path:
    """The folder of the default bundle shipped in ``medsi/assets``."""
    from importlib.resources import files

    return Path(str(files("medsi.assets") / "default_bundle"))


def grid_of_bundle(bundle) -> ModelGrid:
    """The model grid a bundle was trained on (from its ``input_space``)."""
    space = bundle.input_space
    if not space.startswith(GRID_SPACE):
        raise ConfigError(
            f'the model bundle expects "{space}", not brain MRI slices on the medsi model grid; '
            "pass a bundle made for MRI (or leave out --model to use the default one)."
        )
    values = dict(re.findall(r"(\w+)=([-\d.]+)", space))
    return default_model_grid(
        size=int(values.get("size", 64)),
        plane_spacing=float(values.get("plane_spacing", 2.0)),
        margin=float(values.get("margin", 4.0)),
    )


@dataclasses.dataclass(frozen=True)
class ScanAnalysis:
    """Everything ``medsi run`` found in one scan.

    Attributes
    ----------
    scan
        The prepared scan (model-grid slices, masks, registration, notes).
    lesions
        One :class:`~medsi.pipeline.inference.LesionResult` per lesion.
    holm
        Holm-adjusted p-values, one per lesion, of each lesion's ``p_decisive`` (the selective
        p's upper bound, exact when the search finished; or the oc p with termination
        ``oc``), so the decisions stay valid whatever the search left open.
    native_labels
        (X, Y, Z) int16 lesion ids on the input's own voxel grid.
    settings
        The run's options.
    bundle_hash, bundle_path
        The model bundle used.
    reference
        What the lesions were compared with, in words.
    seconds
        Wall time per stage.
    threshold
        lambda as used (the bundle's when ``settings.threshold`` is None); None when unknown.
    reference_slices
        (P, H, W) float64 on the model grid: the reference slice each kept plane was
        compared with (planes not kept hold zeros or unused data); None when not recorded.
    reconstructions
        (P, H, W) float64 on the model grid: the model's reconstruction f(x) of each kept
        plane (the float64 function the selective tests use); NaN on planes not kept;
        None when not recorded.
    score_maps
        (P, H, W) float64 on the model grid: the anomaly score E(x) of each kept plane
        (voxels of the brain mask above ``threshold`` are the selection); NaN on planes
        not kept; None when not recorded.
    grid_labels
        (P, H, W) int32 lesion ids on the model grid (0 background), as tested; None when
        not recorded.
    covariance, reference_covariances
        The noise covariance of a test slice and, per plane, that of its reference slice,
        as the tests used them; None when not recorded.
    """

    scan: PreparedScan
    lesions: list[LesionResult]
    holm: np.ndarray
    native_labels: np.ndarray
    settings: RunSettings
    bundle_hash: str
    bundle_path: str
    reference: str
    seconds: dict
    # what the HTML report draws; defaults keep hand-made analyses (tests, callers) valid
    threshold: float | None = None
    reference_slices: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    score_maps: np.ndarray | None = None
    grid_labels: np.ndarray | None = None
    covariance: Covariance | None = None
    reference_covariances: list[Covariance] | None = None

    def lesion_records(self) -> list[dict]:
        """One JSON-ready record per lesion (DESIGN.md section 5)."""
        scan = self.scan
        records = []
        for lesion, adjusted in zip(self.lesions, self.holm, strict=True):
            res = lesion.result
            native = self.native_labels == lesion.lesion_id
            voxels = int(native.sum())
            if voxels:
                centre_index = np.argwhere(native).mean(axis=0)
                centroid = (scan.native_affine @ np.append(centre_index, 1.0))[:3]
                native_slices = sorted({int(k) for k in np.argwhere(native)[:, 2]})
            else:  # the lesion lies between the acquired slices of a sparse scan
                centroid, native_slices = None, []
            records.append(
                {
                    "id": lesion.lesion_id,
                    "model_planes": list(lesion.planes),
                    "native_slices": native_slices,
                    "model_voxels": int(lesion.mask.sum()),
                    "voxels": voxels,
                    "volume_mm3": voxels * scan.voxel_volume_mm3,
                    "centroid_ras_mm": None if centroid is None else [float(c) for c in centroid],
                    "mean_difference": res.statistic,
                    "statistic": res.statistic,
                    "sigma": res.sigma,
                    "z": res.statistic / res.sigma,
                    "p_naive": res.p_naive,
                    "p_oc": res.p_oc,
                    # with termination oc only the oc p is exact: no point value then
                    "p_selective": None if lesion.p_method == "oc" else res.p_selective,
                    "p_selective_bounds": list(res.p_bounds),
                    "p_full": None if lesion.p_method == "oc" else res.p_full,
                    "p_full_bounds": list(res.p_bounds_full),
                    "p_component": None if lesion.p_method == "oc" else res.p_component,
                    "p_component_bounds": list(res.p_bounds_component),
                    "p_bonferroni": res.p_bonferroni,
                    "p_method": lesion.p_method,
                    "p_decisive": lesion.p_decisive,
                    "search_complete": res.complete,
                    "p_holm": float(adjusted),
                    "significant": bool(adjusted < self.settings.alpha),
                    "event": res.event.value,
                    "evaluations": res.evaluations,
                    "seconds": lesion.seconds,
                    "truncation_intervals": res.intervals.tolist(),
                }
            )
        return records

    def report(self) -> dict:
        """The JSON report: input, what was done, settings, model, lesions, versions."""
        import torch

        scan = self.scan
        lesions = self.lesion_records()
        significant = sum(r["significant"] for r in lesions)
        if not lesions:
            summary = "no findings: nothing was selected by the model on the kept planes"
        else:
            which = (
                "over-conditioned p (termination oc)"
                if self.settings.termination == "oc"
                else f"selective p, {self.settings.event} event"
            )
            summary = (
                f"{len(lesions)} lesion(s) selected, {significant} significant at alpha "
                f"{self.settings.alpha} (Holm-adjusted {which})"
            )
        return {
            "medsi_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "input": {
                "path": str(scan.path),
                "format": scan.meta.get("source_format"),
                "shape": list(scan.native_shape),
                "affine_ras": scan.native_affine.tolist(),
                "voxel_volume_mm3": scan.voxel_volume_mm3,
            },
            "summary": summary,
            "notes": list(scan.notes),
            "registration": {
                "method": scan.registration.method,
                "passed": scan.registration.passed,
                "reason": scan.registration.reason,
                "metric": _finite_or_none(scan.registration.metric),
                "matrix_template_to_scan": scan.matrix.tolist(),
            },
            "mask": scan.mask_source,
            "standardisation": scan.standardisation,
            "model_planes_kept": np.flatnonzero(scan.kept).tolist(),
            "reference": self.reference,
            "settings": self.settings.to_dict(),
            # lambda as used: settings.threshold is null when the bundle's was taken
            "threshold_used": self.threshold,
            "model": {"content_hash": self.bundle_hash, "path": self.bundle_path},
            "seconds": self.seconds,
            "versions": {"medsi": __version__, "torch": torch.__version__, "numpy": np.__version__},
            "lesions": lesions,
        }


def _pair_noise_covariance(scan: PreparedScan, ref_scan: PreparedScan, bundle):
    """Noise covariance of one scan, estimated from a test-reference pair of one subject.

    The bundle's covariance describes how normal brains of *other* subjects differ from the
    reference bank (anatomy and noise); a reference scan of the same subject differs only by
    noise, often hundreds of times less. With independent noise of one law in both scans,
    x - r has covariance 2 S over the brain; S is estimated from it (the bundle's kind and
    radius, no mean removed) as if the null held on almost every voxel, which lesions only
    make conservative. A plug-in estimate, as the noise level of a new scan is not known.
    """
    from medsi.si.estimate import estimate_covariance

    both = scan.brain & ref_scan.brain
    planes = np.flatnonzero(both.any(axis=(1, 2)))
    if len(planes) < 1:
        raise InputDataError(
            "the scan and the reference share no brain voxels on the model grid; check that "
            "they show the same head (and pass --registered only if both are in template space)."
        )
    difference = (scan.slices - ref_scan.slices)[planes]
    cov = bundle.config["covariance"]
    estimate = estimate_covariance(
        np.concatenate([difference, -difference]),  # a symmetric pair: no mean to remove
        cov["kind"],
        cov["radius"],
        dof=2 * len(planes),
        mask=np.concatenate([both[planes], both[planes]]),
    )
    return estimate.scaled(0.5)


def _model_views(
    score, threshold: float, slices: np.ndarray, kept: np.ndarray, device, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruction f(x) and score E(x) of each kept plane, NaN elsewhere, (P, H, W) each.

    Runs the float64 copy of the score that :class:`~medsi.si.LineEvaluator` makes (BatchNorm
    folded), i.e. the very function whose threshold defines the selection, in one plain
    forward pass per batch of planes.
    """
    import torch

    from medsi.si import LineEvaluator

    evaluator = LineEvaluator(score, threshold, device=device)
    model = evaluator.score
    reconstructions = np.full(slices.shape, np.nan)
    score_maps = np.full(slices.shape, np.nan)
    planes = np.flatnonzero(kept)
    for start in range(0, len(planes), max(1, batch_size)):
        chunk = planes[start : start + batch_size]
        x = torch.as_tensor(slices[chunk][:, None], dtype=torch.float64, device=evaluator.device)
        with torch.no_grad():
            recon = model.reconstruction(x)
            residual = x - recon
            if not model.signed:
                residual = torch.abs(residual)
            reconstructions[chunk] = recon[:, 0].cpu().numpy()
            score_maps[chunk] = model.average(residual)[:, 0].cpu().numpy()
    return reconstructions, score_maps


def _finite_or_none(value: float):
    return float(value) if np.isfinite(value) else None


def analyse_scan(
    path: str | os.PathLike,
    bundle=None,
    settings: RunSettings | None = None,
    *,
    reference: str | os.PathLike | None = None,
    registered: bool = False,
    mask: str | os.PathLike | None = None,
    volume: int = 0,
    series: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> ScanAnalysis:
    """Find the lesions of one scan and test each of them.

    Parameters
    ----------
    path
        NIfTI file, DICOM folder, or one file of a DICOM series.
    bundle
        A :class:`~medsi.model.ModelBundle`; None loads the default bundle.
    settings
        The run's options; default :class:`RunSettings`.
    reference
        A reference scan (e.g. an earlier scan of the same patient), prepared the same way;
        None compares with the bundle's reference bank (mean normal slice per position).
    registered, mask, volume, series
        As :func:`~medsi.pipeline.preprocess.prepare_scan`.
    progress
        Show progress bars.
    log
        Receives one-line messages about each stage.

    Returns
    -------
    ScanAnalysis

    Raises
    ------
    InputDataError
        If a file is unreadable or holds no usable brain.
    ConfigError
        If an option or the bundle does not fit.
    InferenceError
        If a search breaks a guard rail (never a silently wrong p).
    """
    from medsi.model import load_bundle
    from medsi.si import SelectiveTest

    settings = settings or RunSettings()
    seconds = {}
    start = time.perf_counter()
    if bundle is None:
        bundle = load_bundle(default_bundle_path())
    grid = grid_of_bundle(bundle)
    seconds["load_model"] = time.perf_counter() - start

    start = time.perf_counter()
    log(f"preparing {path}")
    options = {"volume": volume, "series": series, "standardisation": settings.standardisation}
    scan = prepare_scan(path, grid, registered=registered, mask=mask, **options)
    kept = scan.kept.copy()
    if reference is None:
        counts = np.asarray(bundle.reference_counts)
        has_reference = np.zeros(grid.n_planes, bool)
        has_reference[: len(counts)] = counts[: grid.n_planes] > 0
        references = np.zeros_like(scan.slices)
        covariance = bundle.covariance
        reference_covariances = [bundle.covariance] * grid.n_planes
        for p in np.flatnonzero(kept & has_reference):
            references[p], reference_covariances[p] = bundle.reference(int(p))
        reference_text = "the bundle's reference bank (mean normal slice per plane)"
    else:
        log(f"preparing the reference {reference}")
        ref_scan = prepare_scan(reference, grid, registered=registered, **options)
        references = ref_scan.slices
        has_reference = ref_scan.kept
        covariance = _pair_noise_covariance(scan, ref_scan, bundle)
        reference_covariances = [covariance] * grid.n_planes
        reference_text = (
            f"the reference scan {reference} (--reference); noise covariance estimated on the "
            "pair's brain voxels"
        )
    dropped = kept & ~has_reference
    kept &= has_reference
    notes = list(scan.notes)
    if dropped.any():
        notes.append(f"{int(dropped.sum())} plane(s) have no reference and were left out")
    brain = scan.brain & kept[:, None, None]
    scan = dataclasses.replace(scan, kept=kept, brain=brain, notes=tuple(notes))
    seconds["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    score = bundle.score(signed=settings.score == "signed", device=settings.device)
    threshold = (
        bundle.config["score"]["threshold"] if settings.threshold is None else settings.threshold
    )
    selected = SelectiveTest(score, threshold, mask=brain, device=settings.device).select(
        scan.slices
    )
    labels = find_lesions(selected, settings.unit)
    log(f"{int(labels.max())} lesion(s) selected on {int(kept.sum())} planes")
    seconds["select"] = time.perf_counter() - start

    start = time.perf_counter()
    lesions = assess_lesions(
        score,
        threshold,
        scan.slices,
        references,
        brain,
        covariance,
        reference_covariances,
        labels,
        unit=settings.unit,
        event=settings.event,
        termination=settings.termination,
        alternative=settings.alternative,
        alpha=settings.alpha,
        precision=settings.precision,
        batch_size=settings.batch_size,
        max_evaluations=settings.max_evaluations,
        device=settings.device,
        workers=settings.search_workers,
        scheduler=settings.search_scheduler,
        progress=progress,
    )
    seconds["inference"] = time.perf_counter() - start
    holm = holm_adjust([les.p_decisive for les in lesions])

    start = time.perf_counter()
    reconstructions, score_maps = _model_views(
        score, threshold, scan.slices, kept, settings.device, settings.batch_size
    )
    seconds["views"] = time.perf_counter() - start

    start = time.perf_counter()
    grid_labels = np.ascontiguousarray(labels.transpose(1, 2, 0)).astype(np.int16)
    native_labels = grid_to_native(
        grid_labels, grid, scan.matrix, scan.native_affine, scan.native_shape, covered=scan.covered
    ).astype(np.int16)
    seconds["map_back"] = time.perf_counter() - start
    return ScanAnalysis(
        scan=scan,
        lesions=lesions,
        holm=holm,
        native_labels=native_labels,
        settings=settings,
        bundle_hash=bundle.content_hash,
        bundle_path=str(bundle.path),
        reference=reference_text,
        seconds=seconds,
        threshold=float(threshold),
        reference_slices=np.asarray(references, dtype=np.float64),
        reconstructions=reconstructions,
        score_maps=score_maps,
        grid_labels=labels.astype(np.int32),
        covariance=covariance,
        reference_covariances=reference_covariances,
    )


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), mtime=0)


LABEL_MAP_NAME = "lesions.nii.gz"
"""File name of the lesion label map (native grid) in the output folder; ``report.json``
names it under ``"label_map"``."""

HTML_REPORT_NAME = "report.html"
"""File name of the HTML report in the output folder; ``report.json`` links it under
``"html_report"`` (relative to the folder, so the folder can be moved)."""


def write_outputs(
    analysis: ScanAnalysis,
    out: str | os.PathLike,
    *,
    dicom: bool = True,
    patient_name: str | None = None,
    patient_id: str | None = None,
) -> dict[str, Path | None]:
    """Write every output of one scan into ``out``, each file atomically.

    ``lesions.nii.gz`` holds the lesion ids on the input's own grid; ``report.html`` is the
    self-contained report with overlay pictures
    (:func:`~medsi.export.html.write_html_report`); with ``dicom``, the DICOM-SEG
    (``lesions_seg.dcm``, only when a lesion has voxels), the SR (``lesions_sr.dcm``) and,
    for a NIfTI input, the converted source series (``source_series/``)
    (:func:`~medsi.export.dicom.write_dicom_outputs`). ``report.json`` is written last and
    names the other files (``"label_map"``, ``"html_report"``, ``"dicom"``), so a folder with a
    ``report.json`` always holds everything it names.

    Parameters
    ----------
    analysis
        The analysed scan.
    out
        Output folder (created; an earlier run's files there are replaced).
    dicom
        Also write the DICOM objects.
    patient_name, patient_id
        Identity of the converted series of a NIfTI input (default: obvious placeholders);
        a DICOM input keeps its own.

    Returns
    -------
    dict
        ``{"labels", "html", "report"}`` paths and, with ``dicom``, ``"dicom_seg"`` (None
        without lesions), ``"dicom_sr"`` and ``"dicom_source_series"`` (None for a DICOM
        input).
    """
    from medsi.export.html import write_html_report

    out = Path(out)
    labels_path = atomic_write_bytes(
        out / LABEL_MAP_NAME, _nifti_bytes(analysis.native_labels, analysis.scan.native_affine)
    )
    html_path = write_html_report(analysis, out / HTML_REPORT_NAME)
    report = analysis.report()
    report["html_report"] = HTML_REPORT_NAME
    report["label_map"] = LABEL_MAP_NAME
    files = {"labels": labels_path, "html": html_path}
    if dicom:
        from medsi.export.dicom import write_dicom_outputs

        written = write_dicom_outputs(
            analysis, out, patient_name=patient_name, patient_id=patient_id
        )
        files.update({f"dicom_{k}": v for k, v in written.items()})
        report["dicom"] = {k: None if v is None else v.name for k, v in written.items()}
    files["report"] = atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return files


def format_lesion_table(analysis: ScanAnalysis) -> str:
    """The terminal table of lesions (or the no-findings line)."""
    records = analysis.lesion_records()
    if not records:
        return "No findings: the model selected nothing on the kept planes."
    head = (
        f"{'id':>3} {'grid planes':>11} {'voxels':>7} {'vol mm3':>9} {'diff':>7} {'z':>6} "
        f"{'p naive':>9} {'p oc':>9} {'p selective':>21} {'p Holm':>9} {'sig':>4}"
    )
    lines = [head]
    for r in records:
        planes = r["model_planes"]
        span = f"{planes[0]}-{planes[-1]}" if len(planes) > 1 else f"{planes[0]}"
        lo, hi = r["p_selective_bounds"]
        exact = r["p_selective"] is not None and hi - lo < 1e-6
        p_sel = f"{r['p_selective']:.3g}" if exact else f"[{lo:.2g}, {hi:.2g}]"
        lines.append(
            f"{r['id']:>3} {span:>11} {r['voxels']:>7} {r['volume_mm3']:>9.0f} "
            f"{r['mean_difference']:>7.2f} {r['z']:>6.2f} {r['p_naive']:>9.2g} "
            f"{r['p_oc']:>9.2g} {p_sel:>21} {r['p_holm']:>9.2g} "
            f"{'yes' if r['significant'] else 'no':>4}"
        )
    return "\n".join(lines)
