"""Train the PL U-Net on normal images and make a model bundle (DESIGN.md section 3).

The U-Net learns to predict the noise: for an image x, a timestep t drawn uniformly from
[0, T - 1] and eps ~ N(0, I), x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps with MONAI's
``DDPMScheduler.add_noise`` (linear betas, ``clip_sample=False``, the betas of
:class:`~medsi.model.DDIMReconstruction`), and the loss is the mean squared error between
``unet(x_t, t)`` and eps, minimised by Adam.

Every random draw comes from a seeded ``torch.Generator``: the initial weights, and per epoch
one generator for the shuffling and one for the timesteps and the noise, both seeded from
(seed, epoch). A run is therefore reproducible bit for bit on one machine and device, and a
run resumed from a checkpoint ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from medsi.atomic import atomic_write_bytes
from medsi.errors import ConfigError, InputDataError
from medsi.model._bundle_io import unet_from_config
from medsi.model.config import validate_config
from medsi.model.unet import PLUNet

if TYPE_CHECKING:
    from medsi.model.bundle import ModelBundle

__all__ = ["CHECKPOINT_NAME", "split_heldout", "train_bundle", "train_unet"]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the (latest) checkpoint inside ``checkpoint_dir``."""

_CHECKPOINT_FORMAT = 1
# Streams of np.random.SeedSequence([seed, stream, ...]) so that no two uses share draws.
_STREAM_INIT, _STREAM_SHUFFLE, _STREAM_NOISE, _STREAM_SPLIT = 0, 1, 2, 3


def _derived_seed(*entropy: int) -> int:
    """A 63-bit seed for a torch.Generator derived from integers (seed, stream, epoch)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _check_images(images) -> np.ndarray:
    """Return ``images`` as a C-contiguous float32 (N, H, W) array, or raise."""
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f'"images" must be a numpy.ndarray, got {type(images).__name__}; pass an (N, H, W) '
            "array, e.g. from medsi.data.load_slices."
        )
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise InputDataError(
            f'"images" must hold real numbers, got dtype {images.dtype}; pass a float array.'
        )
    if images.ndim != 3:
        raise InputDataError(
            f'"images" must have shape (N, H, W), got {images.shape}; stack 2-D slices along '
            "a first axis (one channel only)."
        )
    if images.shape[0] == 0:
        raise InputDataError(
            f'"images" must hold at least one image, got shape {images.shape}; pass the normal '
            "training images."
        )
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InputDataError(f'"images" must have non-empty images, got shape {images.shape}.')
    array = np.ascontiguousarray(images, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputDataError(
            f'"images" must be finite, got {bad} NaN or infinite value(s) (or values beyond '
            "float32); clean the data first."
        )
    return array


def _resolve_config(config: Mapping, images: np.ndarray, epochs, seed) -> dict:
    """Validate ``config`` for these images, with ``epochs`` and ``seed`` overrides applied."""
    if not isinstance(config, Mapping):
        raise TypeError(
            f'"config" must be a mapping of sections, got {type(config).__name__}; pass e.g. '
            "medsi.model.config.default_config()."
        )
    cfg = validate_config(config)
    channels = cfg["model"]["channels"]
    multiple = 2 ** (len(channels) - 1)
    height, width = int(images.shape[1]), int(images.shape[2])
    if height % multiple or width % multiple:
        raise ConfigError(
            f'"images" must have sides divisible by the U-Net\'s size multiple {multiple} '
            f"(2 ** (len(model.channels) - 1) for channels {channels}), got {height} x {width}; "
            "resize or pad the images, or use fewer levels."
        )
    if cfg["model"]["in_channels"] != 1:
        raise ConfigError(
            f'"model.in_channels" must be 1 for (N, H, W) images, got '
            f"{cfg['model']['in_channels']}; set model.in_channels to 1."
        )
    cfg["data"]["image_size"] = [height, width]
    if epochs is not None:
        cfg["training"]["epochs"] = epochs
    if seed is not None:
        cfg["training"]["seed"] = seed
    return validate_config(cfg)  # re-checks overrides and the new image size


def _check_device(device) -> torch.device:
    """Return ``device`` as a torch.device that exists on this machine, or raise ConfigError."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f'"device" must name a torch device, got {device!r}; pass e.g. "cpu" or "cuda".'
        ) from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f'"device" must be available on this machine, got {str(device)!r} but torch sees no '
            'CUDA device; pass "cpu".'
        )
    return device


def _fingerprint(cfg: dict, images: np.ndarray) -> str:
    """Hash of what decides the training trajectory (all but the number of epochs)."""
    digest = hashlib.sha256()
    relevant = {k: cfg[k] for k in ("model", "diffusion")}
    relevant["training"] = {k: v for k, v in cfg["training"].items() if k != "epochs"}
    digest.update(repr(sorted((k, sorted(v.items())) for k, v in relevant.items())).encode())
    digest.update(repr(images.shape).encode())
    digest.update(images.tobytes())
    return digest.hexdigest()


def _build_unet(model_cfg: dict, seed: int) -> PLUNet:
    """Build the U-Net with initial weights drawn from ``seed``, leaving the global RNG as is."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, _STREAM_INIT))
        return unet_from_config(model_cfg)


def _save_atomic(state: dict, path: Path) -> None:
    """Write ``state`` with torch.save, atomically (:func:`medsi.atomic.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, fingerprint: str, epochs: int) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputDataError(
            f'"{path}" could not be read as a medsi training checkpoint ({type(e).__name__}: '
            f"{e}); remove it to start afresh."
        ) from e
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise InputDataError(
            f'"{path}" is not a medsi training checkpoint of format {_CHECKPOINT_FORMAT}; '
            "remove it to start afresh."
        )
    if state["fingerprint"] != fingerprint:
        raise ConfigError(
            f'the checkpoint "{path}" was made with another config, seed or training images '
            "than this run; resume with the same settings and data, or remove the checkpoint "
            "(or pass resume=False) to start afresh."
        )
    if state["epoch"] > epochs:
        raise ConfigError(
            f'"epochs" must be at least the checkpoint\'s epoch {state["epoch"]} to resume, got '
            f"{epochs}; pass more epochs or start afresh without resume."
        )
    return state


def train_unet(
    config: Mapping,
    images: np.ndarray,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[PLUNet, dict]:
    """Train a :class:`~medsi.model.PLUNet` to predict the noise added to ``images``.

    Each epoch shuffles the images (MONAI ``DataLoader``, batches of
    ``training.batch_size``; a last batch of one image is dropped, as BatchNorm needs two).
    For each batch, timesteps t ~ U{0, ..., T - 1} and noise eps ~ N(0, I) are drawn, x_t is
    formed with MONAI's ``DDPMScheduler.add_noise`` (the schedule of ``diffusion``) and Adam
    (``training.learning_rate``) minimises MSE(unet(x_t, t), eps). Training is in float32
    with BatchNorm in training mode.

    Randomness: the initial weights, the shuffling and the draws of t and eps come from
    ``torch.Generator`` objects seeded from ``seed`` (per epoch, from (seed, epoch)); draws
    are made on the CPU and moved to ``device``. The global random state is left as it was.
    The same seed, data and config give bit-identical weights on one machine and device (on
    CUDA only where its kernels are deterministic).

    Parameters
    ----------
    config
        A (partial) config, completed by :func:`~medsi.model.config.validate_config`; the
        sections ``model``, ``diffusion`` and ``training`` are used. ``data.image_size`` is
        taken from the images.
    images
        Normal training images, (N, H, W), real and finite; cast to float32. H and W must be
        divisible by 2 ** (len(model.channels) - 1).
    epochs
        Number of epochs; ``training.epochs`` when None.
    seed
        Seed of every random draw; ``training.seed`` when None.
    device
        Torch device to train on, e.g. ``"cpu"`` or ``"cuda"``.
    checkpoint_dir
        Folder for the checkpoint :data:`CHECKPOINT_NAME` (weights, optimizer state, epoch,
        generator states, losses), written atomically every ``training.checkpoint_every``
        epochs and after the last one; no checkpoints when None.
    resume
        Continue from the checkpoint in ``checkpoint_dir`` (made by a run with the same
        config, seed and images; the number of epochs may be larger); the result equals
        that of an uninterrupted run. Without a checkpoint there, training starts afresh with
        a warning.
    progress
        Show a tqdm progress bar over the epochs with the loss.

    Returns
    -------
    unet : PLUNet
        The trained network, float32, on ``device``, in eval mode.
    record : dict
        ``epochs`` (int), ``losses`` (mean training loss per epoch, list of floats),
        ``final_loss``, ``seed``, ``n_images``, ``image_size`` ([H, W]), ``device``,
        ``resumed_from`` (the checkpoint epoch, or None) and ``seconds`` (wall time of this
        call).

    Raises
    ------
    InputDataError
        If ``images`` is empty, not (N, H, W), not real or not finite, or the checkpoint
        cannot be read.
    ConfigError
        If the config is invalid, the image sides are not divisible by the U-Net's size
        multiple, ``device`` is unknown or unavailable, ``resume`` is set without
        ``checkpoint_dir``, the checkpoint belongs to another run or to more epochs than
        requested, or the loss becomes NaN or infinite (lower the learning rate).
    TypeError
        If ``config`` is not a mapping or ``images`` not a numpy array.

    Examples
    --------
    >>> import numpy as np
    >>> cfg = {"model": {"channels": [4, 8], "time_embed_dim": 4}, "training": {"batch_size": 4}}
    >>> images = np.random.default_rng(0).standard_normal((8, 8, 8))
    >>> unet, record = train_unet(cfg, images, epochs=2, progress=False)
    >>> record["epochs"], len(record["losses"])
    (2, 2)
    """
    from monai.data import DataLoader, Dataset
    from monai.networks.schedulers import DDPMScheduler
    from tqdm.auto import tqdm

    started = time.perf_counter()
    array = _check_images(images)
    cfg = _resolve_config(config, array, epochs, seed)
    training, diffusion = cfg["training"], cfg["diffusion"]
    epochs, seed = training["epochs"], training["seed"]
    device = _check_device(device)
    if resume and checkpoint_dir is None:
        raise ConfigError(
            '"resume" needs "checkpoint_dir", got None; pass the folder that holds the '
            "checkpoint of the interrupted run."
        )
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None

    unet = _build_unet(cfg["model"], seed).to(device)
    optimizer = torch.optim.Adam(unet.parameters(), lr=training["learning_rate"])
    scheduler = DDPMScheduler(
        diffusion["num_train_timesteps"],
        schedule="linear_beta",
        beta_start=diffusion["beta_start"],
        beta_end=diffusion["beta_end"],
        clip_sample=False,
    )
    num_timesteps = diffusion["num_train_timesteps"]
    fingerprint = _fingerprint(cfg, array)
    shuffle_generator = torch.Generator(device="cpu")
    noise_generator = torch.Generator(device="cpu")

    start_epoch, losses, resumed_from = 0, [], None
    if resume:
        if checkpoint.exists():
            state = _load_checkpoint(checkpoint, fingerprint, epochs)
            unet.load_state_dict(state["unet"])
            optimizer.load_state_dict(state["optimizer"])
            shuffle_generator.set_state(state["shuffle_generator"])
            noise_generator.set_state(state["noise_generator"])
            start_epoch = resumed_from = int(state["epoch"])
            losses = [float(v) for v in state["losses"]]
        else:
            warnings.warn(
                f'no checkpoint "{checkpoint}" to resume from; training starts from epoch 0.',
                stacklevel=2,
            )

    dataset = Dataset(data=torch.from_numpy(array)[:, None])  # items (1, H, W), float32
    batch_size = training["batch_size"]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=shuffle_generator,
        num_workers=0,
        # A last batch of one image breaks BatchNorm where the bottom level is 1 x 1 pixel.
        drop_last=len(array) > batch_size and len(array) % batch_size == 1,
    )

    def save(epoch: int) -> None:
        _save_atomic(
            {
                "format": _CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "epoch": epoch,
                "unet": unet.state_dict(),
                "optimizer": optimizer.state_dict(),
                "shuffle_generator": shuffle_generator.get_state(),
                "noise_generator": noise_generator.get_state(),
                "losses": list(losses),
                "config": copy.deepcopy(cfg),
            },
            checkpoint,
        )

    unet.train()
    bar = tqdm(
        range(start_epoch, epochs),
        initial=start_epoch,
        total=epochs,
        desc="training",
        unit="epoch",
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in bar:
        # Reseed per epoch so that a resumed run draws exactly what an uninterrupted one draws.
        shuffle_generator.manual_seed(_derived_seed(seed, _STREAM_SHUFFLE, epoch))
        noise_generator.manual_seed(_derived_seed(seed, _STREAM_NOISE, epoch))
        total, count = 0.0, 0
        for batch in loader:
            x = torch.as_tensor(batch).to(device=device, dtype=torch.float32)
            n = x.shape[0]
            t = torch.randint(0, num_timesteps, (n,), generator=noise_generator)
            noise = torch.randn(x.shape, generator=noise_generator, dtype=torch.float32)
            t, noise = t.to(device), noise.to(device)
            x_t = scheduler.add_noise(original_samples=x, noise=noise, timesteps=t)
            loss = F.mse_loss(unet(x_t, t), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * n
            count += n
        epoch_loss = total / count
        if not math.isfinite(epoch_loss):
            raise ConfigError(
                f"training diverged: the loss of epoch {epoch + 1} is {epoch_loss}; lower "
                f"training.learning_rate (now {training['learning_rate']}) or check the data."
            )
        losses.append(epoch_loss)
        bar.set_postfix(loss=f"{epoch_loss:.4f}")
        done = epoch + 1
        if checkpoint is not None and (done % training["checkpoint_every"] == 0 or done == epochs):
            save(done)
    bar.close()

    unet.eval()
    record = {
        "epochs": epochs,
        "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "seed": seed,
        "n_images": int(array.shape[0]),
        "image_size": [int(array.shape[1]), int(array.shape[2])],
        "device": str(device),
        "resumed_from": resumed_from,
        "seconds": time.perf_counter() - started,
    }
    return unet, record


def split_heldout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices at random into a training part and a held-out part.

    Parameters
    ----------
    n
        Number of images.
    fraction
        Share of the images to hold out, in (0, 1); the held-out part has
        ``max(2, round(fraction * n))`` images (a bundle's covariance needs two).
    seed
        Seed of the split (its own stream: the split does not share draws with training).

    Returns
    -------
    train : numpy.ndarray
        (n - m,), int64, sorted indices of the training images.
    heldout : numpy.ndarray
        (m,), int64, sorted indices of the held-out images.

    Raises
    ------
    InputDataError
        If fewer than one training image would remain.

    Examples
    --------
    >>> train, heldout = split_heldout(10, 0.2, seed=0)
    >>> len(train), len(heldout)
    (8, 2)
    """
    m = max(2, int(round(fraction * n)))
    if n - m < 1:
        raise InputDataError(
            f'"images" must hold at least {m + 1} images to keep {m} out of training '
            f"(heldout_fraction {fraction}) and train on the rest, got {n}; give more images."
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_SPLIT]))
    order = rng.permutation(n)
    return np.sort(order[m:]).astype(np.int64), np.sort(order[:m]).astype(np.int64)


def train_bundle(
    config: Mapping,
    images: np.ndarray,
    positions: np.ndarray | None = None,
    out: str | Path | None = None,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    input_space: str = "unspecified",
    data_description: str | None = None,
    overwrite: bool = False,
) -> ModelBundle:
    """Train a U-Net on part of the normal images and make a bundle from the rest.

    The images are split at random (seeded, :func:`split_heldout`) into a training part and
    a held-out part of share ``training.heldout_fraction``; :func:`train_unet` trains on the
    first (in float32), :func:`~medsi.model.bundle.build_bundle` estimates the noise
    covariance and the reference bank on the second (in float64, never on training images),
    and the bundle is written to ``out`` when given.

    Parameters
    ----------
    config
        A (partial) config; ``data.image_size`` is taken from the images, ``training.epochs``
        and ``training.seed`` from ``epochs`` and ``seed`` when given. The bundle stores the
        config actually used.
    images
        Normal images, (N, H, W), real and finite.
    positions
        (N,), integer slice positions of the images (for the reference bank); None puts every
        image at position 0.
    out
        Folder to save the bundle to; not saved when None.
    epochs, seed, device, checkpoint_dir, resume, progress
        As in :func:`train_unet`.
    input_space
        What the model expects as input, e.g. ``"synthetic iid 8x8"``, stored in the bundle.
    data_description
        Where the images came from, stored in the training record as ``data``.
    overwrite
        Replace an existing bundle folder at ``out``.

    Returns
    -------
    ModelBundle
        The bundle (``path`` is None; load the saved folder to get one with a path). Its
        training record holds the :func:`train_unet` record plus ``n_train``, ``n_heldout``,
        ``heldout_fraction`` and ``data``.

    Raises
    ------
    InputDataError
        If the images are unusable (see :func:`train_unet`) or too few to split.
    ConfigError
        If the config is invalid, ``positions`` does not fit the images, ``out`` exists
        without ``overwrite``, or as raised by :func:`train_unet` and ``build_bundle``.
    TypeError
        If an argument has the wrong type.
    """
    from medsi.model.bundle import build_bundle, save_bundle

    array = _check_images(images)
    cfg = _resolve_config(config, array, epochs, seed)
    if positions is not None:
        if not isinstance(positions, np.ndarray):
            raise TypeError(
                f'"positions" must be a numpy.ndarray or None, got {type(positions).__name__}.'
            )
        if positions.shape != (len(array),):
            raise ConfigError(
                f'"positions" must have shape ({len(array)},), one per image, got '
                f"{positions.shape}; pass the slice position of each image, or None."
            )
    if out is not None and not overwrite and (Path(out).exists() or Path(out).is_symlink()):
        raise ConfigError(
            f'"out" must not exist, got {str(out)!r}, which does; choose another path or '
            "overwrite it."
        )
    training = cfg["training"]
    train_idx, heldout_idx = split_heldout(
        len(array), training["heldout_fraction"], training["seed"]
    )
    unet, record = train_unet(
        cfg,
        array[train_idx],
        device=device,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )
    record.update(
        n_train=int(len(train_idx)),
        heldout_fraction=training["heldout_fraction"],
        data=data_description,
    )
    bundle = build_bundle(
        unet,
        cfg,
        np.asarray(images, dtype=np.float64)[heldout_idx],  # full precision for statistics
        positions=None if positions is None else positions[heldout_idx],
        training=record,
        input_space=input_space,
    )
    if out is not None:
        save_bundle(bundle, out, overwrite=overwrite)
    return bundle
