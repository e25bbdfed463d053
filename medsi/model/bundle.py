"""The model bundle: one folder with everything a selective test needs (DESIGN.md section 3).

A bundle holds the trained :class:`~medsi.model.PLUNet` (float32, eval mode), the validated
recipe it was trained with (:mod:`medsi.model.config`), the image size and input space it
expects, the noise covariance estimated on held-out normal images (never the training images),
the reference bank (per slice position: the mean held-out normal image and how many images it
averages, so that the reference's covariance is S / count), the training record, the versions
it was made with, and a content hash.

On disk a bundle is a folder of five files:

``manifest.json``
    Format and version, content hash, image size, input space, versions, training record, and
    the other four files with their sha256 and size.
``config.yaml``
    The recipe (sections model, diffusion, score, training, covariance, data).
``weights.pt``
    The U-Net's ``state_dict`` (``torch.save``; read back with ``weights_only=True``).
``covariance.npz``
    ``kind`` and the covariance's array: ``variance`` (isotropic, 0-d), ``variance_map``
    (diagonal, (H, W)), ``kernel`` (stationary, (2r + 1, 2r + 1)) or ``matrix`` (dense, (n, n)).
``reference_bank.npz``
    ``means`` (P, H, W) float64 and ``counts`` (P,) int64.

The content hash is the sha256 of the text made of one line ``<name> <sha256>`` per file, in
the order config.yaml, weights.pt, covariance.npz, reference_bank.npz, then one line
``metadata <sha256>`` over the canonical JSON (sorted keys, no spaces) of the manifest's
image size, input space, training record and versions, after a first line naming the format
and its version. Every file is written deterministically (the ``.npz`` archives with fixed
timestamps), so the hash is a property of the contents and :func:`build_bundle` knows it
before anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import numbers
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from medsi.errors import ConfigError, InputDataError
from medsi.model import _bundle_io as _io
from medsi.model.config import validate_config
from medsi.model.reconstruction import DDIMReconstruction, ddim_timesteps
from medsi.model.score import AnomalyScore
from medsi.model.unet import PLUNet
from medsi.si.covariance import Covariance, Dense, Diagonal, Isotropic, Stationary
from medsi.si.estimate import estimate_covariance
from medsi.si.linearity import check_piecewise_linear

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "ModelBundle",
    "build_bundle",
    "describe_bundle",
    "load_bundle",
    "save_bundle",
]

BUNDLE_FORMAT_VERSION = _io.FORMAT_VERSION
"""Version of the folder layout written by :func:`save_bundle`."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ModelBundle:
    """A trained model with its recipe, noise covariance and reference bank.

    Build one with :func:`build_bundle`, write it with :func:`save_bundle`, read it with
    :func:`load_bundle`. Its arrays are read-only copies; equality is identity.

    Parameters
    ----------
    unet
        The noise-prediction U-Net, float32, eval mode, on the CPU; its constructor
        arguments must match ``config["model"]``.
    config
        The full recipe (validated with :func:`~medsi.model.config.validate_config`).
    image_size
        (H, W) of the model's input, equal to ``config["data"]["image_size"]``.
    input_space
        What the model expects as input, e.g. ``"synthetic iid 8x8"`` or
        ``"template axial slices, robust-standardised"``.
    covariance
        Noise covariance S of one image of shape ``image_size``, estimated on held-out
        normal images.
    reference_means
        (P, H, W), float64, finite: the mean held-out normal image per slice position
        (zeros where a position has no image).
    reference_counts
        (P,), int64, >= 0: how many images each mean averages.
    training
        The training record (epochs, losses, seed, n_train, n_heldout, data description ...),
        JSON-compatible plain values.
    versions
        Versions of medsi, torch, monai, numpy (and scipy, python) at creation.
    content_hash
        sha256 hex digest of the bundle's contents (module docstring); "" before hashing.
    path
        The folder the bundle was loaded from, or None.

    Raises
    ------
    TypeError
        If a field has the wrong type.
    ConfigError
        If the fields disagree (shapes, config, U-Net dtype or mode).
    """

    unet: PLUNet
    config: dict
    image_size: tuple[int, int]
    input_space: str
    covariance: Covariance
    reference_means: np.ndarray
    reference_counts: np.ndarray
    training: dict
    versions: dict
    content_hash: str
    path: Path | None = None

    def __post_init__(self):
        if not isinstance(self.unet, PLUNet):
            raise TypeError(
                f'"unet" must be a PLUNet, got {type(self.unet).__name__}; build the model with '
                "medsi.model.PLUNet."
            )
        if not isinstance(self.config, Mapping):
            raise TypeError(f'"config" must be a dict, got {type(self.config).__name__}.')
        config = validate_config(self.config)
        object.__setattr__(self, "config", config)
        _io.check_unet(self.unet, config["model"])
        if any(p.dtype != torch.float32 for p in self.unet.parameters()) or any(
            m.training for m in self.unet.modules()
        ):
            raise ConfigError(
                '"unet" must be float32 and in eval mode in a bundle, got dtype '
                f"{next(self.unet.parameters()).dtype}, training={self.unet.training}; call "
                "build_bundle, which stores a float32 eval-mode copy."
            )
        size = tuple(self.image_size) if isinstance(self.image_size, tuple | list) else None
        if size != tuple(config["data"]["image_size"]):
            raise ConfigError(
                f'"image_size" must equal config data.image_size '
                f"{tuple(config['data']['image_size'])}, got {self.image_size!r}; build the "
                "bundle from one config."
            )
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        if not isinstance(self.input_space, str):
            raise TypeError(
                f'"input_space" must be a str, got {type(self.input_space).__name__}; describe '
                'the input, e.g. "synthetic iid 8x8".'
            )
        if not isinstance(self.covariance, Covariance):
            raise TypeError(
                f'"covariance" must be a medsi.si.Covariance, got '
                f"{type(self.covariance).__name__}; estimate it with estimate_covariance."
            )
        self.covariance.check_shape(self.image_size)
        means, counts = _io.checked_bank(self.reference_means, self.reference_counts, size)
        object.__setattr__(self, "reference_means", means)
        object.__setattr__(self, "reference_counts", counts)
        for name in ("training", "versions"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise TypeError(f'"{name}" must be a dict, got {type(value).__name__}.')
            object.__setattr__(self, name, _io.plain(value, name))
        if not isinstance(self.content_hash, str):
            raise TypeError(
                f'"content_hash" must be a str, got {type(self.content_hash).__name__}.'
            )
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))

    def __repr__(self) -> str:
        return (
            f"ModelBundle(content_hash={self.content_hash[:12]!r}, image_size={self.image_size}, "
            f"input_space={self.input_space!r}, covariance={self.covariance!r}, "
            f"positions={len(self.reference_counts)}, path={self.path})"
        )

    def reconstruction(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> DDIMReconstruction:
        """Return the DDIM reconstruction f of ``config["diffusion"]`` on a copy of the U-Net.

        Parameters
        ----------
        dtype
            Floating dtype of the copy (float64 for the selective-inference engine).
        device
            Device of the copy.

        Returns
        -------
        DDIMReconstruction
            In eval mode; the bundle's own U-Net is left as it is.
        """
        unet = copy.deepcopy(self.unet).to(dtype=dtype, device=device).eval()
        return DDIMReconstruction(unet, **self.config["diffusion"])

    def score(
        self,
        signed: bool | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> AnomalyScore:
        """Return the anomaly score E(x) of ``config["score"]`` on :meth:`reconstruction`.

        Parameters
        ----------
        signed
            Average x - f(x) instead of |x - f(x)| (DESIGN.md section 1); None takes
            ``config["score"]["signed"]``.
        dtype
            Floating dtype of the model copy.
        device
            Device of the model copy.

        Returns
        -------
        AnomalyScore
            In eval mode, with ``kernel_size`` from ``config["score"]``.

        Raises
        ------
        TypeError
            If ``signed`` is neither a bool nor None.
        """
        if signed is None:
            signed = self.config["score"]["signed"]
        score = AnomalyScore(
            self.reconstruction(dtype, device),
            kernel_size=self.config["score"]["kernel_size"],
            signed=signed,
        )
        return score.eval()

    def reference(self, position: int = 0) -> tuple[np.ndarray, Covariance]:
        """Return the reference image at a slice position and its covariance S / count.

        Parameters
        ----------
        position
            Slice position, 0 <= position < P.

        Returns
        -------
        mean : numpy.ndarray
            (H, W), float64, read-only: the mean held-out normal image at ``position``.
        covariance : Covariance
            ``covariance.scaled(1 / count)``: the covariance of a mean of ``count``
            independent images.

        Raises
        ------
        TypeError
            If ``position`` is not an int.
        ConfigError
            If ``position`` is out of range or no held-out image lies at it.
        """
        if isinstance(position, bool) or not isinstance(position, numbers.Integral):
            raise TypeError(
                f'"position" must be an int, got {type(position).__name__}; pass a slice index.'
            )
        positions = len(self.reference_counts)
        if not 0 <= position < positions:
            raise ConfigError(
                f'"position" must be in [0, {positions - 1}], got {position}; pass a slice '
                "position of the reference bank."
            )
        count = int(self.reference_counts[position])
        if count == 0:
            filled = np.flatnonzero(self.reference_counts)
            raise ConfigError(
                f'"position" must have held-out images in the reference bank, got position '
                f"{position}, which has none; use a position among {filled.tolist()[:20]} "
                "or give a reference scan."
            )
        return self.reference_means[int(position)], self.covariance.scaled(1.0 / count)


# ------------------------------------------------------------------------------------ build


def build_bundle(
    unet: PLUNet,
    config: Mapping,
    heldout: np.ndarray,
    positions: np.ndarray | None = None,
    training: Mapping | None = None,
    input_space: str = "unspecified",
    mask: np.ndarray | None = None,
) -> ModelBundle:
    """Make a bundle from a trained U-Net and held-out normal images.

    The reference bank is the mean and count of ``heldout`` per slice position; the noise
    covariance is :func:`~medsi.si.estimate.estimate_covariance` of ``heldout`` minus its
    position mean, of kind ``config["covariance"]["kind"]`` and radius
    ``config["covariance"]["radius"]``, with N - P degrees of freedom (N images, P positions
    that hold at least one).

    Parameters
    ----------
    unet
        The trained U-Net; its constructor arguments must match ``config["model"]``
        (``out_channels == in_channels == 1``, 2-D). The bundle stores a float32 eval-mode
        copy; ``unet`` itself is not changed.
    config
        The recipe; validated and completed with defaults.
    heldout
        (N, H, W), real, finite: normal images NOT used for training, N >= 2, (H, W) equal to
        ``config["data"]["image_size"]``.
    positions
        (N,), integers >= 0: the slice position of each image; None puts all at position 0.
    training
        The training record (epochs, losses, seed, n_train, data description ...); numpy
        values are turned into plain ones. ``n_heldout`` is set to N.
    input_space
        What the model expects as input, e.g. ``"synthetic iid 8x8"``.
    mask
        (N, H, W) or (H, W) bool: the pixels the covariance is estimated on (e.g. the brain
        of each held-out slice); None: all.

    Returns
    -------
    ModelBundle
        With its content hash; ``path`` None until saved.

    Raises
    ------
    TypeError
        If an argument has the wrong type (or a training value is not JSON-like).
    ConfigError
        If ``config`` is invalid, the U-Net does not match it, ``heldout`` has the wrong shape,
        fewer than 2 images or non-finite values, ``positions`` does not fit, every image is
        alone at its position (no degrees of freedom left), or ``training["n_heldout"]`` is
        given and differs from N.
    """
    if not isinstance(unet, PLUNet):
        raise TypeError(
            f'"unet" must be a PLUNet, got {type(unet).__name__}; build the model with '
            "medsi.model.PLUNet."
        )
    config = validate_config(config)
    if config["model"]["in_channels"] != 1:
        raise ConfigError(
            f'"config" model.in_channels must be 1 for a bundle of single-channel images, got '
            f"{config['model']['in_channels']}; train on one-channel slices."
        )
    _io.check_unet(unet, config["model"])
    size = tuple(config["data"]["image_size"])
    heldout = _io.checked_heldout(heldout, size)
    positions = _io.checked_positions(positions, len(heldout))

    n_positions = int(positions.max()) + 1
    counts = np.bincount(positions, minlength=n_positions).astype(np.int64)
    sums = np.zeros((n_positions, *size))
    np.add.at(sums, positions, heldout)
    means = sums / np.maximum(counts, 1)[:, None, None]
    dof = len(heldout) - int(np.count_nonzero(counts))
    if dof < 1:
        raise ConfigError(
            f'"positions" must put at least two held-out images at some position, got '
            f"{len(heldout)} images at {int(np.count_nonzero(counts))} distinct positions; "
            "with one image per position no noise is left to estimate the covariance."
        )
    covariance = estimate_covariance(
        heldout - means[positions],
        config["covariance"]["kind"],
        config["covariance"]["radius"],
        dof=dof,
        mask=mask,
    )

    record = _io.plain(training or {}, "training")
    if record.get("n_heldout", len(heldout)) != len(heldout):
        raise ConfigError(
            f'"training" n_heldout must be the number of held-out images {len(heldout)}, got '
            f"{record['n_heldout']!r}; leave it out, build_bundle sets it."
        )
    record["n_heldout"] = len(heldout)

    stored = copy.deepcopy(unet).to(dtype=torch.float32, device="cpu").eval()
    bundle = ModelBundle(
        unet=stored,
        config=config,
        image_size=size,
        input_space=input_space,
        covariance=covariance,
        reference_means=means,
        reference_counts=counts,
        training=record,
        versions=_versions(),
        content_hash="",
    )
    digest = _io.content_hash(_io.serialize(bundle), _io.metadata(bundle))
    return dataclasses.replace(bundle, content_hash=digest)


def _versions() -> dict:
    """Versions of the libraries that decide a bundle's numbers."""
    import monai
    import scipy

    import medsi

    return {
        "medsi": medsi.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


# -------------------------------------------------------------------------------- save / load


def save_bundle(bundle: ModelBundle, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a bundle to a folder, atomically.

    The files are written to a temporary folder next to ``path``, which is then renamed to
    ``path``; with ``overwrite`` an existing bundle folder is moved aside first and removed
    after the rename. The parent folder is created when missing.

    Parameters
    ----------
    bundle
        The bundle, e.g. from :func:`build_bundle` or :func:`load_bundle`.
    path
        The folder to create.
    overwrite
        Replace an existing bundle folder at ``path``. A path that is a file, or a folder
        without ``manifest.json``, is never replaced.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``bundle`` is not a :class:`ModelBundle`.
    ConfigError
        If ``path`` exists and ``overwrite`` is False, or it exists and is not a bundle
        folder, or the bundle's contents do not match its ``content_hash`` (it was changed
        after :func:`build_bundle`, or this torch version serialises weights differently).
    """
    if not isinstance(bundle, ModelBundle):
        raise TypeError(
            f'"bundle" must be a ModelBundle, got {type(bundle).__name__}; make one with '
            "build_bundle."
        )
    path = Path(path)
    files = _io.serialize(bundle)
    metadata = _io.metadata(bundle)
    digest = _io.content_hash(files, metadata)
    if digest != bundle.content_hash:
        raise ConfigError(
            f'"bundle" contents must match its content_hash {bundle.content_hash[:12]!r}, got '
            f"contents hashing to {digest[:12]!r}; make bundles with build_bundle and do not "
            "change their fields afterwards."
        )
    exists = path.exists() or path.is_symlink()
    if exists and not overwrite:
        raise ConfigError(
            f'"path" must not exist, got {str(path)!r}, which does; pass overwrite=True to '
            "replace that bundle, or another path."
        )
    if exists and not (path.is_dir() and not path.is_symlink() and (path / _io.MANIFEST).is_file()):
        raise ConfigError(
            f'"path" may only replace a bundle folder, got {str(path)!r}, which is not one '
            f"(no {_io.MANIFEST}); choose another path."
        )
    manifest = {
        "format": _io.FORMAT,
        "format_version": _io.FORMAT_VERSION,
        "content_hash": digest,
        **metadata,
        "files": [
            {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in files.items()
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    aside = None
    try:
        os.chmod(temporary, 0o755)
        contents = {**files, _io.MANIFEST: (json.dumps(manifest, indent=2) + "\n").encode()}
        for name, data in contents.items():
            with open(temporary / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if exists:
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, aside / "bundle")
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if aside is not None and (aside / "bundle").exists() and not path.exists():
            os.replace(aside / "bundle", path)  # put the old bundle back
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return path


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read a bundle folder and check it.

    Checks, in this order: the manifest is readable and of a known format version; every
    file is present and has the sha256 the manifest lists; the content hash over them and
    the manifest's metadata matches; the config is valid; the weights fit the U-Net rebuilt
    from ``config["model"]`` and are float32; the arrays are consistent; the eval-mode anomaly
    score passes :func:`medsi.si.check_piecewise_linear`.

    Parameters
    ----------
    path
        The bundle folder.

    Returns
    -------
    ModelBundle
        With ``path`` set.

    Raises
    ------
    InputDataError
        If the folder or a file is missing, unreadable, changed (sha256 or content hash
        mismatch) or inconsistent; the message names the file.
    NotPiecewiseLinearError
        If the rebuilt score is not piecewise linear.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputDataError(
            f'"path" must be a model bundle folder, got {str(path)!r}, which is '
            f"{'a file' if path.exists() else 'missing'}; pass the folder save_bundle wrote."
        )
    manifest = _io.read_manifest(path)
    listed = {entry["name"]: entry for entry in manifest["files"]}
    files = {}
    for name in _io.FILES:
        file = path / name
        if not file.is_file():
            raise InputDataError(
                f'bundle file "{name}" must be present, got a folder {str(path)!r} without it; '
                "restore the file or save the bundle again."
            )
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != listed[name]["sha256"]:
            raise InputDataError(
                f'bundle file "{name}" must have the sha256 listed in {_io.MANIFEST} '
                f"({listed[name]['sha256'][:12]}...), got {digest[:12]}...; the file was "
                "changed or damaged: restore it or save the bundle again."
            )
        files[name] = data
    metadata = {key: manifest[key] for key in ("image_size", "input_space", "training", "versions")}
    digest = _io.content_hash(files, metadata)
    if digest != manifest["content_hash"]:
        raise InputDataError(
            f'bundle "{path}" must have the content hash listed in {_io.MANIFEST} '
            f"({str(manifest['content_hash'])[:12]}...), got {digest[:12]}...; the manifest was "
            "edited: restore it or save the bundle again."
        )
    try:
        config = validate_config(_io.parse_yaml(files["config.yaml"]))
    except (ConfigError, TypeError) as e:
        raise InputDataError(f'bundle file "config.yaml" holds an invalid config: {e}') from e
    unet = _io.load_unet(files["weights.pt"], config["model"])
    covariance = _io.covariance_from_npz(files["covariance.npz"])
    means, counts = _io.bank_from_npz(files["reference_bank.npz"])
    try:
        bundle = ModelBundle(
            unet=unet,
            config=config,
            image_size=tuple(metadata["image_size"]),
            input_space=metadata["input_space"],
            covariance=covariance,
            reference_means=means,
            reference_counts=counts,
            training=metadata["training"],
            versions=metadata["versions"],
            content_hash=digest,
            path=path,
        )
    except (ConfigError, TypeError) as e:
        raise InputDataError(f'bundle "{path}" is inconsistent: {e}') from e
    check_piecewise_linear(bundle.score())
    return bundle


# -------------------------------------------------------------------------------- describe


def describe_bundle(bundle: ModelBundle) -> str:
    """Return a human-readable summary of a bundle, for ``medsi info``.

    Parameters
    ----------
    bundle
        The bundle.

    Returns
    -------
    str
        Several lines: location, content hash, input, model, diffusion, score, covariance,
        reference bank, training record and versions.

    Raises
    ------
    TypeError
        If ``bundle`` is not a :class:`ModelBundle`.
    """
    if not isinstance(bundle, ModelBundle):
        raise TypeError(f'"bundle" must be a ModelBundle, got {type(bundle).__name__}.')
    cfg = bundle.config
    model, diffusion, score = cfg["model"], cfg["diffusion"], cfg["score"]
    n_parameters = sum(p.numel() for p in bundle.unet.parameters())
    steps = ddim_timesteps(diffusion["start_timestep"], diffusion["num_steps"])
    counts = bundle.reference_counts
    filled = counts[counts > 0]
    rows = [
        ("location", str(bundle.path) if bundle.path is not None else "(not saved)"),
        ("content hash", bundle.content_hash or "(none)"),
        (
            "input",
            f"{model['in_channels']} x {bundle.image_size[0]} x {bundle.image_size[1]}, "
            f"{bundle.input_space}",
        ),
        (
            "model",
            f"PLUNet channels {model['channels']}, time embedding {model['time_embed_dim']}, "
            f"{model['convs_per_block']} conv per block, kernel {model['kernel_size']}, "
            f"{n_parameters:,} parameters (float32)",
        ),
        (
            "diffusion",
            f"T {diffusion['num_train_timesteps']}, linear betas {diffusion['beta_start']:g} to "
            f"{diffusion['beta_end']:g}, DDIM from T' {diffusion['start_timestep']} in "
            f"{diffusion['num_steps']} steps {list(steps)}, eta {diffusion['eta']:g}, noise seed "
            f"{diffusion['seed']}",
        ),
        (
            "score",
            f"{'signed A(x - f(x))' if score['signed'] else 'absolute A(|x - f(x)|)'}, "
            f"k {score['kernel_size']}, threshold {score['threshold']:g}",
        ),
        ("covariance", _describe_covariance(bundle.covariance, cfg["covariance"])),
        (
            "reference bank",
            f"{len(counts)} position(s), {int(counts.sum())} held-out image(s), "
            f"{int(filled.min())} to {int(filled.max())} per filled position"
            + (f", {int((counts == 0).sum())} empty" if (counts == 0).any() else ""),
        ),
    ]
    rows += [("training", "")] + [
        (f"  {key}", _describe_value(value)) for key, value in bundle.training.items()
    ]
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in bundle.versions.items())))
    width = max(len(label) for label, _ in rows)
    lines = ["medsi model bundle"]
    lines += [f"  {label.ljust(width)}  {text}".rstrip() for label, text in rows]
    return "\n".join(lines)


def _describe_covariance(covariance: Covariance, settings: Mapping) -> str:
    """One line on the covariance."""
    match covariance:
        case Isotropic():
            return f"isotropic, variance {covariance.variance:.4g}"
        case Diagonal():
            vmap = covariance.variance_map
            return (
                f"diagonal, pixel variance median {np.median(vmap):.4g}, range "
                f"{vmap.min():.4g} to {vmap.max():.4g}"
            )
        case Stationary():
            kernel = covariance.kernel
            h, w = kernel.shape[0] // 2, kernel.shape[1] // 2
            var = covariance.variance
            parts = [f"stationary, kernel {kernel.shape[0]} x {kernel.shape[1]}"]
            parts.append(f"variance {var:.4g}")
            if w > 0:
                parts.append(f"correlation at (0, 1) {kernel[h, w + 1] / var:.3f}")
            if h > 0:
                parts.append(f"at (1, 0) {kernel[h + 1, w] / var:.3f}")
            return ", ".join(parts)
        case Dense():
            return f"dense, {covariance.size} x {covariance.size}"
        case _:
            return repr(covariance)


def _describe_value(value) -> str:
    """A short text for a training record value (long number lists summarised)."""
    if (
        isinstance(value, list)
        and len(value) > 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return f"{len(value)} values, first {value[0]:.4g}, last {value[-1]:.4g}"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 100 else text[:97] + "..."
