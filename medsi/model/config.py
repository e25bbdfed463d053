"""The recipe of a model bundle: sections, keys, defaults and checks (DESIGN.md section 3).

A config is a plain dict of six sections, as written to a bundle's ``config.yaml``:

``model``
    The :class:`~medsi.model.PLUNet`: ``channels`` (per level, top to bottom), ``time_embed_dim``,
    ``convs_per_block``, ``in_channels``, ``kernel_size`` (odd).
``diffusion``
    The :class:`~medsi.model.DDIMReconstruction`: ``num_train_timesteps`` (T), ``beta_start``,
    ``beta_end``, ``start_timestep`` (T', 0-based), ``num_steps``, ``eta``, ``seed`` (of the
    fixed DDIM noise).
``score``
    The :class:`~medsi.model.AnomalyScore` and its selection: ``kernel_size`` (k of the mean
    filter), ``signed``, ``threshold`` (lambda).
``training``
    ``epochs``, ``batch_size``, ``learning_rate``, ``seed``, ``heldout_fraction`` (share of the
    normal images kept out of training for the covariance and the reference bank),
    ``checkpoint_every`` (epochs).
``covariance``
    ``kind`` (``isotropic``, ``diagonal`` or ``stationary``) and ``radius`` (half-width of the
    stationary kernel), see :func:`medsi.si.estimate.estimate_covariance`.
``data``
    ``image_size`` [H, W] of the model's input.

Examples
--------
>>> cfg = validate_config({"model": {"channels": [8, 16]}, "data": {"image_size": [16, 16]}})
>>> cfg["model"]["channels"], cfg["diffusion"]["start_timestep"]
([8, 16], 460)
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping

from medsi.errors import ConfigError
from medsi.si.estimate import CovarianceKind

__all__ = ["default_config", "validate_config"]

_DEFAULTS: dict[str, dict] = {
    "model": {
        "channels": [32, 64, 128, 256],
        "time_embed_dim": 100,
        "convs_per_block": 1,
        "in_channels": 1,
        "kernel_size": 3,
    },
    "diffusion": {
        "num_train_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "start_timestep": 460,
        "num_steps": 5,
        "eta": 1.0,
        "seed": 0,
    },
    "score": {"kernel_size": 3, "signed": False, "threshold": 0.8},
    "training": {
        "epochs": 1000,
        "batch_size": 32,
        "learning_rate": 3e-4,
        "seed": 0,
        "heldout_fraction": 0.2,
        "checkpoint_every": 50,
    },
    "covariance": {"kind": "isotropic", "radius": 2},
    "data": {"image_size": [8, 8]},
}


def default_config() -> dict:
    """Return the default recipe (the paper's settings at 8 x 8), a fresh deep copy.

    Returns
    -------
    dict
        Sections ``model``, ``diffusion``, ``score``, ``training``, ``covariance``, ``data``,
        each a dict of plain Python values (see the module docstring).

    Examples
    --------
    >>> default_config()["score"]
    {'kernel_size': 3, 'signed': False, 'threshold': 0.8}
    """
    return copy.deepcopy(_DEFAULTS)


# ------------------------------------------------------------------------------- value checks


def _int(minimum: int, hint: str) -> Callable[[str, object], int]:
    def check(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(
                f'"{name}" must be an integer, got {value!r} ({type(value).__name__}); {hint}.'
            )
        if value < minimum:
            raise ConfigError(f'"{name}" must be >= {minimum}, got {value}; {hint}.')
        return int(value)

    return check


def _float(low: float, high: float, low_open: bool, high_open: bool, hint: str):
    def check(name: str, value) -> float:
        # PyYAML reads 3e-4 (no dot) as a string: accept numeric strings.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(
                f'"{name}" must be a number, got {value!r} ({type(value).__name__}); {hint}.'
            )
        value = float(value)
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise ConfigError(f'"{name}" must be in {interval}, got {value!r}; {hint}.')
        return value

    return check


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(
            f'"{name}" must be true or false, got {value!r} ({type(value).__name__}); '
            "write true or false."
        )
    return value


def _int_list(length: int | None, minimum: int, hint: str):
    def check(name: str, value) -> list[int]:
        if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
            raise ConfigError(
                f'"{name}" must be a list of integers, got {value!r} ({type(value).__name__}); '
                f"{hint}."
            )
        items = list(value)
        if (length is not None and len(items) != length) or not items:
            count = f"{length}" if length is not None else "at least one"
            raise ConfigError(
                f'"{name}" must have {count} entries, got {len(items)} ({items!r}); {hint}.'
            )
        return [_int(minimum, hint)(f"{name}[{i}]", item) for i, item in enumerate(items)]

    return check


def _kind(name: str, value) -> str:
    allowed = ", ".join(repr(k.value) for k in CovarianceKind)
    if not isinstance(value, str) or value not in {k.value for k in CovarianceKind}:
        raise ConfigError(f'"{name}" must be one of {allowed}, got {value!r}; pass one of those.')
    return value


_CHECKS: dict[str, dict[str, Callable[[str, object], object]]] = {
    "model": {
        "channels": _int_list(None, 1, "give channels per level, e.g. [32, 64, 128, 256]"),
        "time_embed_dim": _int(2, "pass the embedding size, e.g. 100"),
        "convs_per_block": _int(1, "pass 1 (the paper) or more"),
        "in_channels": _int(1, "pass 1 for MRI slices"),
        "kernel_size": _int(1, "pass an odd size such as 3"),
    },
    "diffusion": {
        "num_train_timesteps": _int(1, "pass the schedule length T, e.g. 1000"),
        "beta_start": _float(0, 1, True, True, "pass e.g. 1e-4"),
        "beta_end": _float(0, 1, True, True, "pass e.g. 0.02"),
        "start_timestep": _int(0, "pass a 0-based timestep T', e.g. 460"),
        "num_steps": _int(1, "pass the number of DDIM steps, e.g. 5"),
        "eta": _float(0, 1, False, False, "pass 1.0 (the paper) or 0.0 (plain DDIM)"),
        "seed": _int(0, "pass a non-negative seed"),
    },
    "score": {
        "kernel_size": _int(1, "pass an odd size such as 3"),
        "signed": _bool,
        "threshold": _float(-math.inf, math.inf, True, True, "pass a threshold such as 0.8"),
    },
    "training": {
        "epochs": _int(1, "pass the number of epochs, e.g. 1000"),
        "batch_size": _int(1, "pass a batch size such as 32"),
        "learning_rate": _float(0, math.inf, True, True, "pass e.g. 3e-4"),
        "seed": _int(0, "pass a non-negative seed"),
        "heldout_fraction": _float(0, 1, True, True, "pass a fraction such as 0.2"),
        "checkpoint_every": _int(1, "pass a number of epochs such as 50"),
    },
    "covariance": {
        "kind": _kind,
        "radius": _int(0, "pass a half-width in pixels such as 2"),
    },
    "data": {
        "image_size": _int_list(2, 1, "pass [H, W], e.g. [64, 64]"),
    },
}


def validate_config(cfg: Mapping) -> dict:
    """Check a (possibly partial) config and return it complete, with defaults filled in.

    Missing sections and keys take the values of :func:`default_config`. Integers must be
    integers (not bools or floats); floats may be given as ints or as numeric strings (PyYAML
    reads ``3e-4`` without a dot as a string). Beyond each value's own range, the sections
    must agree: ``num_steps - 1 <= start_timestep < num_train_timesteps``,
    ``beta_start <= beta_end``, odd kernel sizes, ``image_size`` sides divisible by
    ``2 ** (len(channels) - 1)`` and the stationary ``radius`` below both sides.

    Parameters
    ----------
    cfg
        Mapping of section name to a mapping of key to value, e.g. read from YAML.

    Returns
    -------
    dict
        A new dict, sections and keys in the order of :func:`default_config`, plain Python
        values (lists, ints, floats, bools, strings).

    Raises
    ------
    TypeError
        If ``cfg`` is not a mapping.
    ConfigError
        If a section or a key is unknown, a section is not a mapping, a value has the wrong
        type or range, or the sections disagree.
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(
            f'"cfg" must be a mapping of sections, got {type(cfg).__name__}; pass a dict such as '
            "default_config()."
        )
    result = default_config()
    sections = ", ".join(_DEFAULTS)
    for section, entries in cfg.items():
        if section not in _DEFAULTS:
            raise ConfigError(
                f"config section must be one of {sections}, got {section!r}; rename or remove it."
            )
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            raise ConfigError(
                f'config section "{section}" must be a mapping of keys to values, got '
                f"{type(entries).__name__}; write it as key: value lines."
            )
        for key, value in entries.items():
            check = _CHECKS[section].get(key)
            if check is None:
                keys = ", ".join(_DEFAULTS[section])
                raise ConfigError(
                    f'config key in section "{section}" must be one of {keys}, got {key!r}; '
                    "rename or remove it."
                )
            result[section][key] = check(f"{section}.{key}", value)
    _check_consistency(result)
    return result


def _check_consistency(cfg: dict) -> None:
    """Raise ConfigError where the validated sections disagree."""
    model, diffusion, data = cfg["model"], cfg["diffusion"], cfg["data"]
    for name, size in (
        ("model.kernel_size", model["kernel_size"]),
        ("score.kernel_size", cfg["score"]["kernel_size"]),
    ):
        if size % 2 == 0:
            raise ConfigError(
                f'"{name}" must be odd so that the image size is kept, got {size}; pass e.g. 3.'
            )
    if diffusion["start_timestep"] >= diffusion["num_train_timesteps"]:
        raise ConfigError(
            f'"diffusion.start_timestep" must be below diffusion.num_train_timesteps = '
            f"{diffusion['num_train_timesteps']}, got {diffusion['start_timestep']}; pass a "
            "0-based timestep such as 460."
        )
    if diffusion["num_steps"] - 1 > diffusion["start_timestep"]:
        raise ConfigError(
            f'"diffusion.num_steps" must be at most start_timestep + 1 = '
            f"{diffusion['start_timestep'] + 1}, got {diffusion['num_steps']}; use fewer steps "
            "or a larger start_timestep."
        )
    if diffusion["beta_start"] > diffusion["beta_end"]:
        raise ConfigError(
            f'"diffusion.beta_start" must be <= diffusion.beta_end = {diffusion["beta_end"]}, '
            f"got {diffusion['beta_start']}; pass e.g. 1e-4 and 0.02."
        )
    multiple = 2 ** (len(model["channels"]) - 1)
    height, width = data["image_size"]
    if height % multiple or width % multiple:
        raise ConfigError(
            f'"data.image_size" must have sides divisible by {multiple} '
            f"(2 ** (len(model.channels) - 1) for channels {model['channels']}), got "
            f"{data['image_size']}; resize the images or use fewer levels."
        )
    radius = cfg["covariance"]["radius"]
    if cfg["covariance"]["kind"] == CovarianceKind.STATIONARY and radius >= min(height, width):
        raise ConfigError(
            f'"covariance.radius" must be below both image sides {data["image_size"]}, got '
            f"{radius}; pass a smaller half-width such as 2."
        )
