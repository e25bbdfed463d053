"""Shared fixtures of the model tests: small U-Nets with non-trivial BatchNorm statistics."""

import pytest
import torch

from medsi.model import PLUNet


def small_unet(
    channels=(8, 16),
    in_channels=1,
    dtype=torch.float64,
    seed=0,
    time_embed_dim=16,
    spatial_dims=2,
):
    """A seeded PLUNet in eval mode whose BatchNorm layers are not the identity."""
    torch.manual_seed(seed)
    net = PLUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=in_channels,
        channels=channels,
        time_embed_dim=time_embed_dim,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return net.to(dtype).eval()


@pytest.fixture
def unet64():
    """A two-level float64 U-Net for one-channel images."""
    return small_unet()
