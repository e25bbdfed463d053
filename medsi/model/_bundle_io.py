"""Files and checks behind :mod:`medsi.model.bundle`: serialisation, hashing, validation.

Every file is written deterministically (``torch.save`` of the state dict; ``.npz`` archives
uncompressed with fixed timestamps), so equal contents give equal bytes and the content hash
is a property of the contents.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import yaml

from medsi.errors import ConfigError, InputDataError
from medsi.model.unet import PLUNet
from medsi.si.covariance import Covariance, Dense, Diagonal, Isotropic, Stationary, real_array

FORMAT = "medsi-model-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = ("config.yaml", "weights.pt", "covariance.npz", "reference_bank.npz")
_NPZ_TIME = (1980, 1, 1, 0, 0, 0)
MAX_POSITIONS = 100_000


def read_manifest(path: Path) -> dict:
    """Read and check the structure of ``manifest.json``."""
    file = path / MANIFEST
    if not file.is_file():
        raise InputDataError(
            f'bundle file "{MANIFEST}" must be present, got a folder {str(path)!r} without it; '
            "pass a folder written by save_bundle."
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputDataError(
            f'bundle file "{MANIFEST}" must be readable JSON, got an error: {e}; restore it or '
            "save the bundle again."
        ) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputDataError(
            f'bundle file "{MANIFEST}" must declare format "{FORMAT}", got '
            f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}; pass a "
            "folder written by save_bundle."
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputDataError(
            f'bundle file "{MANIFEST}" must have format_version {FORMAT_VERSION}, got '
            f"{manifest.get('format_version')!r}; use the medsi version that wrote it."
        )
    expected = {
        "content_hash": str,
        "image_size": list,
        "input_space": str,
        "training": dict,
        "versions": dict,
        "files": list,
    }
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            raise InputDataError(
                f'bundle file "{MANIFEST}" must hold "{key}" as a JSON '
                f"{'object' if kind is dict else kind.__name__}, got "
                f"{type(manifest.get(key)).__name__}; restore it or save the bundle again."
            )
    names = [entry.get("name") if isinstance(entry, dict) else None for entry in manifest["files"]]
    if sorted(map(str, names)) != sorted(FILES) or not all(
        isinstance(entry.get("sha256"), str) for entry in manifest["files"]
    ):
        raise InputDataError(
            f'bundle file "{MANIFEST}" must list the files {list(FILES)} with their sha256, '
            f"got {names}; restore it or save the bundle again."
        )
    return manifest


# ------------------------------------------------------------------------------ serialisation


def serialize(bundle) -> dict[str, bytes]:
    """Return the bytes of every file but the manifest, in the hash order."""
    config_text = "# medsi model bundle recipe (see medsi.model.config)\n" + yaml.safe_dump(
        bundle.config, sort_keys=False, default_flow_style=None
    )
    weights = io.BytesIO()
    torch.save(bundle.unet.state_dict(), weights)
    return {
        "config.yaml": config_text.encode("utf-8"),
        "weights.pt": weights.getvalue(),
        "covariance.npz": npz_bytes(covariance_arrays(bundle.covariance)),
        "reference_bank.npz": npz_bytes(
            {"means": bundle.reference_means, "counts": bundle.reference_counts}
        ),
    }


def metadata(bundle) -> dict:
    """The manifest entries covered by the content hash besides the files."""
    return {
        "image_size": list(bundle.image_size),
        "input_space": bundle.input_space,
        "training": bundle.training,
        "versions": bundle.versions,
    }


def content_hash(files: Mapping[str, bytes], metadata: Mapping) -> str:
    """sha256 over the files' hashes in the fixed order and the canonical metadata JSON."""
    lines = [f"{FORMAT} {FORMAT_VERSION}"]
    lines += [f"{name} {hashlib.sha256(files[name]).hexdigest()}" for name in FILES]
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    lines.append(f"metadata {hashlib.sha256(canonical.encode()).hexdigest()}")
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` archive with fixed timestamps: equal arrays, equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_NPZ_TIME)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asarray(array, order="C"), allow_pickle=False)
    return buffer.getvalue()


def read_npz(data: bytes, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` from an ``.npz`` archive, InputDataError naming ``name``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            present = list(archive.files)
            arrays = {key: archive[key] for key in keys if key in present}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputDataError(
            f'bundle file "{name}" must be a readable .npz archive, got an error: {e}; save the '
            "bundle again."
        ) from e
    if len(arrays) != len(keys):
        raise InputDataError(
            f'bundle file "{name}" must hold the arrays {list(keys)}, got {present}; save the '
            "bundle again."
        )
    return arrays


def covariance_arrays(covariance: Covariance) -> dict[str, np.ndarray]:
    """The ``covariance.npz`` arrays of a covariance."""
    match covariance:
        case Isotropic():
            return {"kind": np.array("isotropic"), "variance": np.array(covariance.variance)}
        case Diagonal():
            return {"kind": np.array("diagonal"), "variance_map": covariance.variance_map}
        case Stationary():
            return {"kind": np.array("stationary"), "kernel": covariance.kernel}
        case Dense():
            return {"kind": np.array("dense"), "matrix": covariance.matrix}
        case _:
            raise TypeError(
                f'"covariance" must be Isotropic, Diagonal, Stationary or Dense to be saved, got '
                f"{type(covariance).__name__}; convert it to one of those."
            )


_COVARIANCE_ARRAYS = {
    "isotropic": ("variance", lambda a: Isotropic(float(a))),
    "diagonal": ("variance_map", Diagonal),
    "stationary": ("kernel", Stationary),
    "dense": ("matrix", Dense),
}


def covariance_from_npz(data: bytes) -> Covariance:
    """Rebuild the covariance from ``covariance.npz``."""
    name = "covariance.npz"
    kind = read_npz(data, name, ("kind",))["kind"]
    kind = str(kind) if kind.ndim == 0 and kind.dtype.kind == "U" else None
    if kind not in _COVARIANCE_ARRAYS:
        raise InputDataError(
            f'bundle file "{name}" must name its kind as one of {list(_COVARIANCE_ARRAYS)}, got '
            f"{kind!r}; save the bundle again."
        )
    key, build = _COVARIANCE_ARRAYS[kind]
    array = read_npz(data, name, (key,))[key]
    try:
        return build(array)
    except (ConfigError, TypeError, ValueError) as e:
        raise InputDataError(f'bundle file "{name}" holds an invalid {kind} covariance: {e}') from e


def bank_from_npz(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read ``means`` and ``counts`` from ``reference_bank.npz``."""
    arrays = read_npz(data, "reference_bank.npz", ("means", "counts"))
    return arrays["means"], arrays["counts"]


def parse_yaml(data: bytes):
    """Parse ``config.yaml``."""
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputDataError(
            f'bundle file "config.yaml" must be readable YAML, got an error: {e}; save the '
            "bundle again."
        ) from e


def unet_from_config(model: Mapping) -> PLUNet:
    """The PLUNet that ``config["model"]`` describes (2-D, out_channels = in_channels)."""
    return PLUNet(
        spatial_dims=2,
        in_channels=model["in_channels"],
        out_channels=model["in_channels"],
        channels=tuple(model["channels"]),
        time_embed_dim=model["time_embed_dim"],
        convs_per_block=model["convs_per_block"],
        kernel_size=model["kernel_size"],
    )


def load_unet(data: bytes, model: Mapping) -> PLUNet:
    """Rebuild the U-Net from ``config["model"]`` and load the float32 weights into it."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged archives
        raise InputDataError(
            f'bundle file "weights.pt" must be a readable torch state dict, got an error: {e}; '
            "save the bundle again."
        ) from e
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise InputDataError(
            f'bundle file "weights.pt" must hold a state dict of tensors, got '
            f"{type(state).__name__}; save the bundle again."
        )
    wrong = [k for k, v in state.items() if v.is_floating_point() and v.dtype != torch.float32]
    if wrong:
        raise InputDataError(
            f'bundle file "weights.pt" must hold float32 weights, got {state[wrong[0]].dtype} '
            f"for {wrong[0]!r}; save the bundle again."
        )
    unet = unet_from_config(model)
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputDataError(
            f'bundle file "weights.pt" must fit the U-Net of config.yaml (model {dict(model)}), '
            f"got a mismatch: {e}; save the bundle again from one training run."
        ) from e
    return unet.eval()


# --------------------------------------------------------------------------------- checks


def check_unet(unet: PLUNet, model: Mapping) -> None:
    """Raise ConfigError when the U-Net's constructor arguments differ from ``model``."""
    expected = unet_config(model)
    actual = unet.config
    different = {k: (actual.get(k), v) for k, v in expected.items() if actual.get(k) != v}
    if different:
        details = ", ".join(f"{k} {a!r} (config {e!r})" for k, (a, e) in different.items())
        raise ConfigError(
            f'"unet" must match config["model"], got {details}; build the U-Net from the '
            "config or put its settings in the config."
        )


def unet_config(model: Mapping) -> dict:
    """The ``PLUNet.config`` that ``config["model"]`` implies."""
    return {
        "spatial_dims": 2,
        "in_channels": model["in_channels"],
        "out_channels": model["in_channels"],
        "channels": list(model["channels"]),
        "time_embed_dim": model["time_embed_dim"],
        "convs_per_block": model["convs_per_block"],
        "kernel_size": model["kernel_size"],
    }


def checked_heldout(heldout, size: tuple[int, int]) -> np.ndarray:
    """Return the held-out images as float64 (N, H, W) after checking them."""
    heldout = real_array(heldout, "heldout")
    if heldout.ndim != 3 or tuple(heldout.shape[1:]) != size:
        raise ConfigError(
            f'"heldout" must have shape (N, {size[0]}, {size[1]}) (config data.image_size), got '
            f"{heldout.shape}; stack held-out images of the model's size along axis 0."
        )
    if len(heldout) < 2:
        raise ConfigError(
            f'"heldout" must hold at least 2 images, got {len(heldout)}; keep more normal '
            "images out of training (training.heldout_fraction)."
        )
    heldout = heldout.astype(np.float64, copy=False)
    if not np.isfinite(heldout).all():
        raise ConfigError(
            f'"heldout" must be finite, got {int(np.count_nonzero(~np.isfinite(heldout)))} NaN '
            "or inf values; remove or repair those images."
        )
    return heldout


def checked_positions(positions, count: int) -> np.ndarray:
    """Return the slice positions as int64 (N,), zeros for None."""
    if positions is None:
        return np.zeros(count, dtype=np.int64)
    if not isinstance(positions, np.ndarray):
        raise TypeError(
            f'"positions" must be a numpy.ndarray or None, got {type(positions).__name__}; '
            "convert it with numpy.asarray."
        )
    if not np.issubdtype(positions.dtype, np.integer):
        raise TypeError(f'"positions" must have an integer dtype, got {positions.dtype}.')
    if positions.shape != (count,):
        raise ConfigError(
            f'"positions" must have shape ({count},), one per held-out image, got '
            f"{positions.shape}; pass the slice position of each image."
        )
    if positions.min() < 0 or positions.max() >= MAX_POSITIONS:
        raise ConfigError(
            f'"positions" must be in [0, {MAX_POSITIONS}), got values in [{positions.min()}, '
            f"{positions.max()}]; pass slice indices."
        )
    return positions.astype(np.int64)


def checked_bank(means, counts, size) -> tuple[np.ndarray, np.ndarray]:
    """Return read-only copies of the reference bank after checking it."""
    if not isinstance(means, np.ndarray) or not isinstance(counts, np.ndarray):
        raise TypeError(
            '"reference_means" and "reference_counts" must be numpy arrays, got '
            f"{type(means).__name__} and {type(counts).__name__}."
        )
    if (
        means.ndim != 3
        or tuple(means.shape[1:]) != size
        or len(means) == 0
        or not np.issubdtype(means.dtype, np.floating)
    ):
        raise ConfigError(
            f'"reference_means" must be a float array (P, {size[0]}, {size[1]}) with P >= 1, '
            f"got {means.dtype} {means.shape}; pass one mean image per slice position."
        )
    if counts.shape != (len(means),) or not np.issubdtype(counts.dtype, np.integer):
        raise ConfigError(
            f'"reference_counts" must be an integer array ({len(means)},), got {counts.dtype} '
            f"{counts.shape}; pass one count per slice position."
        )
    if not np.isfinite(means).all() or (counts < 0).any() or not (counts > 0).any():
        raise ConfigError(
            '"reference_means" must be finite and "reference_counts" >= 0 with some > 0, got '
            "non-finite means or bad counts; rebuild the bank with build_bundle."
        )
    means = np.array(means, dtype=np.float64)
    counts = np.array(counts, dtype=np.int64)
    means.setflags(write=False)
    counts.setflags(write=False)
    return means, counts


def plain(value, name: str):
    """Return ``value`` as JSON-compatible plain Python values (dict keys become strings)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), name)
    if isinstance(value, np.generic):
        return plain(value.item(), name)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    raise TypeError(
        f'"{name}" must be a plain value (dict, list, str, number, bool, None, numpy array), '
        f"got {type(value).__name__}; convert it before building the bundle."
    )
