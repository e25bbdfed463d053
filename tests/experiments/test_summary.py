import numpy as np
import pytest
from scipy import stats

from medsi.experiments import plot_summary, summarise
from medsi.experiments.summary import format_table, write_csv


def _record(group, p, signal=0.0, tested=True, family="normal", distance=0.0):
    rec = {
        "group": group,
        "kind": "iid",
        "size": 8,
        "signal": signal,
        "family": family,
        "distance": distance,
        "tested": tested,
    }
    if tested:
        rec.update(
            evaluations=10,
            seconds_search=0.5,
            p={m: p for m in ("proposed", "component", "oc", "naive", "bonferroni")}
            | {"permutation": None},
        )
    return rec


def test_null_rate_counts_only_tested_images_and_gives_the_binomial_band():
    ps = np.linspace(0.005, 0.995, 100)  # 5 of 100 below 0.05
    records = [_record("null", float(p)) for p in ps] + [_record("null", 0, tested=False)] * 7
    rows = {r["method"]: r for r in summarise(records, 0.05)}
    row = rows["proposed"]
    assert row["n_images"] == 107 and row["n_tested"] == 100
    assert row["rejections"] == 5 and row["rate"] == pytest.approx(0.05)
    assert row["band_low"] == stats.binom.ppf(0.005, 100, 0.05) / 100
    assert row["band_high"] == stats.binom.ppf(0.995, 100, 0.05) / 100
    assert row["ks_pvalue"] > 0.5  # evenly spread p-values look uniform
    assert np.isnan(rows["naive"]["ks_pvalue"])  # no uniformity claim for invalid methods
    assert "permutation" not in rows  # not computed, no row


def test_power_counts_untested_images_as_misses():
    records = [_record("power", 0.001, signal=2.0)] * 6 + [
        _record("power", 0, signal=2.0, tested=False)
    ] * 4
    row = next(r for r in summarise(records, 0.05) if r["method"] == "proposed")
    assert row["rate"] == pytest.approx(0.6) and np.isnan(row["band_low"])


def test_csv_table_and_figures(tmp_path):
    records = [_record("null", p) for p in (0.01, 0.5, 0.9)]
    records += [_record("power", 0.01, signal=s) for s in (1.0, 2.0)]
    records += [_record("robustness", 0.3, family="t", distance=d) for d in (0.03, 0.06)]
    rows = summarise(records, 0.05)
    text = write_csv(rows)
    assert text.splitlines()[0].startswith("group,kind,size,signal")
    assert len(text.splitlines()) == len(rows) + 1
    assert "proposed" in format_table(rows)
    files = plot_summary(rows, 0.05, tmp_path)
    assert sorted(f.name for f in files) == ["power.png", "robustness.png", "type1_error.png"]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
