import pytest
import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from medsi.errors import ConfigError, NotPiecewiseLinearError
from medsi.model import PLUNet, timestep_embedding
from medsi.si import check_piecewise_linear
from medsi.si.linearity import PIECEWISE_LINEAR_MODULES
from tests.model.conftest import small_unet

SHAPE_CASES = [
    # channels, in_channels, spatial size, batch
    ((8, 16), 1, (8, 8), 2),
    ((8, 16), 1, (16, 16), 1),
    ((4, 8, 8, 16), 1, (64, 64), 1),
    ((8, 16, 16), 1, (16, 32), 3),
    ((8, 16), 3, (16, 16), 2),
    ((8,), 1, (5, 7), 1),
]
SHAPE_IDS = ["2-levels-8px", "2-levels-16px", "4-levels-64px", "3-levels-16x32", "rgb", "1-level"]


@pytest.mark.parametrize(("channels", "in_channels", "size", "batch"), SHAPE_CASES, ids=SHAPE_IDS)
def test_output_shape(channels, in_channels, size, batch):
    net = small_unet(channels=channels, in_channels=in_channels, dtype=torch.float32)
    x = torch.randn(batch, in_channels, *size)
    out = net(x, 100)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_three_dimensional():
    net = small_unet(spatial_dims=3, dtype=torch.float32)
    x = torch.randn(1, 1, 4, 8, 6)
    assert net(x, 3).shape == x.shape
    assert any(m.mode == "trilinear" for m in net.modules() if isinstance(m, nn.Upsample))


def test_paper_size_smoke():
    net = PLUNet().eval()
    assert net.channels == (32, 64, 128, 256)
    assert net.time_embed_dim == 100
    assert len(net.up_blocks) == 3  # three skip connections
    assert net.size_multiple == 8
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert net(x, 460).shape == (2, 1, 16, 16)


def test_layers_are_piecewise_linear():
    net = small_unet(channels=(8, 16, 32))
    check_piecewise_linear(net.eval())
    leaves = [m for m in net.modules() if next(m.children(), None) is None]
    assert all(type(m) in PIECEWISE_LINEAR_MODULES for m in leaves)
    ups = [m for m in leaves if isinstance(m, nn.Upsample)]
    assert len(ups) == 2
    assert all(m.mode == "bilinear" and m.align_corners is False for m in ups)
    assert sum(isinstance(m, nn.AvgPool2d) for m in leaves) == 2
    # the final layer is a bare 1x1 convolution
    assert isinstance(net.out.conv, nn.Conv2d)
    assert net.out.conv.kernel_size == (1, 1)
    assert len(list(net.out.children())) == 1


def test_time_changes_output():
    net = small_unet()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out0, out1 = net(x, 0), net(x, 460)
    assert (out0 - out1).abs().max() > 1e-3


@pytest.mark.parametrize(
    "t",
    [torch.tensor(115), torch.tensor([115, 115]), torch.tensor([115.0, 115.0])],
    ids=["0d-tensor", "1d-tensor", "float-tensor"],
)
def test_time_forms_agree(t):
    net = small_unet()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(net(x, t), net(x, 115), rtol=0, atol=1e-14)


def test_per_element_timesteps():
    net = small_unet()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = net(x, torch.tensor([0, 345]))
    torch.testing.assert_close(out[:1], net(x[:1], 0), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1:], net(x[1:], 345), rtol=0, atol=1e-12)


def test_timestep_embedding_matches_monai():
    t = torch.tensor([0, 1, 115, 460, 999])
    ours = timestep_embedding(t, 100, torch.float32)
    theirs = get_timestep_embedding(t, 100)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)
    assert timestep_embedding(t, 7).shape == (5, 7)
    assert (timestep_embedding(t, 7)[:, -1] == 0).all()


def test_config_rebuilds():
    net = PLUNet(in_channels=3, out_channels=3, channels=(8, 16, 32), time_embed_dim=12)
    twin = PLUNet(**net.config)
    assert twin.config == net.config
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in twin.state_dict().items()}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spatial_dims": 1}, ConfigError, '"spatial_dims" must be 2 or 3'),
        ({"channels": ()}, ConfigError, '"channels" must hold at least one level'),
        ({"channels": (8, 0)}, ConfigError, r'"channels\[1\]" must be an integer >= 1'),
        ({"channels": "8"}, TypeError, '"channels" must be a sequence of ints'),
        ({"in_channels": 1.0}, TypeError, '"in_channels" must be an int'),
        ({"time_embed_dim": 1}, ConfigError, '"time_embed_dim" must be an integer >= 2'),
        ({"kernel_size": 4}, ConfigError, '"kernel_size" must be odd'),
        ({"convs_per_block": 0}, ConfigError, '"convs_per_block" must be an integer >= 1'),
    ],
    ids=["dims", "no-levels", "zero-channels", "str-channels", "float", "embed", "even-k", "convs"],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PLUNet(**{"channels": (8, 16), **kwargs})


@pytest.mark.parametrize(
    ("shape", "dtype", "t", "error", "match"),
    [
        ((1, 1, 10, 10), torch.float64, 0, ConfigError, "divisible by 4"),
        ((1, 1, 16, 10), torch.float64, 0, ConfigError, r"got \(16, 10\); resize or pad"),
        ((1, 3, 8, 8), torch.float64, 0, ConfigError, "with C = 1"),
        ((1, 8, 8), torch.float64, 0, ConfigError, r"must have shape \(B, C, H, W\)"),
        ((1, 1, 8, 8), torch.float32, 0, ConfigError, "dtype torch.float64"),
        ((2, 1, 8, 8), torch.float64, torch.tensor([1, 2, 3]), ConfigError, r"shape \(2,\)"),
        ((1, 1, 8, 8), torch.float64, -1, ConfigError, '"t" must be >= 0'),
        ((1, 1, 8, 8), torch.float64, 1.5, TypeError, '"t" must be an int or a tensor'),
    ],
    ids=["size", "size-one-side", "channels", "ndim", "dtype", "t-shape", "t-negative", "t-float"],
)
def test_bad_inputs(shape, dtype, t, error, match):
    net = small_unet(channels=(8, 16, 16))
    with pytest.raises(error, match=match):
        net(torch.zeros(shape, dtype=dtype), t)


def test_non_tensor_input():
    with pytest.raises(TypeError, match='"x" must be a torch.Tensor'):
        small_unet()([[0.0]], 0)


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.Sequential(nn.Conv2d(1, 1, 3), nn.SiLU()), "of type SiLU"),
        (nn.Sequential(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4)), "of type GroupNorm"),
        (nn.Sequential(nn.Linear(2, 2), nn.Dropout()), "Dropout"),
        (nn.Softmax(dim=1), "of type Softmax"),
    ],
    ids=["silu", "groupnorm", "dropout", "softmax"],
)
def test_check_refuses(module, match):
    with pytest.raises(NotPiecewiseLinearError, match=match):
        check_piecewise_linear(module)
