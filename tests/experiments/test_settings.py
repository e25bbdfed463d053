from pathlib import Path

import pytest
import yaml

from medsi.errors import ConfigError
from medsi.experiments import METHODS, SyntheticSettings

CONFIG = Path(__file__).parents[2] / "configs" / "synthetic.yaml"


def test_defaults_are_the_papers_and_match_the_yaml():
    settings = SyntheticSettings()
    assert settings.sizes == (8, 16, 32, 64)
    assert settings.signals == (1.0, 2.0, 3.0, 4.0)
    assert settings.permutations == 1000 and settings.alpha == 0.05
    assert settings.methods == METHODS
    section = yaml.safe_load(CONFIG.read_text())["experiment"]
    from_yaml = SyntheticSettings.from_mapping(section)
    for name in ("kinds", "sizes", "signals", "alpha", "permutations"):
        assert getattr(from_yaml, name) == getattr(settings, name), name


def test_sides_default_to_the_extremes_of_sizes():
    settings = SyntheticSettings(sizes=(8, 16))
    assert settings.power_side == 16 and settings.robustness_side == 8
    assert SyntheticSettings(sizes=(8, 16), power_size=8).power_side == 8


def test_methods_are_kept_in_canonical_order():
    assert SyntheticSettings(methods=("naive", "proposed")).methods == ("proposed", "naive")


def test_fingerprint_changes_with_settings():
    assert SyntheticSettings(n=5).fingerprint() != SyntheticSettings(n=6).fingerprint()
    assert SyntheticSettings(n=5).fingerprint() == SyntheticSettings(n=5).fingerprint()


@pytest.mark.parametrize(
    "values, match",
    [
        ({"kinds": ["gauss"]}, '"kinds" must hold'),
        ({"sizes": [0]}, '"sizes" must hold integers >= 1'),
        ({"signals": [-1.0]}, '"signals" values must be >'),
        ({"methods": ["magic"]}, '"methods" must be among'),
        ({"score": "squared"}, '"score" must be absolute or signed'),
        ({"alpha": 1.5}, '"alpha" must be in'),
        ({"termination": "sometimes"}, "termination"),
        ({"robustness_families": ["cauchy"]}, '"robustness_families" must be among'),
        ({"seed": -1}, '"seed" must be >= 0'),
        ({"n": 0}, '"n" must hold integers >= 1'),
    ],
    ids=[
        "kind",
        "size",
        "signal",
        "method",
        "score",
        "alpha",
        "termination",
        "family",
        "seed",
        "n",
    ],
)
def test_bad_values_are_refused(values, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticSettings(**values)


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="unknown experiment setting"):
        SyntheticSettings.from_mapping({"sizes": [8], "colour": "blue"})
