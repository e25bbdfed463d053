from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medsi.cli.train import train
from medsi.errors import ConfigError, InputDataError
from medsi.model.bundle import load_bundle

TINY = str(Path(__file__).parents[2] / "configs" / "train_tiny.yaml")


def _invoke(*args):
    return CliRunner().invoke(train, list(args))


def test_synthetic_makes_a_bundle(tmp_path):
    out = tmp_path / "bundle"
    result = _invoke(
        "--synthetic", "iid", "--size", "8", "--n-images", "64", "--epochs", "2",
        "--config", TINY, "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Bundle written to {out}" in result.output
    assert f"Next: medsi info {out}" in result.output
    assert (out / "manifest.json").is_file()
    assert (tmp_path / "bundle.checkpoints" / "checkpoint.pt").is_file()
    bundle = load_bundle(out)
    assert bundle.image_size == (8, 8)
    assert bundle.input_space == "synthetic iid 8x8"
    assert bundle.config["model"]["channels"] == [8, 16]
    assert bundle.training["epochs"] == 2
    assert bundle.training["n_train"] + bundle.training["n_heldout"] == 64


def test_resume_and_overwrite(tmp_path):
    out = tmp_path / "bundle"
    common = ["--synthetic", "corr", "--size", "8", "--n-images", "24", "--config", TINY]
    assert _invoke(*common, "--epochs", "1", "-o", str(out), "--quiet").exit_code == 0
    result = _invoke(*common, "--epochs", "2", "-o", str(out), "--resume", "--quiet")
    assert isinstance(result.exception, ConfigError)
    assert '"out" must not exist' in str(result.exception)
    result = _invoke(*common, "--epochs", "2", "-o", str(out), "--resume", "--overwrite", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    assert load_bundle(out).training["resumed_from"] == 1


def test_data_folder(tmp_path):
    data = tmp_path / "slices"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        np.save(data / f"volume{i}.npy", rng.standard_normal((4, 8, 8)).astype(np.float32))
    out = tmp_path / "bundle"
    result = _invoke("--data", str(data), "--config", TINY, "--epochs", "1", "-o", str(out))
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert bundle.training["n_train"] + bundle.training["n_heldout"] == 40
    assert len(bundle.reference_counts) == 4  # slice positions 0..3


def test_empty_data_folder_is_an_input_error(tmp_path):
    result = _invoke("--data", str(tmp_path), "-o", str(tmp_path / "b"))
    assert isinstance(result.exception, InputDataError)
    assert "must hold at least one" in str(result.exception)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Give exactly one of --data DIR, --synthetic"),
        (["--synthetic", "iid", "--data", "."], "Give exactly one of --data DIR, --synthetic"),
        (["--data", ".", "--size", "8"], "--size applies to --synthetic only"),
        (["--synthetic", "gauss"], "Invalid value for '--synthetic'"),
    ],
    ids=["neither", "both", "size-with-data", "unknown-kind"],
)
def test_usage_errors(tmp_path, args, message):
    result = _invoke(*args, "-o", str(tmp_path / "b"))
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model: [unclosed", '"--config" must be a readable YAML file'),
        ("- a\n- b\n", '"--config" must hold a mapping of sections'),
        ("model:\n  colours: 3\n", 'config key in section "model" must be one of'),
    ],
    ids=["bad-yaml", "not-a-mapping", "unknown-key"],
)
def test_bad_config_file(tmp_path, text, match):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    result = _invoke("--synthetic", "iid", "--config", str(cfg), "-o", str(tmp_path / "b"))
    assert isinstance(result.exception, ConfigError)
    assert match in str(result.exception)
