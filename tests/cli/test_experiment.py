import csv
import json
from pathlib import Path

from click.testing import CliRunner

from medsi.cli.main import main

TINY = str(Path(__file__).parents[2] / "configs" / "train_tiny.yaml")


def test_synthetic_experiment_runs_end_to_end(tmp_path):
    out = tmp_path / "experiment"
    result = CliRunner().invoke(
        main,
        [
            "experiment", "synthetic", "--n", "20", "--size", "8", "--config", TINY,
            "--epochs", "2", "--train-images", "60", "--kind", "iid", "--signal", "3",
            "--permutations", "20", "--termination", "decision", "--quiet", "-o", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Wrote 40 image records and the summary to {out}." in result.output
    results = json.loads((out / "results.json").read_text())
    assert len(results["records"]) == 40
    rows = list(csv.DictReader((out / "summary.csv").open()))
    methods = {r["method"] for r in rows if r["group"] == "null"}
    assert methods == {"proposed", "component", "oc", "naive", "bonferroni", "permutation"}
    assert {r["group"] for r in rows} == {"null", "power"}
    assert (out / "type1_error.png").is_file() and (out / "power.png").is_file()
    assert (out / "models" / "iid-8" / "manifest.json").is_file()


def test_unknown_setting_in_the_config_is_a_one_line_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("experiment:\n  colour: blue\n")
    result = CliRunner().invoke(
        main, ["experiment", "synthetic", "--config", str(config), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "unknown experiment setting(s) 'colour'" in result.output
