import numpy as np
import pytest

from medsi.data import PhantomConfig, make_phantom
from medsi.errors import InputDataError
from medsi.transforms.mask import intensity_brain_mask, otsu_threshold


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_otsu_separates_two_classes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 5000), rng.normal(10, 1, 5000)])
    assert 3 < otsu_threshold(values) < 7


def test_skull_stripped_phantom_mask_matches_the_brain():
    phantom = make_phantom(0, PhantomConfig(spacing_mm=3.0, skull=False))
    mask = intensity_brain_mask(phantom.image, spacing=(3.0, 3.0, 3.0))
    assert _dice(mask, phantom.brain_mask) > 0.85


def test_phantom_with_skull_gives_one_head_region_holding_the_brain():
    phantom = make_phantom(1, PhantomConfig(spacing_mm=3.0))
    mask = intensity_brain_mask(phantom.image, spacing=(3.0, 3.0, 3.0))
    assert (mask & phantom.brain_mask).sum() > 0.9 * phantom.brain_mask.sum()
    assert mask.sum() < 0.6 * mask.size  # not the whole field of view


def test_invalid_voxels_are_never_in_the_mask():
    phantom = make_phantom(2, PhantomConfig(spacing_mm=3.0, skull=False))
    valid = np.ones(phantom.image.shape, bool)
    valid[:, :, : phantom.image.shape[2] // 2] = False
    mask = intensity_brain_mask(phantom.image, (3.0, 3.0, 3.0), valid=valid)
    assert not (mask & ~valid).any() and mask.any()


def test_constant_image_is_a_clear_error():
    with pytest.raises(InputDataError, match="no contrast"):
        intensity_brain_mask(np.ones((10, 10, 10)))
