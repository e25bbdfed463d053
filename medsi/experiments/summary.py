"""Tables and figures of the synthetic experiments: rejection rates per method and setting.

Type-I error (null and robustness images) is the share of rejections among the images where
something was selected, since only those get a test; power is the share of rejections among
all images with a signal (an image where nothing is selected detects nothing). Each null rate
comes with the central 99% range of Binomial(n, alpha) / n, the band a valid method's rate
falls in 99 times out of 100, and selective p-values with a KS test of uniformity.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from medsi.experiments.settings import METHODS

__all__ = ["summarise", "write_csv", "plot_summary", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = (
    "group",
    "kind",
    "size",
    "signal",
    "family",
    "distance",
    "method",
    "n_images",
    "n_tested",
    "rejections",
    "rate",
    "band_low",
    "band_high",
    "ks_pvalue",
    "mean_evaluations",
    "median_seconds",
)
"""Columns of the summary table (one row per setting and method)."""


def summarise(records: list[dict], alpha: float, methods=METHODS) -> list[dict]:
    """One row per setting and method (see :data:`SUMMARY_COLUMNS`)."""
    by_setting: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        key = (r["group"], r["kind"], r["size"], r["signal"], r["family"], r["distance"])
        by_setting[key].append(r)
    rows = []
    for key in sorted(by_setting, key=_setting_order):
        group, kind, size, signal, family, distance = key
        recs = by_setting[key]
        tested = [r for r in recs if r["tested"]]
        evaluations = [r["evaluations"] for r in tested]
        for method in methods:
            ps = [r["p"][method] for r in tested if r["p"].get(method) is not None]
            if not ps and tested:
                continue
            rejections = int(sum(p < alpha for p in ps))
            is_null = group != "power"
            denominator = len(ps) if is_null else len(recs)
            rate = rejections / denominator if denominator else float("nan")
            low = high = ks = float("nan")
            if is_null and ps:
                low = stats.binom.ppf(0.005, len(ps), alpha) / len(ps)
                high = stats.binom.ppf(0.995, len(ps), alpha) / len(ps)
                if method in ("proposed", "component", "oc"):
                    ks = float(stats.kstest(ps, "uniform").pvalue)
            seconds = [r["seconds_search"] for r in tested]
            if method == "permutation":
                seconds = [r["seconds_permutation"] for r in tested if "seconds_permutation" in r]
            rows.append(
                {
                    "group": group,
                    "kind": kind,
                    "size": size,
                    "signal": signal,
                    "family": family,
                    "distance": distance,
                    "method": method,
                    "n_images": len(recs),
                    "n_tested": len(ps),
                    "rejections": rejections,
                    "rate": rate,
                    "band_low": low,
                    "band_high": high,
                    "ks_pvalue": ks,
                    "mean_evaluations": float(np.mean(evaluations)) if evaluations else 0.0,
                    "median_seconds": float(np.median(seconds)) if seconds else 0.0,
                }
            )
    return rows


def _setting_order(key):
    group, kind, size, signal, family, distance = key
    return ({"null": 0, "power": 1, "robustness": 2}[group], kind, size, signal, family, distance)


def write_csv(rows: list[dict]) -> str:
    """The summary as CSV text (rates to 4 decimals)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rates, one line per setting and method."""
    lines = [
        f"{'group':<10} {'kind':<5} {'size':>4} {'signal':>6} {'noise':<14} {'method':<11} "
        f"{'tested':>6} {'rate':>6} {'99% band':>13} {'KS p':>7} {'evals':>7}"
    ]
    for r in rows:
        noise = r["family"] if r["family"] == "normal" else f"{r['family']}@{r['distance']:g}"
        band = f"{r['band_low']:.3f}-{r['band_high']:.3f}" if np.isfinite(r["band_low"]) else "-"
        ks = f"{r['ks_pvalue']:.3f}" if np.isfinite(r["ks_pvalue"]) else "-"
        lines.append(
            f"{r['group']:<10} {r['kind']:<5} {r['size']:>4} {r['signal']:>6g} {noise:<14} "
            f"{r['method']:<11} {r['n_tested']:>6} {r['rate']:>6.3f} {band:>13} {ks:>7} "
            f"{r['mean_evaluations']:>7.0f}"
        )
    return "\n".join(lines)


def plot_summary(rows: list[dict], alpha: float, folder: Path) -> list[Path]:
    """Draw the paper's figures as PNG files in ``folder``; returns the files written.

    ``type1_error.png``: type-I error against image size per kind; ``power.png``: power
    against signal per kind; ``robustness.png``: type-I error against the noise's distance
    from N(0, 1) per family. A figure is drawn only when its group has rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsi.atomic import atomic_write_bytes

    written = []
    figures = (
        ("null", "size", "image side (pixels)", "type-I error", "type1_error.png", "kind"),
        ("power", "signal", "signal", "power", "power.png", "kind"),
        (
            "robustness",
            "distance",
            "1-Wasserstein distance",
            "type-I error",
            "robustness.png",
            "family",
        ),
    )
    for group, x_key, x_label, y_label, name, panel_key in figures:
        group_rows = [r for r in rows if r["group"] == group]
        if not group_rows:
            continue
        panels = sorted({r[panel_key] for r in group_rows})
        fig, axes = plt.subplots(
            1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True
        )
        for ax, panel in zip(axes[0], panels, strict=True):
            for method in METHODS:
                pts = sorted(
                    (r[x_key], r["rate"])
                    for r in group_rows
                    if r[panel_key] == panel and r["method"] == method
                )
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", label=method)
            if group != "power":
                ax.axhline(alpha, color="grey", linestyle="--", linewidth=1)
            ax.set_title(str(panel))
            ax.set_xlabel(x_label)
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel(y_label)
        axes[0][-1].legend(fontsize="small")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        path = Path(folder) / name
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written
