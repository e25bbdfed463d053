"""Tests of medsi.model.bundle and medsi.model.config: build, save, load, describe, `medsi info`."""

import dataclasses
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medsi.cli.info import info
from medsi.errors import ConfigError, InputDataError, NotPiecewiseLinearError
from medsi.model import AnomalyScore, DDIMReconstruction, PLUNet
from medsi.model import _bundle_io as bundle_io
from medsi.model.bundle import (
    ModelBundle,
    build_bundle,
    describe_bundle,
    load_bundle,
    save_bundle,
)
from medsi.model.config import default_config, validate_config
from medsi.si import Diagonal, Isotropic, Stationary, check_piecewise_linear
from tests.model.conftest import small_unet

FILES = ["config.yaml", "weights.pt", "covariance.npz", "reference_bank.npz"]


def _config(kind="isotropic", **diffusion):
    cfg = default_config()
    cfg["model"].update(channels=[4, 8], time_embed_dim=8)
    cfg["covariance"]["kind"] = kind
    cfg["diffusion"].update(diffusion)
    return cfg


def _unet():
    return small_unet(channels=(4, 8), time_embed_dim=8, dtype=torch.float64)


def _heldout(n=30, seed=0):
    return 0.5 + 1.5 * np.random.default_rng(seed).standard_normal((n, 8, 8))


def _build(kind="isotropic", positions=None, n=30, **kwargs):
    positions = np.arange(n) % 3 if positions is None else positions
    return build_bundle(
        _unet(),
        _config(kind),
        _heldout(n),
        positions=positions,
        training={"epochs": 2, "losses": np.array([1.0, 0.5]), "seed": 0, "n_train": 120},
        input_space="synthetic iid 8x8",
        **kwargs,
    )


@pytest.fixture(scope="module")
def bundle():
    return _build()


@pytest.fixture
def saved(bundle, tmp_path):
    return save_bundle(bundle, tmp_path / "bundle")


def _rewrite(path, name, data):
    """Replace a file and update the manifest consistently (sha256 and content hash)."""
    (path / name).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    files = {f: (path / f).read_bytes() for f in FILES}
    for entry in manifest["files"]:
        entry["sha256"] = hashlib.sha256(files[entry["name"]]).hexdigest()
    metadata = {k: manifest[k] for k in ("image_size", "input_space", "training", "versions")}
    manifest["content_hash"] = bundle_io.content_hash(files, metadata)
    (path / "manifest.json").write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------------- build


def test_build_bundle_holds_the_bank_the_covariance_and_a_float32_eval_copy(bundle):
    heldout, positions = _heldout(), np.arange(30) % 3
    assert bundle.unet.out.conv.weight.dtype == torch.float32
    assert not any(m.training for m in bundle.unet.modules())
    assert bundle.image_size == (8, 8)
    assert bundle.reference_counts.tolist() == [10, 10, 10]
    for p in range(3):
        np.testing.assert_allclose(bundle.reference_means[p], heldout[positions == p].mean(0))
    residuals = heldout - bundle.reference_means[positions]
    assert isinstance(bundle.covariance, Isotropic)
    # N - P = 27 degrees of freedom
    assert bundle.covariance.variance == pytest.approx(np.sum(residuals**2) / (27 * 64))
    assert bundle.training == {
        "epochs": 2,
        "losses": [1.0, 0.5],
        "seed": 0,
        "n_train": 120,
        "n_heldout": 30,
    }
    assert {"medsi", "torch", "monai", "numpy"} <= set(bundle.versions)
    assert re.fullmatch("[0-9a-f]{64}", bundle.content_hash)
    assert bundle.path is None
    assert not bundle.reference_means.flags.writeable


def test_build_bundle_leaves_the_callers_unet_alone():
    unet = _unet()
    build_bundle(unet, _config(), _heldout())
    assert unet.out.conv.weight.dtype == torch.float64


def test_build_bundle_is_deterministic():
    assert _build().content_hash == _build().content_hash
    assert _build().content_hash != _build(n=33).content_hash


BUILD_ERRORS = [
    (
        "unet-mismatch",
        lambda: build_bundle(small_unet(channels=(4, 16), time_embed_dim=8), _config(), _heldout()),
        ConfigError,
        'must match config\\["model"\\], got channels',
    ),
    (
        "not-a-plunet",
        lambda: build_bundle(torch.nn.Linear(2, 2), _config(), _heldout()),
        TypeError,
        "PLUNet",
    ),
    (
        "heldout-shape",
        lambda: build_bundle(_unet(), _config(), np.zeros((5, 16, 16))),
        ConfigError,
        r"\(N, 8, 8\)",
    ),
    (
        "one-image",
        lambda: build_bundle(_unet(), _config(), _heldout(1)),
        ConfigError,
        "at least 2 images",
    ),
    (
        "heldout-nan",
        lambda: build_bundle(_unet(), _config(), np.full((3, 8, 8), np.nan)),
        ConfigError,
        "finite",
    ),
    (
        "one-per-position",
        lambda: build_bundle(_unet(), _config(), _heldout(4), positions=np.arange(4)),
        ConfigError,
        "at least two held-out images at some position",
    ),
    (
        "positions-shape",
        lambda: build_bundle(_unet(), _config(), _heldout(4), positions=np.zeros(3, dtype=int)),
        ConfigError,
        r'"positions" must have shape \(4,\)',
    ),
    (
        "negative-position",
        lambda: build_bundle(_unet(), _config(), _heldout(4), positions=-np.ones(4, dtype=int)),
        ConfigError,
        '"positions" must be in',
    ),
    (
        "n-heldout-disagrees",
        lambda: build_bundle(_unet(), _config(), _heldout(4), training={"n_heldout": 5}),
        ConfigError,
        "n_heldout must be the number of held-out images 4",
    ),
    (
        "training-not-plain",
        lambda: build_bundle(_unet(), _config(), _heldout(4), training={"x": object()}),
        TypeError,
        "plain value",
    ),
    (
        "bad-config",
        lambda: build_bundle(_unet(), {"model": {"colour": 1}}, _heldout(4)),
        ConfigError,
        "colour",
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "error", "match"), BUILD_ERRORS, ids=[e[0] for e in BUILD_ERRORS]
)
def test_build_bundle_errors(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------ save / load


def _assert_same(a: ModelBundle, b: ModelBundle):
    state_a, state_b = a.unet.state_dict(), b.unet.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype
        assert torch.equal(state_a[key], state_b[key]), key
    assert a.config == b.config
    assert a.image_size == b.image_size
    assert a.input_space == b.input_space
    assert a.training == b.training
    assert a.versions == b.versions
    assert a.content_hash == b.content_hash
    for name in ("reference_means", "reference_counts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert type(a.covariance) is type(b.covariance)
    array = {Isotropic: "variance", Diagonal: "variance_map", Stationary: "kernel"}
    attribute = array[type(a.covariance)]
    np.testing.assert_array_equal(
        getattr(a.covariance, attribute), getattr(b.covariance, attribute)
    )


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "stationary"])
def test_save_load_round_trips_bit_exactly(kind, tmp_path):
    original = _build(kind)
    path = save_bundle(original, tmp_path / "b")
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, "manifest.json"])
    loaded = load_bundle(path)
    _assert_same(original, loaded)
    assert loaded.path == path
    # saving the loaded bundle again writes the same bytes
    again = save_bundle(loaded, tmp_path / "again")
    for name in [*FILES, "manifest.json"]:
        assert (again / name).read_bytes() == (path / name).read_bytes(), name


def test_manifest_lists_files_hashes_and_facts(bundle, saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["content_hash"] == bundle.content_hash
    assert manifest["image_size"] == [8, 8]
    assert manifest["input_space"] == "synthetic iid 8x8"
    assert manifest["training"]["n_heldout"] == 30
    for entry in manifest["files"]:
        data = (saved / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)


def test_loaded_score_is_piecewise_linear_and_equals_the_original(bundle, saved):
    loaded = load_bundle(saved)
    score = loaded.score()
    check_piecewise_linear(score)
    assert isinstance(score, AnomalyScore) and not score.training
    assert score.kernel_size == 3 and score.signed is False
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = bundle.score()(x)
        assert torch.equal(score(x), expected)
        assert not torch.equal(loaded.score(signed=True)(x), expected)
    # the bundle's own U-Net is untouched by making float64 copies
    assert loaded.unet.out.conv.weight.dtype == torch.float32


def test_reconstruction_follows_the_config_diffusion_section():
    cfg = _config(start_timestep=100, num_steps=3, eta=0.0, seed=7)
    bundle = build_bundle(_unet(), cfg, _heldout())
    rec = bundle.reconstruction()
    assert isinstance(rec, DDIMReconstruction)
    assert rec.timesteps == (100, 50, 0)
    assert (rec.eta, rec.seed) == (0.0, 7)
    assert next(rec.parameters()).dtype == torch.float64
    assert bundle.reconstruction(dtype=torch.float32).unet is not bundle.unet


@pytest.mark.parametrize("kind", ["isotropic", "stationary"])
def test_reference_divides_the_covariance_by_the_count(kind):
    positions = np.array([0] * 5 + [1] * 10 + [3] * 15)
    bundle = _build(kind, positions=positions)
    assert bundle.reference_counts.tolist() == [5, 10, 0, 15]
    heldout = _heldout()
    for position, count in [(0, 5), (1, 10), (3, 15)]:
        mean, covariance = bundle.reference(position)
        np.testing.assert_allclose(mean, heldout[positions == position].mean(0))
        np.testing.assert_allclose(
            covariance.to_dense((8, 8)), bundle.covariance.to_dense((8, 8)) / count, rtol=1e-12
        )
    with pytest.raises(ConfigError, match="has none"):
        bundle.reference(2)
    with pytest.raises(ConfigError, match=r'"position" must be in \[0, 3\]'):
        bundle.reference(4)
    with pytest.raises(TypeError, match='"position" must be an int'):
        bundle.reference(True)


@pytest.mark.parametrize("name", FILES)
def test_a_changed_file_is_refused(saved, name):
    data = bytearray((saved / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (saved / name).write_bytes(bytes(data))
    with pytest.raises(InputDataError, match=f'"{re.escape(name)}" must have the sha256'):
        load_bundle(saved)


@pytest.mark.parametrize("name", [*FILES, "manifest.json"])
def test_a_missing_file_is_refused(saved, name):
    (saved / name).unlink()
    with pytest.raises(InputDataError, match=f'"{re.escape(name)}" must be present'):
        load_bundle(saved)


def test_an_edited_manifest_is_refused(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["input_space"] = "something else"
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputDataError, match="content hash"):
        load_bundle(saved)


def test_a_file_changed_together_with_its_listed_sha256_is_refused(saved):
    text = (saved / "config.yaml").read_text().replace("threshold: 0.8", "threshold: 0.5")
    (saved / "config.yaml").write_text(text)
    manifest = json.loads((saved / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["name"] == "config.yaml":
            entry["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputDataError, match="content hash"):
        load_bundle(saved)


def test_weights_that_do_not_fit_the_config_are_refused(saved, tmp_path):
    other = build_bundle(small_unet(channels=(4, 16), time_embed_dim=8), _rewidened(), _heldout())
    other_path = save_bundle(other, tmp_path / "other")
    _rewrite(saved, "weights.pt", (other_path / "weights.pt").read_bytes())
    with pytest.raises(InputDataError, match='"weights.pt" must fit the U-Net'):
        load_bundle(saved)


def _rewidened():
    cfg = _config()
    cfg["model"]["channels"] = [4, 16]
    return cfg


def test_an_invalid_config_file_is_refused(saved):
    text = (saved / "config.yaml").read_text().replace("eta: 1.0", "eta: 2.0")
    _rewrite(saved, "config.yaml", text.encode())
    with pytest.raises(InputDataError, match=r'"config.yaml" holds an invalid config.*eta'):
        load_bundle(saved)


def test_a_bundle_path_must_be_a_folder(tmp_path):
    with pytest.raises(InputDataError, match="missing"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputDataError, match="a file"):
        load_bundle(tmp_path / "file")


def test_save_refuses_to_overwrite_unless_asked(bundle, tmp_path):
    path = save_bundle(bundle, tmp_path / "b")
    with pytest.raises(ConfigError, match="overwrite=True"):
        save_bundle(bundle, path)
    other = _build(n=33)
    assert save_bundle(other, path, overwrite=True) == path
    assert load_bundle(path).content_hash == other.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folders left


def test_overwrite_never_replaces_a_folder_that_is_not_a_bundle(bundle, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not one"):
        save_bundle(bundle, folder, overwrite=True)
    assert (folder / "precious.txt").read_text() == "keep me"


def test_save_refuses_a_bundle_changed_after_build(bundle, tmp_path):
    changed = dataclasses.replace(bundle, input_space="other")
    with pytest.raises(ConfigError, match="content_hash"):
        save_bundle(changed, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_load_checks_that_the_score_is_piecewise_linear(saved, monkeypatch):
    rebuild = bundle_io.unet_from_config

    def with_silu(model):
        unet = rebuild(model)
        unet.time_mlp[1] = torch.nn.SiLU()  # no parameters: the weights still fit
        return unet

    monkeypatch.setattr(bundle_io, "unet_from_config", with_silu)
    with pytest.raises(NotPiecewiseLinearError, match="SiLU"):
        load_bundle(saved)


def test_wrong_argument_types(bundle, tmp_path):
    with pytest.raises(TypeError, match='"bundle" must be a ModelBundle'):
        save_bundle({"unet": None}, tmp_path / "b")
    with pytest.raises(TypeError, match='"bundle" must be a ModelBundle'):
        describe_bundle(None)
    with pytest.raises(TypeError, match='"covariance" must be a medsi.si.Covariance'):
        dataclasses.replace(bundle, covariance=np.eye(64))


def test_bundle_fields_are_checked(bundle):
    with pytest.raises(ConfigError, match='"image_size" must equal'):
        dataclasses.replace(bundle, image_size=(16, 16))
    with pytest.raises(ConfigError, match="float32 and in eval mode"):
        dataclasses.replace(bundle, unet=_unet())
    with pytest.raises(ConfigError, match="Diagonal covariance serves"):
        dataclasses.replace(bundle, covariance=Diagonal(np.ones((4, 4))))


# -------------------------------------------------------------------------- describe / info


def test_describe_bundle_shows_the_key_facts(bundle, saved):
    text = describe_bundle(load_bundle(saved))
    for fact in [
        bundle.content_hash,
        str(saved),
        "1 x 8 x 8, synthetic iid 8x8",
        "channels [4, 8]",
        "DDIM from T' 460 in 5 steps [460, 345, 230, 115, 0]",
        "absolute",
        "threshold 0.8",
        f"isotropic, variance {bundle.covariance.variance:.4g}",
        "3 position(s), 30 held-out image(s)",
        "n_heldout",
        f"torch {torch.__version__}",
    ]:
        assert fact in text, fact
    assert "(not saved)" in describe_bundle(bundle)


def test_info_command_prints_the_bundle(bundle, saved):
    result = CliRunner().invoke(info, [str(saved)])
    assert result.exit_code == 0, result.output
    assert bundle.content_hash in result.output
    assert "reference bank" in result.output


def test_info_command_fails_on_a_damaged_bundle(saved):
    (saved / "weights.pt").write_bytes(b"damaged")
    result = CliRunner().invoke(info, [str(saved)])
    assert result.exit_code == 1
    assert isinstance(result.exception, InputDataError)


def test_info_command_needs_an_existing_path(tmp_path):
    result = CliRunner().invoke(info, [str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


# ----------------------------------------------------------------------------------- config


def test_default_config_is_the_paper_recipe_and_a_fresh_copy():
    cfg = default_config()
    assert cfg["model"]["channels"] == [32, 64, 128, 256]
    assert cfg["diffusion"]["start_timestep"] == 460
    assert cfg["score"] == {"kernel_size": 3, "signed": False, "threshold": 0.8}
    assert cfg["covariance"] == {"kind": "isotropic", "radius": 2}
    cfg["model"]["channels"].append(512)
    assert default_config()["model"]["channels"] == [32, 64, 128, 256]
    assert validate_config(default_config()) == default_config()


def test_validate_config_fills_defaults_and_reads_numeric_strings():
    cfg = validate_config({"training": {"learning_rate": "3e-4"}, "score": None})
    assert cfg["training"]["learning_rate"] == 3e-4
    assert cfg["score"] == default_config()["score"]
    assert list(cfg) == ["model", "diffusion", "score", "training", "covariance", "data"]


def _with(section, key, value):
    return {section: {key: value}}


CONFIG_ERRORS = [
    ("unknown-section", {"optimiser": {}}, "config section must be one of"),
    ("unknown-key", _with("model", "dropout", 0.1), 'section "model" must be one of'),
    ("section-not-mapping", {"model": [1, 2]}, 'section "model" must be a mapping'),
    ("float-for-int", _with("training", "epochs", 10.5), '"training.epochs" must be an integer'),
    ("bool-for-int", _with("training", "epochs", True), '"training.epochs" must be an integer'),
    ("zero-epochs", _with("training", "epochs", 0), '"training.epochs" must be >= 1'),
    ("eta", _with("diffusion", "eta", 1.5), r'"diffusion.eta" must be in \[0, 1\]'),
    ("beta-zero", _with("diffusion", "beta_start", 0.0), '"diffusion.beta_start" must be in'),
    ("fraction", _with("training", "heldout_fraction", 1.0), '"training.heldout_fraction"'),
    ("lr-text", _with("training", "learning_rate", "fast"), '"training.learning_rate" must be'),
    ("threshold-nan", _with("score", "threshold", float("nan")), '"score.threshold"'),
    ("signed", _with("score", "signed", "yes"), '"score.signed" must be true or false'),
    ("kind", _with("covariance", "kind", "spherical"), '"covariance.kind" must be one of'),
    ("channels-empty", _with("model", "channels", []), '"model.channels" must have at least'),
    ("channels-text", _with("model", "channels", "32"), '"model.channels" must be a list'),
    ("size-3", _with("data", "image_size", [8, 8, 8]), '"data.image_size" must have 2'),
    ("size-divisible", _with("data", "image_size", [12, 12]), "divisible by 8"),
    ("even-kernel", _with("score", "kernel_size", 4), '"score.kernel_size" must be odd'),
    ("start-beyond-T", _with("diffusion", "start_timestep", 1000), "must be below"),
    ("too-many-steps", _with("diffusion", "num_steps", 462), "at most start_timestep"),
    (
        "betas-reversed",
        {"diffusion": {"beta_start": 0.03, "beta_end": 0.02}},
        '"diffusion.beta_start" must be <=',
    ),
    (
        "radius-too-large",
        {"covariance": {"kind": "stationary", "radius": 8}},
        '"covariance.radius" must be below',
    ),
]


@pytest.mark.parametrize(("name", "cfg", "match"), CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_validate_config_errors(name, cfg, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_validate_config_needs_a_mapping():
    with pytest.raises(TypeError, match="mapping of sections"):
        validate_config([("model", {})])


def test_unet_rebuilt_from_config_matches(bundle):
    rebuilt = bundle_io.unet_from_config(bundle.config["model"])
    assert isinstance(rebuilt, PLUNet)
    assert rebuilt.config == bundle.unet.config
