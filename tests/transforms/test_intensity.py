import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medsi.errors import ConfigError, InputDataError
from medsi.transforms.intensity import (
    RobustStandardise,
    RobustStandardised,
    robust_centre_scale,
    robust_standardise,
)


@pytest.mark.parametrize("method", ["median-mad", "trimmed"], ids=["mad", "trimmed"])
def test_normal_values_give_mean_and_sd(method):
    values = np.random.default_rng(0).normal(5.0, 3.0, 200_000)
    centre, scale = robust_centre_scale(values, method)
    assert centre == pytest.approx(5.0, abs=0.03) and scale == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("method", ["median-mad", "trimmed"], ids=["mad", "trimmed"])
def test_a_bright_lesion_barely_moves_the_statistics(method):
    rng = np.random.default_rng(1)
    brain = rng.normal(0.0, 1.0, 50_000)
    with_lesion = np.concatenate([brain, np.full(1_500, 8.0)])  # 3% of voxels, +8 sd
    c0, s0 = robust_centre_scale(brain, method)
    c1, s1 = robust_centre_scale(with_lesion, method)
    assert abs(c1 - c0) < 0.06 and abs(s1 / s0 - 1) < 0.06
    # whereas the plain mean and sd move several times more
    assert abs(with_lesion.mean() - brain.mean()) > 3 * abs(c1 - c0)


def test_standardise_uses_only_masked_voxels():
    image = np.zeros((10, 10, 10), np.float32)
    mask = np.zeros_like(image, bool)
    mask[2:8, 2:8, 2:8] = True
    image[mask] = np.random.default_rng(2).normal(100, 10, mask.sum())
    image[~mask] = 1000.0  # skull, far brighter: ignored
    out, centre, scale = robust_standardise(image, mask)
    assert out.dtype == np.float32
    assert abs(np.median(out[mask])) < 1e-6
    assert out[~mask].min() > 50


def test_array_and_dictionary_transforms_keep_metadata():
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    rng = np.random.default_rng(3)
    image = MetaTensor(
        torch.from_numpy(rng.normal(50, 5, (1, 8, 8, 8)).astype(np.float32)), affine=affine
    )
    mask = np.ones((1, 8, 8, 8), bool)
    out = RobustStandardise()(image, mask)
    assert isinstance(out, MetaTensor) and np.allclose(out.affine, affine)
    assert out.meta["standardisation"]["method"] == "median-mad"
    d = RobustStandardised(keys="image", mask_key="brain")(
        {"image": image, "brain": mask, "other": 1}
    )
    assert d["other"] == 1 and torch.allclose(d["image"], out)
    with pytest.raises(KeyError, match="RobustStandardised needs the brain mask in key 'brain'"):
        RobustStandardised(keys="image", mask_key="brain")({"image": image})


def test_errors():
    with pytest.raises(ConfigError, match='"method" must be one of'):
        robust_centre_scale(np.arange(100.0), "mean")
    with pytest.raises(InputDataError, match="at least 10 brain voxels"):
        robust_centre_scale(np.arange(5.0))
    with pytest.raises(InputDataError, match="almost\\) constant"):
        robust_centre_scale(np.ones(100))
    with pytest.raises(ConfigError, match='"mask" has shape'):
        robust_standardise(np.ones((4, 4)), np.ones((4, 5), bool))
