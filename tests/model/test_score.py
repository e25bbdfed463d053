import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd import forward_ad as fwad

from medsi.errors import ConfigError
from medsi.model import AnomalyScore, DDIMReconstruction, PLUNet
from medsi.si import check_piecewise_linear
from tests.model.conftest import small_unet


class _Zero(nn.Module):
    """A reconstruction that returns zeros, so the score is A(|x|) or A(x)."""

    def forward(self, x):
        return torch.zeros_like(x)


def _mean_filter_reference(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over the k x k neighbours that lie inside the image, pixel by pixel."""
    out = np.empty_like(x)
    r = k // 2
    height, width = x.shape[-2:]
    for i in range(height):
        for j in range(width):
            window = x[..., max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1]
            out[..., i, j] = window.mean(axis=(-2, -1))
    return out


@pytest.mark.parametrize("k", [1, 3, 5], ids=["k1", "k3", "k5"])
@pytest.mark.parametrize("signed", [False, True], ids=["abs", "signed"])
def test_mean_filter_and_border(k, signed):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    score = AnomalyScore(_Zero(), kernel_size=k, signed=signed)
    out = score(x)
    assert out.shape == x.shape
    residual = x.numpy() if signed else np.abs(x.numpy())
    np.testing.assert_allclose(out.numpy(), _mean_filter_reference(residual, k), rtol=1e-13)


def test_border_averages_only_real_pixels():
    out = AnomalyScore(_Zero())(torch.ones(1, 1, 5, 5))
    assert torch.equal(out, torch.ones(1, 1, 5, 5))


def test_signed_keeps_the_sign():
    x = -torch.ones(1, 1, 4, 4)
    assert (AnomalyScore(_Zero(), signed=True)(x) == -1).all()
    assert (AnomalyScore(_Zero())(x) == 1).all()


@pytest.mark.parametrize(
    ("channels", "in_channels", "size"),
    [((8, 16), 1, 8), ((8, 16), 1, 16), ((8, 8, 16, 16), 1, 64), ((8, 16), 3, 16)],
    ids=["8px", "16px", "64px", "rgb"],
)
def test_shape_with_reconstruction(channels, in_channels, size):
    net = small_unet(channels=channels, in_channels=in_channels, dtype=torch.float32)
    score = AnomalyScore(DDIMReconstruction(net))
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        out = score(x)
    assert out.shape == x.shape
    assert (out >= 0).all()


def test_paper_size_smoke():
    score = AnomalyScore(DDIMReconstruction(PLUNet()))
    check_piecewise_linear(score)
    with torch.no_grad():
        out = score(torch.randn(1, 1, 16, 16))
    assert out.shape == (1, 1, 16, 16)
    assert torch.isfinite(out).all()


def _jvp(fn, x, d):
    with torch.no_grad(), fwad.dual_level():
        return fwad.unpack_dual(fn(fwad.make_dual(x, d))).tangent


@pytest.mark.parametrize("signed", [False, True], ids=["abs", "signed"])
@pytest.mark.parametrize("seed", [0, 1], ids=["point0", "point1"])
def test_forward_ad_matches_finite_differences(signed, seed):
    score = AnomalyScore(DDIMReconstruction(small_unet(seed=seed)), signed=signed)
    check_piecewise_linear(score)
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=gen)
    d = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=gen)
    tangent = _jvp(score, x, d)
    h = 1e-5
    with torch.no_grad():
        fd = (score(x + h * d) - score(x - h * d)) / (2 * h)
    rel = float((fd - tangent).norm() / tangent.norm())
    assert rel < 1e-8
    # primal under forward AD equals the plain evaluation
    with torch.no_grad(), fwad.dual_level():
        primal = fwad.unpack_dual(score(fwad.make_dual(x, d))).primal
    torch.testing.assert_close(primal, score(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kernel_size": 4}, ConfigError, '"kernel_size" must be odd'),
        ({"kernel_size": 0}, ConfigError, '"kernel_size" must be an integer >= 1'),
        ({"kernel_size": 3.0}, TypeError, '"kernel_size" must be an int'),
        ({"signed": "yes"}, TypeError, '"signed" must be a bool'),
    ],
    ids=["even", "zero", "float", "signed-str"],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AnomalyScore(_Zero(), **kwargs)


def test_bad_reconstruction():
    with pytest.raises(TypeError, match='"reconstruction" must be a torch.nn.Module'):
        AnomalyScore(lambda x: x)


def test_bad_input_shape():
    with pytest.raises(ConfigError, match=r'"x" must have shape \(B, C, H, W\)'):
        AnomalyScore(_Zero())(torch.zeros(4, 4))
