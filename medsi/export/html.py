"""The HTML report of one scan: settings, lesion table, overlay pictures (DESIGN.md section 5).

One self-contained file: the pictures are PNGs drawn with matplotlib's Agg canvas and
embedded as base64 ``data:`` URIs, the style sheet is inline, and nothing is fetched or
scripted, so the file can be mailed, archived next to the DICOM objects, or opened on a
reading-room machine without network access. Every string that comes from the input (file
names, notes, the reference's path) is escaped.

The numbers in the lesion table are those of
:meth:`~medsi.pipeline.run.ScanAnalysis.lesion_records` (the records of ``report.json``);
each cell also carries its record's key and exact value as ``data-key`` / ``data-value``
attributes, so a script (or a test) can read the table back without parsing the rounding.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from medsi import __version__
from medsi.atomic import atomic_write_text

__all__ = ["write_html_report", "render_html_report", "MAX_PLANES_PER_LESION"]

MAX_PLANES_PER_LESION = 6
"""Planes pictured per lesion; a lesion spanning more shows those with the most voxels."""

MAX_LESIONS_PICTURED = 20
"""Lesions that get pictures (significant ones first, then the largest); all are tabled."""

OVERVIEW_PLANES = 4
"""Planes pictured, evenly spread over the kept ones, when the scan has no findings."""

_PIXEL_UPSAMPLE = 8  # outlines follow voxel edges: contour a mask blown up 8x, not its centres

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem 2rem;
       color: #1d232a; background: #fff; max-width: 1280px; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccd3da;
     padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 0.3rem; }
.input { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
.summary { font-size: 1.1rem; font-weight: 600; background: #eef3f8; padding: 0.5rem 0.8rem;
           border-left: 4px solid #3b6ea5; }
.muted { color: #5b6670; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.88rem; }
th, td { border: 1px solid #ccd3da; padding: 0.25rem 0.5rem; vertical-align: top; }
th { background: #f1f4f7; text-align: left; }
table.settings th { width: 14rem; font-weight: 600; }
table.lesions td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.lesions th { white-space: nowrap; }
table.lesions td.text { text-align: left; white-space: normal; min-width: 11rem; }
tr.significant td { background: #fff1e6; }
.bounds { color: #5b6670; font-size: 0.8rem; }
.yes { color: #a4370b; font-weight: 700; }
.explain { background: #f7f9fb; padding: 0.6rem 0.9rem; border: 1px solid #e1e6eb; }
figure { margin: 0.5rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e6eb; }
figcaption { font-size: 0.85rem; color: #5b6670; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.85rem; }
"""


def _e(value) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _p(value) -> str:
    """A p-value with 3 significant digits (``-`` when there is none)."""
    return "-" if value is None else f"{value:.3g}"


def _cell(key: str, value, text: str, css: str = "") -> str:
    """A table cell showing ``text`` that carries its record key and exact value."""
    cls = f' class="{css}"' if css else ""
    data = _e(json.dumps(value))
    return f'<td{cls} data-key="{_e(key)}" data-value="{data}">{text}</td>'


def _p_with_bounds(value, bounds, searched: bool) -> str:
    """A selective p as shown in the table.

    The number when exact; with its ``[lo, hi]`` bounds below when the search stopped early;
    the bounds alone when there was no search (termination oc).
    """
    lo, hi = bounds
    if value is not None and hi - lo < 1e-6:
        return _p(value)
    if not searched or value is None:
        return f'[{_p(lo)}, {_p(hi)}]<br><span class="bounds">not searched</span>'
    return f'{_p(value)}<br><span class="bounds">[{_p(lo)}, {_p(hi)}]</span>'


def _span(planes) -> str:
    planes = list(planes)
    if not planes:
        return "-"
    return f"{planes[0]}-{planes[-1]}" if len(planes) > 1 else f"{planes[0]}"


# ------------------------------------------------------------------------------ pictures


def _display(image: np.ndarray) -> np.ndarray:
    """A model-grid plane (x, y) turned for radiological display.

    The grid's first axis runs to the patient's Right and the second to Anterior: the
    display puts anterior at the top and the patient's right on the viewer's left.
    """
    return np.asarray(image).T[::-1, ::-1]


def _window(values: np.ndarray) -> tuple[float, float]:
    """A robust grey window (1st to 99.5th percentile) of finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _outline(ax, mask: np.ndarray, color: str, width: float, style: str = "solid") -> None:
    """Draw the voxel-edge outline of a displayed (rows, cols) mask on ``ax``."""
    if not mask.any():
        return
    big = np.kron(mask.astype(float), np.ones((_PIXEL_UPSAMPLE, _PIXEL_UPSAMPLE)))
    # a one-voxel frame of zeros so masks touching the border still close
    big = np.pad(big, 1)
    n = _PIXEL_UPSAMPLE
    rows, cols = mask.shape
    x = (np.arange(big.shape[1]) - 1 + 0.5) / n - 0.5
    y = (np.arange(big.shape[0]) - 1 + 0.5) / n - 0.5
    ax.contour(x, y, big, levels=[0.5], colors=color, linewidths=width, linestyles=style)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)


def _mark_box(ax, mask: np.ndarray, margin: int = 4) -> None:
    """A square around a displayed mask, so a lesion of a few voxels catches the eye."""
    from matplotlib.patches import Rectangle

    rows, cols = np.nonzero(mask)
    r0, r1 = rows.min() - margin - 0.5, rows.max() + margin + 0.5
    c0, c1 = cols.min() - margin - 0.5, cols.max() + margin + 0.5
    ax.add_patch(
        Rectangle(
            (c0, r0),
            c1 - c0,
            r1 - r0,
            fill=False,
            edgecolor="#ff2d2d",
            linewidth=0.7,
            linestyle=(0, (2, 2)),
        )
    )


def _orientation_marks(ax) -> None:
    """Letter the patient's right, left and anterior on a radiologically displayed panel."""
    for x, y, letter, ha, va in (
        (0.02, 0.5, "R", "left", "center"),
        (0.98, 0.5, "L", "right", "center"),
        (0.5, 0.97, "A", "center", "top"),
    ):
        ax.text(x, y, letter, color="#ffe680", fontsize=7, ha=ha, va=va, transform=ax.transAxes)


def _plane_figure(analysis, planes, lesion_id: int | None, caption_rows: list[str]) -> str:
    """A base64 PNG with one row of panels per plane.

    Panels: input, reconstruction, score (with lambda outlined), input with the lesion
    outlines, reference; those whose data the analysis does not hold are left out.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scan = analysis.scan
    labels = _grid_labels(analysis)
    threshold = _threshold(analysis)
    kept_brain = scan.brain[scan.kept]
    grey = _window(scan.slices[scan.kept][kept_brain]) if kept_brain.any() else (0.0, 1.0)
    columns = ["input"]
    if analysis.reconstructions is not None:
        columns.append("reconstruction")
    if analysis.score_maps is not None:
        columns.append("score")
    columns.append("outline")
    if analysis.reference_slices is not None:
        columns.append("reference")
    if analysis.score_maps is not None:
        scores = analysis.score_maps[list(planes)][scan.brain[list(planes)]]
        s_lo, s_hi = _window(scores)
        spread = s_hi - s_lo
        if threshold is not None and s_hi < threshold <= s_hi + spread:
            s_hi = threshold + 0.1 * spread  # show λ on the colour bar when it lies near
    titles = {
        "input": "input (standardised)",
        "reconstruction": "model reconstruction f(x)",
        "score": "anomaly score E(x)",
        "outline": "lesion outline" if lesion_id else "selected voxels",
        "reference": "reference (compared with)",
    }
    panel = 2.0
    fig = Figure(figsize=(panel * len(columns) + 0.9, panel * len(planes) + 0.45), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(planes), len(columns), squeeze=False)
    fig.subplots_adjust(
        left=0.09,
        right=0.93,
        top=1 - 0.35 / fig.get_figheight(),
        bottom=0.02,
        wspace=0.04,
        hspace=0.06,
    )
    score_image = None
    for row, (plane, label) in enumerate(zip(planes, caption_rows, strict=True)):
        brain = _display(scan.brain[plane])
        lesion = _display(labels[plane] == lesion_id) if lesion_id else None
        others = _display((labels[plane] > 0) & (labels[plane] != (lesion_id or -1)))
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[name], fontsize=8.5)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            match name:
                case "input" | "reconstruction" | "reference" | "outline":
                    source = {
                        "input": scan.slices,
                        "outline": scan.slices,
                        "reconstruction": analysis.reconstructions,
                        "reference": analysis.reference_slices,
                    }[name]
                    ax.imshow(
                        _display(source[plane]),
                        cmap="gray",
                        vmin=grey[0],
                        vmax=grey[1],
                        interpolation="nearest",
                    )
                case "score":
                    shown = np.where(brain, _display(analysis.score_maps[plane]), np.nan)
                    score_image = ax.imshow(
                        shown, cmap="magma", vmin=s_lo, vmax=s_hi, interpolation="nearest"
                    )
                    if threshold is not None:
                        _outline(ax, brain & (shown > threshold), "#3fd0ff", 0.9)
                case _:
                    raise ValueError(f"unknown panel {name!r}")
            if name == "outline":
                _outline(ax, others, "#ffb000", 0.7, "dashed")
                if lesion is not None and lesion.any():
                    _outline(ax, lesion, "#ff2d2d", 1.3)
                    _mark_box(ax, lesion)
        _orientation_marks(axes[row, 0])
    if score_image is not None:
        col = columns.index("score")
        top, bottom = axes[0, col].get_position(), axes[-1, col].get_position()
        bar = fig.add_axes([0.945, bottom.y0, 0.012, top.y1 - bottom.y0])
        colorbar = fig.colorbar(score_image, cax=bar)
        colorbar.ax.tick_params(labelsize=7)
        if threshold is not None:
            on_scale = s_lo <= threshold <= s_hi
            if on_scale:
                colorbar.ax.axhline(threshold, color="#3fd0ff", linewidth=1.5)
            where = "" if on_scale else ", off the scale"
            colorbar.ax.set_ylabel(f"score (λ = {threshold:.3g}{where})", fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _grid_labels(analysis) -> np.ndarray:
    """(P, H, W) lesion ids on the model grid: recorded, or rebuilt from the lesion masks."""
    if analysis.grid_labels is not None:
        return np.asarray(analysis.grid_labels)
    labels = np.zeros(analysis.scan.slices.shape, np.int32)
    for lesion in analysis.lesions:
        labels[lesion.mask] = lesion.lesion_id
    return labels


def _threshold(analysis) -> float | None:
    """The threshold lambda as used, else as asked for (None: the bundle's, not recorded)."""
    if analysis.threshold is not None:
        return float(analysis.threshold)
    return None if analysis.settings.threshold is None else float(analysis.settings.threshold)


def _plane_labels(analysis, planes) -> list[str]:
    z = analysis.scan.grid.plane_z
    return [f"plane {p}\nz = {z[p]:+.0f} mm" for p in planes]


def _pictured_planes(record: dict, mask: np.ndarray) -> tuple[list[int], bool]:
    """The planes to picture for one lesion, in order, and whether the list was capped.

    A capped list spreads evenly over the lesion's extent (so its shape along z shows) and
    always holds the plane with the most lesion voxels.
    """
    planes = list(record["model_planes"])
    if len(planes) <= MAX_PLANES_PER_LESION:
        return planes, False
    picks = set(np.linspace(0, len(planes) - 1, MAX_PLANES_PER_LESION).round().astype(int))
    largest = int(np.argmax(mask[planes].sum(axis=(1, 2))))
    if largest not in picks:
        picks.remove(min(picks, key=lambda i: (abs(i - largest), i)))
        picks.add(largest)
    return [planes[i] for i in sorted(picks)], True


# ------------------------------------------------------------------------------ sections


def _settings_section(analysis, report: dict) -> str:
    settings = analysis.settings
    threshold = _threshold(analysis)
    registration = report["registration"]
    kept = report["model_planes_kept"]
    grid = analysis.scan.grid
    rows = [
        ("threshold λ", "bundle default" if threshold is None else f"{threshold:.6g}"),
        ("score", settings.score),
        ("event", settings.event),
        ("unit", settings.unit),
        ("termination", settings.termination),
        ("alternative", settings.alternative),
        ("alpha", f"{settings.alpha:g}"),
        ("evaluation budget", f"{settings.max_evaluations} per lesion"),
        ("reference", report["reference"]),
        ("mask", report["mask"]),
        (
            "registration",
            f"{registration['method']} ({'passed' if registration['passed'] else 'FAILED'}): "
            f"{registration['reason']}",
        ),
        (
            "model grid",
            f"{grid.size} x {grid.size} pixels of {grid.pixel_spacing:.2f} mm, "
            f"{len(kept)} of {grid.n_planes} planes kept ({grid.plane_spacing:g} mm apart)",
        ),
        ("model hash", report["model"]["content_hash"]),
        ("model path", report["model"]["path"]),
        ("medsi", f"{__version__} (torch {report['versions']['torch']})"),
    ]
    body = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{_e(n)}</li>" for n in report["notes"])
    done = f"<h3>What was done</h3>\n<ul>{notes}</ul>\n" if notes else ""
    return f'<h2 id="settings">Settings</h2>\n<table class="settings">\n{body}\n</table>\n{done}'


def _key_settings(analysis) -> str:
    """One line of the settings that shape the findings, for the top of the report."""
    settings = analysis.settings
    threshold = _threshold(analysis)
    lam = "the bundle's" if threshold is None else f"{threshold:.3g}"
    return (
        f"λ = {lam}, {settings.score} score, {settings.unit}s, event {settings.event}, "
        f"termination {settings.termination}, {settings.alternative}, α = {settings.alpha:g}; "
        f"reference: {analysis.reference}"
    )


def _explanation(analysis) -> str:
    alpha = f"{analysis.settings.alpha:g}"
    decider = (
        "With termination <code>oc</code>, as in this run, the over-conditioned p decides."
        if analysis.settings.termination == "oc"
        else f"In this run the selective p of the <code>{_e(analysis.settings.event)}</code> "
        "event decides."
    )
    return f"""<h2 id="explanation">What the p-values mean</h2>
<p class="explain">The model first picks out voxels that look unlike its reconstruction of
a normal brain (an anomaly score above λ) and groups them into lesions; each lesion is then
tested for a difference in mean intensity from the reference. Because the same image was
used both to choose a lesion and to test it, the ordinary <b>naive p</b> is far too small
(noise that the model happened to pick looks "significant") and is shown for comparison
only: do not use it for decisions. The <b>selective p</b> corrects for the choice: it is
computed as if the test had only ever been run on images in which the model would select
this lesion (event <i>full</i>: the whole selection unchanged; event <i>component</i>: only
this lesion's outline unchanged, which asks less and usually finds more). When there is no
true difference it is uniformly distributed, so calling a lesion significant when p &lt; α
keeps false positives at rate α. The <b>oc p</b> (over-conditioned) is valid as well but
conditions on more than needed (the model's whole internal on/off pattern), so it is
usually larger and misses more real lesions. {decider} Because one scan can hold several
lesions, the decision uses the <b>Holm-adjusted p</b>, which keeps the chance of even one
false positive among this scan's lesions below α = {alpha}. When a search stopped early
(termination <i>decision</i> or its evaluation budget), the selective p is only known to lie
between two <b>bounds</b>, shown as [lower, upper]; the decision then uses the upper bound,
which can only make it more cautious.</p>
"""


_COLUMNS = (
    ("lesion", "lesion id (largest first)"),
    ("planes", "model-grid planes the lesion spans"),
    ("voxels", "voxels on the input's own grid"),
    ("volume mm³", "volume on the input's own grid"),
    ("mean diff", "mean intensity of the lesion minus the reference's (standardised units)"),
    ("z", "the mean difference in units of its null standard deviation"),
    ("p naive", "ignores the selection: not valid, for comparison only"),
    ("p oc", "over-conditioned selective p: valid, less powerful"),
    ("p selective (full)", "selective p, whole selection unchanged; [bounds] if not exact"),
    ("p selective (component)", "selective p, this lesion's outline unchanged"),
    ("p Holm", "Holm-adjusted across this scan's lesions, of the deciding p"),
    ("decision", "significant when p Holm < alpha"),
)


def _lesion_table(records: list[dict], alpha: float) -> str:
    head = "".join(f'<th title="{_e(tip)}">{_e(name)}</th>' for name, tip in _COLUMNS)
    rows = []
    for r in records:
        significant = r["significant"]
        searched = r["p_method"] != "oc"
        decided_by = "oc p" if r["p_method"] == "oc" else "selective p upper bound"
        if not r["search_complete"]:
            decided_by += ", search stopped at its budget"
        decision = (
            '<span class="yes">significant</span>' if significant else "not significant"
        ) + f'<br><span class="bounds">by {_e(decided_by)}</span>'
        cells = [
            _cell("id", r["id"], f'<a href="#lesion-{r["id"]}">{r["id"]}</a>'),
            _cell("model_planes", r["model_planes"], _span(r["model_planes"])),
            _cell("voxels", r["voxels"], str(r["voxels"])),
            _cell("volume_mm3", r["volume_mm3"], f"{r['volume_mm3']:.0f}"),
            _cell("mean_difference", r["mean_difference"], f"{r['mean_difference']:.3g}"),
            _cell("z", r["z"], f"{r['z']:.2f}"),
            _cell("p_naive", r["p_naive"], _p(r["p_naive"])),
            _cell("p_oc", r["p_oc"], _p(r["p_oc"])),
            _cell(
                "p_full",
                [r["p_full"], r["p_full_bounds"]],
                _p_with_bounds(r["p_full"], r["p_full_bounds"], searched),
            ),
            _cell(
                "p_component",
                [r["p_component"], r["p_component_bounds"]],
                _p_with_bounds(r["p_component"], r["p_component_bounds"], searched),
            ),
            _cell("p_holm", r["p_holm"], _p(r["p_holm"])),
            _cell("significant", significant, decision, "text"),
        ]
        css = ' class="significant"' if significant else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (
        '<h2 id="lesions">Lesions</h2>\n'
        f'<table class="lesions" id="lesion-table">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{chr(10).join(rows)}\n</tbody>\n</table>\n"
        f'<p class="muted">Highlighted rows are significant at α = {alpha:g} after Holm\'s '
        "adjustment. A selective p with [bounds] below it comes from a search that stopped "
        "early: the number is its value on the searched part of the line, the bracket the "
        "range the true selective p lies in. With termination oc there is no search: only "
        "the bounds the over-conditioning piece gives are known.</p>\n"
    )


def _lesion_sections(analysis, records: list[dict]) -> str:
    parts = ['<h2 id="pictures">Lesions on the model grid</h2>\n']
    parts.append(
        '<p class="muted">Each row is one axial plane of the model grid (radiological view: '
        "the patient's right on the left, anterior at the top). Panels: the standardised "
        "input; the model's reconstruction of a normal brain from it; the anomaly score "
        "(inside the brain mask) with the threshold λ outlined in cyan; the input with the "
        "lesion outlined in red (other lesions dashed orange); the reference the lesion's "
        "mean intensity is compared with.</p>\n"
    )
    masks = {lesion.lesion_id: lesion.mask for lesion in analysis.lesions}
    order = sorted(records, key=lambda r: (not r["significant"], r["id"]))
    pictured = {r["id"] for r in order[:MAX_LESIONS_PICTURED]}
    if len(records) > len(pictured):
        parts.append(
            f'<p class="muted">Pictures are shown for {len(pictured)} of {len(records)} '
            "lesions (significant ones first, then the largest); the table lists all.</p>\n"
        )
    for r in records:
        if r["id"] not in pictured:
            continue
        planes, capped = _pictured_planes(r, masks[r["id"]])
        centroid = (
            "between the acquired slices"
            if r["centroid_ras_mm"] is None
            else "(" + ", ".join(f"{c:.1f}" for c in r["centroid_ras_mm"]) + ") mm RAS"
        )
        verdict = "significant" if r["significant"] else "not significant"
        lead = (
            f"{r['voxels']} voxels, {r['volume_mm3']:.0f} mm³, centroid {centroid}, "
            f"native slices {_span(r['native_slices'])}, model-grid planes "
            f"{_span(r['model_planes'])}; p Holm {_p(r['p_holm'])}: {verdict}."
        )
        caption = (
            f"Showing {len(planes)} of the {len(r['model_planes'])} planes the lesion spans, "
            "spread over its extent, with the plane holding most of its voxels."
            if capped
            else f"All {len(planes)} plane(s) the lesion spans."
        )
        png = _plane_figure(analysis, planes, r["id"], _plane_labels(analysis, planes))
        parts.append(
            f'<section id="lesion-{r["id"]}">\n<h3>Lesion {r["id"]}</h3>\n<p>{_e(lead)}</p>\n'
            f'<figure><img alt="lesion {r["id"]} on model-grid planes {_e(planes)}" '
            f'src="data:image/png;base64,{png}">\n<figcaption>{_e(caption)}</figcaption>'
            "</figure>\n</section>\n"
        )
    return "".join(parts)


def _overview_section(analysis) -> str:
    kept = np.flatnonzero(analysis.scan.kept)
    if kept.size == 0:
        return '<p class="muted">No plane of the model grid was kept: nothing to picture.</p>\n'
    # interior fractions: the extreme kept planes show little brain
    count = min(OVERVIEW_PLANES, kept.size)
    picks = np.unique((np.arange(1, count + 1) / (count + 1) * kept.size).astype(int))
    planes = [int(kept[i]) for i in picks]
    png = _plane_figure(analysis, planes, None, _plane_labels(analysis, planes))
    return (
        '<h2 id="pictures">A few kept planes</h2>\n'
        '<p class="muted">Radiological view (the patient\'s right on the left, anterior at the '
        "top). Panels: the standardised input, the model's reconstruction, the anomaly score "
        "with λ outlined in cyan where it is exceeded (nowhere, as nothing was selected), the "
        "input, and the reference.</p>\n"
        f'<figure><img alt="model-grid planes {_e(planes)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{_e(f'Planes {planes} of the model grid, spread over the kept ones.')}"
        "</figcaption></figure>\n"
    )


def render_html_report(analysis) -> str:
    """The HTML report of one analysed scan, as a string.

    Parameters
    ----------
    analysis
        A :class:`~medsi.pipeline.run.ScanAnalysis`. Its model-grid images
        (``reconstructions``, ``score_maps``, ``reference_slices``) are pictured when
        present; an analysis without them gets the input and the outlines only.

    Returns
    -------
    str
        A complete, self-contained HTML5 document (no scripts, no external resources).
    """
    report = analysis.report()
    records = report["lesions"]
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if records:
        findings = _lesion_table(records, analysis.settings.alpha)
        pictures = _lesion_sections(analysis, records)
    else:
        findings = (
            '<h2 id="lesions">Lesions</h2>\n'
            '<p id="no-findings"><b>No findings.</b> The model selected no voxel above the '
            "threshold λ on the kept planes of this scan, so there is nothing to test.</p>\n"
        )
        pictures = _overview_section(analysis)
    name = Path(report["input"]["path"]).name
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in analysis.seconds.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medsi report: {_e(name)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>medsi report</h1>
<p class="input">{_e(report["input"]["path"])}</p>
<p class="summary">{_e(report["summary"])}</p>
<p class="muted">{_e(_key_settings(analysis))}<br>Made {_e(created)} by medsi
{_e(__version__)}. Research software, not a medical device: every finding needs a reader's
review.</p>
{findings}{_explanation(analysis)}{pictures}{_settings_section(analysis, report)}
<p class="muted">Time per stage: {_e(seconds)}.</p>
</body>
</html>
"""


def write_html_report(analysis, path: str | os.PathLike) -> Path:
    """Write the HTML report of one analysed scan atomically.

    Parameters
    ----------
    analysis
        A :class:`~medsi.pipeline.run.ScanAnalysis`.
    path
        The file to write (e.g. ``out/report.html``); parent folders are created.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write_text(path, render_html_report(analysis))
