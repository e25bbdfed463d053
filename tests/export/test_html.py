import base64
import dataclasses
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from medsi.data import LesionConfig, PhantomConfig, make_phantom, save_nifti
from medsi.export.html import render_html_report, write_html_report
from medsi.pipeline.run import analyse_scan, write_outputs
from medsi.pipeline.settings import RunSettings

CHROMIUM = os.environ.get("MEDSI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# a file name a browser would run as markup if the report did not escape it
HOSTILE_NAME = "<b onmouseover='alert(1)'>&\"flair.nii.gz"
HOSTILE_NOTE = "<script>alert('note')</script> & <img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory):
    config = PhantomConfig(
        spacing_mm=2.0, lesions=LesionConfig(count=2, radius_mm=(6, 9), contrast=1.5)
    )
    phantom = make_phantom(123, config)
    path = tmp_path_factory.mktemp("scan") / HOSTILE_NAME
    save_nifti(phantom.image, phantom.affine, path)
    return path


def _few_lesions_threshold(bundle, path, quantile=0.9995):
    """A lambda selecting only the brightest few voxels of the scan (keeps the tests short)."""
    from medsi.pipeline.preprocess import prepare_scan
    from medsi.pipeline.run import grid_of_bundle
    from medsi.si import LineEvaluator

    scan = prepare_scan(path, grid_of_bundle(bundle))
    scores = LineEvaluator(bundle.score(), 0.0).score_map(scan.slices)
    return float(np.quantile(scores[scan.brain], quantile))


@pytest.fixture(scope="module")
def lesion_outputs(tiny_mri_bundle, phantom_path, tmp_path_factory):
    """A real analysis with a few lesions (termination oc: one evaluation each) and its files."""
    threshold = _few_lesions_threshold(tiny_mri_bundle, phantom_path)
    settings = RunSettings(threshold=threshold, termination="oc")
    analysis = analyse_scan(phantom_path, tiny_mri_bundle, settings, progress=False)
    assert len(analysis.lesions) >= 2
    files = write_outputs(analysis, tmp_path_factory.mktemp("out"))
    return analysis, files


@pytest.fixture(scope="module")
def no_findings_analysis(tiny_mri_bundle, phantom_path):
    return analyse_scan(phantom_path, tiny_mri_bundle, RunSettings(threshold=1e6), progress=False)


class _ReportParser(HTMLParser):
    """Collects the lesion table's cells (data-key -> data-value and text), images and links."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.links, self.tags = [], [], [], set()
        self._in_table = False
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "table" and attrs.get("id") == "lesion-table":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append({})
        elif self._in_table and tag == "td" and "data-key" in attrs:
            self._cell = [attrs["data-key"], json.loads(attrs["data-value"]), ""]
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("src", "href"):
            if name in attrs:
                self.links.append(attrs[name])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "td" and self._cell is not None:
            key, value, text = self._cell
            self.rows[-1][key] = (value, text)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data


def _parse(text: str) -> _ReportParser:
    parser = _ReportParser()
    parser.feed(text)
    return parser


def test_table_holds_every_lesion_as_in_report_json(lesion_outputs):
    analysis, files = lesion_outputs
    report = json.loads(files["report"].read_text())
    assert report["html_report"] == "report.html"
    assert files["html"] == files["report"].parent / report["html_report"]
    parsed = _parse(files["html"].read_text())
    rows = [row for row in parsed.rows if row]
    records = report["lesions"]
    assert len(rows) == len(records) == len(analysis.lesions)
    for row, record in zip(rows, records, strict=True):
        for key in ("id", "model_planes", "voxels", "volume_mm3", "mean_difference", "z"):
            assert row[key][0] == record[key], key
        for key in ("p_naive", "p_oc", "p_holm"):
            value, text = row[key]
            assert value == record[key] and text == f"{record[key]:.3g}", key
        for event in ("full", "component"):
            value, text = row[f"p_{event}"]
            assert value == [record[f"p_{event}"], record[f"p_{event}_bounds"]]
            lo, hi = record[f"p_{event}_bounds"]
            # termination oc: no search, so the cell gives the bounds and says so
            assert text == f"[{lo:.3g}, {hi:.3g}]not searched", text
        value, text = row["significant"]
        assert value == record["significant"]
        assert text.startswith("significant" if record["significant"] else "not significant")
        assert "by oc p" in text


def test_each_lesion_is_pictured_on_its_planes(lesion_outputs):
    analysis, files = lesion_outputs
    text = files["html"].read_text()
    for record in analysis.lesion_records():
        section = re.search(
            rf'<section id="lesion-{record["id"]}">(.*?)</section>', text, flags=re.S
        )
        assert section, f"lesion {record['id']} has no pictures"
        assert section.group(1).count('src="data:image/png;base64,') == 1
        planes = record["model_planes"]
        if len(planes) > 6:
            assert f"Showing 6 of the {len(planes)} planes" in section.group(1)
    assert "What the p-values mean" in text and "Holm-adjusted p" in text


def test_the_pictured_maps_are_the_models_selection(lesion_outputs):
    analysis, _ = lesion_outputs
    kept = analysis.scan.kept
    assert np.isfinite(analysis.reconstructions[kept]).all()
    assert np.isnan(analysis.score_maps[~kept]).all()
    above = np.nan_to_num(analysis.score_maps, nan=-np.inf) > analysis.threshold
    np.testing.assert_array_equal(above & analysis.scan.brain, analysis.grid_labels > 0)
    assert analysis.reference_slices.shape == analysis.scan.slices.shape
    assert "views" in analysis.seconds


def test_a_scan_without_findings_gets_a_report_that_says_so(no_findings_analysis, tmp_path):
    path = write_html_report(no_findings_analysis, tmp_path / "none" / "report.html")
    text = path.read_text()
    parsed = _parse(text)
    assert 'id="no-findings"' in text and "No findings." in text
    assert 'id="lesion-table"' not in text
    assert "Settings" in text and no_findings_analysis.bundle_hash in text
    assert len(parsed.images) == 1 and parsed.images[0].startswith("data:image/png;base64,")
    assert "What the p-values mean" in text


def test_strings_from_the_input_are_escaped(no_findings_analysis):
    analysis = no_findings_analysis  # the same input name and notes, and quick to draw
    scan = dataclasses.replace(analysis.scan, notes=(*analysis.scan.notes, HOSTILE_NOTE))
    text = render_html_report(dataclasses.replace(analysis, scan=scan))
    for hostile in (HOSTILE_NAME, HOSTILE_NOTE, "<script", "<img src=x", "onmouseover='"):
        assert hostile not in text, hostile
    assert "&lt;b onmouseover=&#x27;alert(1)&#x27;&gt;&amp;&quot;flair.nii.gz" in text
    assert "&lt;script&gt;alert(&#x27;note&#x27;)&lt;/script&gt;" in text
    assert "script" not in _parse(text).tags


def test_report_is_self_contained(lesion_outputs):
    _, files = lesion_outputs
    text = files["html"].read_text()
    parsed = _parse(text)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, flags=re.I)
    assert not {"script", "link", "iframe", "object"} & parsed.tags
    assert parsed.images and all(s.startswith("data:image/png;base64,") for s in parsed.images)
    for src in parsed.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(link.startswith(("#", "data:image/png;base64,")) for link in parsed.links)


def _require_browser():
    """Skip (or fail with MEDSI_REQUIRE_TOOLS=1) unless playwright and chromium are here."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the Python package playwright is not installed (pip install -e '.[dev]')"
    if reason is None and not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        reason = f"chromium not found at {CHROMIUM} (Debian package chromium; or MEDSI_CHROMIUM)"
    if reason:
        if os.environ.get("MEDSI_REQUIRE_TOOLS") == "1":
            pytest.fail(f"MEDSI_REQUIRE_TOOLS=1 but {reason}")
        pytest.skip(reason)


def test_report_opens_in_chromium_with_the_table_in_view(lesion_outputs, tmp_path):
    _require_browser()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    _, files = lesion_outputs
    problems = []
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(files["html"].resolve().as_uri(), wait_until="load")
            table = page.locator("#lesion-table")
            box = table.bounding_box()
            in_view = table.evaluate(
                "t => { const r = t.getBoundingClientRect();"
                " return r.top >= 0 && r.top < window.innerHeight && r.height > 0; }"
            )
            images_decoded = page.evaluate(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert problems == []
    assert box is not None and box["width"] > 0 and box["height"] > 0
    assert in_view and images_decoded
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20  # text and table, not a blank page
