"""A U-Net that is piecewise linear in its image input (DESIGN.md section 3).

Built from MONAI ``Convolution`` blocks (conv, BatchNorm, ReLU), average pooling and bilinear
upsampling, so that with BatchNorm in eval mode the predicted noise is a piecewise-affine
function of the image for every fixed timestep. The timestep enters through a sinusoidal
embedding and Linear-ReLU-Linear, projected per block and added to the block's input; it does
not depend on the image, so it only shifts the affine pieces.
"""

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from medsi.errors import ConfigError

__all__ = ["PLUNet", "timestep_embedding"]

_MAX_PERIOD = 10000.0


def _check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'"{name}" must be an int, got {type(value).__name__}; pass an integer.')
    if value < minimum:
        raise ConfigError(
            f'"{name}" must be an integer >= {minimum}, got {value}; pass a larger value.'
        )
    return value


def timestep_embedding(
    t: torch.Tensor, embedding_dim: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Ho et al. 2020; as MONAI's ``get_timestep_embedding``).

    Computed in float64 whatever ``dtype`` is, then cast, so the embedding of a timestep is the
    same on every device and in every precision up to the final rounding.

    Parameters
    ----------
    t
        Timesteps, shape (N,), integer or floating.
    embedding_dim
        Size of the embedding; the first half holds cosines, the second sines, and an odd size
        ends with one zero.
    dtype
        Floating dtype of the result; float64 when None.

    Returns
    -------
    torch.Tensor
        Shape (N, embedding_dim), on ``t``'s device.
    """
    half = embedding_dim // 2
    exponent = torch.arange(half, dtype=torch.float64, device=t.device) / half
    freqs = torch.exp(-math.log(_MAX_PERIOD) * exponent)
    args = t.to(torch.float64)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if embedding_dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb.to(dtype or torch.float64)


class _TimeBlock(nn.Module):
    """Add a projection of the time embedding to the input, then run conv-BN-ReLU units.

    Parameters
    ----------
    spatial_dims
        2 or 3.
    in_channels, out_channels
        Channels of the block's input and output.
    time_embed_dim
        Size of the time embedding.
    num_convs
        Number of MONAI ``Convolution`` units (conv, BatchNorm, ReLU).
    kernel_size
        Odd kernel size of the convolutions (same padding).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        num_convs: int,
        kernel_size: int,
    ):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.time_proj = nn.Linear(time_embed_dim, in_channels)
        self.convs = nn.Sequential(
            *(
                Convolution(
                    spatial_dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size=kernel_size,
                    act="RELU",
                    norm="BATCH",
                )
                for i in range(num_convs)
            )
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Return ``convs(x + proj(emb))``, the projection broadcast over space.

        Parameters
        ----------
        x
            Shape (B, C_in, *spatial).
        emb
            Time embedding after the MLP, shape (B, D) or (1, D).

        Returns
        -------
        torch.Tensor
            Shape (B, C_out, *spatial).
        """
        shift = self.time_proj(emb).reshape(emb.shape[0], -1, *([1] * self.spatial_dims))
        return self.convs(x + shift)


class PLUNet(nn.Module):
    """Piecewise-linear noise-prediction U-Net of the paper (DESIGN.md section 3).

    Level ``i`` has a block of ``convs_per_block`` MONAI ``Convolution`` units (conv, BatchNorm,
    ReLU) with ``channels[i]`` output channels. Average pooling (by 2) goes down between levels,
    bilinear upsampling (``align_corners=False``) goes up, and the decoder block of level ``i``
    takes the upsampled features concatenated with the encoder output of that level
    (``len(channels) - 1`` skips). A final 1x1 convolution, without norm or activation, gives the
    predicted noise. The time embedding (sinusoidal, ``time_embed_dim``, then Linear-ReLU-Linear)
    is projected by one Linear per block to the block's input channels and added to its input.

    Only conv, BatchNorm, ReLU, linear, average pooling and bilinear upsampling are used, so
    :func:`medsi.si.check_piecewise_linear` accepts it in eval mode, where the output is
    piecewise affine in ``x`` for fixed ``t``.

    Parameters
    ----------
    spatial_dims
        2 (images, the default) or 3 (volumes; trilinear upsampling).
    in_channels
        Image channels (1 for MRI, 3 for RGB).
    out_channels
        Channels of the predicted noise; normally ``in_channels``.
    channels
        Output channels per level, from top to bottom; the paper's size is (32, 64, 128, 256).
    time_embed_dim
        Size of the sinusoidal time embedding and of the time MLP; the paper uses 100.
    convs_per_block
        Conv-BN-ReLU units per block; the paper's U-Net has one.
    kernel_size
        Odd kernel size of the convolutions.

    Raises
    ------
    ConfigError
        If an argument is out of range (e.g. an even ``kernel_size`` or ``spatial_dims`` 1).
    TypeError
        If an integer argument is not an int.

    Examples
    --------
    >>> import torch
    >>> net = PLUNet(channels=(8, 16), time_embed_dim=8).eval()
    >>> net(torch.zeros(2, 1, 8, 8), 10).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        time_embed_dim: int = 100,
        convs_per_block: int = 1,
        kernel_size: int = 3,
    ):
        super().__init__()
        _check_int("spatial_dims", spatial_dims)
        if spatial_dims not in (2, 3):
            raise ConfigError(
                f'"spatial_dims" must be 2 or 3, got {spatial_dims}; '
                "pass 2 for slices or 3 for volumes."
            )
        _check_int("in_channels", in_channels)
        _check_int("out_channels", out_channels)
        if isinstance(channels, str | bytes) or not isinstance(channels, Sequence):
            raise TypeError(
                f'"channels" must be a sequence of ints, got {type(channels).__name__}; '
                "pass e.g. (32, 64, 128, 256)."
            )
        if len(channels) == 0:
            raise ConfigError(
                '"channels" must hold at least one level, got (); pass e.g. (32, 64, 128, 256).'
            )
        for i, c in enumerate(channels):
            _check_int(f"channels[{i}]", c)
        _check_int("time_embed_dim", time_embed_dim, minimum=2)
        _check_int("convs_per_block", convs_per_block)
        _check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ConfigError(
                f'"kernel_size" must be odd so that convolutions keep the image size, '
                f"got {kernel_size}; pass e.g. 3."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(int(c) for c in channels)
        self.time_embed_dim = time_embed_dim
        self.convs_per_block = convs_per_block
        self.kernel_size = kernel_size
        levels = len(self.channels)
        self.size_multiple = 2 ** (levels - 1)
        """Every spatial side of the input must be a multiple of this number."""

        pool = nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d
        mode = "bilinear" if spatial_dims == 2 else "trilinear"

        def block(c_in: int, c_out: int) -> _TimeBlock:
            return _TimeBlock(
                spatial_dims, c_in, c_out, time_embed_dim, convs_per_block, kernel_size
            )

        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, time_embed_dim),
            nn.ReLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        self.down_blocks = nn.ModuleList(
            block(in_channels if i == 0 else self.channels[i - 1], self.channels[i])
            for i in range(levels)
        )
        self.pools = nn.ModuleList(pool(kernel_size=2) for _ in range(levels - 1))
        self.upsamples = nn.ModuleList(
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False) for _ in range(levels - 1)
        )
        # up_blocks[j] works at level levels - 2 - j (bottom to top).
        self.up_blocks = nn.ModuleList(
            block(self.channels[i + 1] + self.channels[i], self.channels[i])
            for i in reversed(range(levels - 1))
        )
        self.out = Convolution(
            spatial_dims, self.channels[0], out_channels, kernel_size=1, conv_only=True
        )

    @property
    def config(self) -> dict:
        """Constructor arguments, as plain Python values: ``PLUNet(**net.config)`` rebuilds it."""
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "channels": list(self.channels),
            "time_embed_dim": self.time_embed_dim,
            "convs_per_block": self.convs_per_block,
            "kernel_size": self.kernel_size,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'"x" must be a torch.Tensor, got {type(x).__name__}.')
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            axes = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise ConfigError(
                f'"x" must have shape {axes} with C = {self.in_channels}, got '
                f"{tuple(x.shape)}; add the batch and channel axes or use a model built for "
                "these channels."
            )
        spatial = tuple(x.shape[2:])
        if any(s == 0 or s % self.size_multiple for s in spatial):
            raise ConfigError(
                f'"x" must have every spatial side divisible by {self.size_multiple} '
                f"(2**(len(channels) - 1) for channels={self.channels}), got {spatial}; "
                "resize or pad the image, or use fewer levels."
            )
        param = next(self.parameters())
        if x.dtype != param.dtype:
            raise ConfigError(
                f'"x" must have the model\'s dtype {param.dtype}, got {x.dtype}; '
                f"cast the input with x.to({param.dtype}) or the model with .to(dtype)."
            )

    def _timesteps(self, t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        if isinstance(t, bool) or not isinstance(t, int | torch.Tensor):
            raise TypeError(
                f'"t" must be an int or a tensor, got {type(t).__name__}; pass the timestep.'
            )
        if isinstance(t, int):
            if t < 0:
                raise ConfigError(f'"t" must be >= 0, got {t}; pass a timestep index.')
            return torch.tensor([t], device=device)
        if t.ndim == 0:
            return t.reshape(1).to(device)
        if t.ndim != 1 or t.shape[0] != batch:
            raise ConfigError(
                f'"t" must be a scalar or have shape ({batch},) to match the batch, got '
                f"{tuple(t.shape)}; pass one timestep per image or a single one."
            )
        return t.to(device)

    def forward(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Predict the noise in ``x`` at timestep ``t``.

        Parameters
        ----------
        x
            Noisy images, shape (B, in_channels, H, W) (or (B, C, D, H, W) for 3-D), in the
            model's dtype; every spatial side divisible by ``size_multiple``.
        t
            Timestep index (0-based, as MONAI's schedulers): an int or a 0-d tensor shared by
            the batch, or a tensor of shape (B,).

        Returns
        -------
        torch.Tensor
            Predicted noise, shape (B, out_channels, *spatial).

        Raises
        ------
        ConfigError
            If the shape, spatial size or dtype of ``x``, or the shape of ``t``, does not fit.
        TypeError
            If ``x`` is not a tensor or ``t`` is neither an int nor a tensor.
        """
        self._check_input(x)
        steps = self._timesteps(t, x.shape[0], x.device)
        emb = self.time_mlp(timestep_embedding(steps, self.time_embed_dim, x.dtype))

        h = x
        skips = []
        for i, down in enumerate(self.down_blocks):
            if i > 0:
                h = self.pools[i - 1](h)
            h = down(h, emb)
            skips.append(h)
        skips.pop()  # the bottom level feeds the decoder directly
        for upsample, up in zip(self.upsamples, self.up_blocks, strict=True):
            h = torch.cat([upsample(h), skips.pop()], dim=1)
            h = up(h, emb)
        return self.out(h)
