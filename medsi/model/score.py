"""Anomaly score E(x) = A(|x - f(x)|) or A(x - f(x)) (DESIGN.md section 1)."""

import torch
from torch import nn
from torch.nn import functional as F

from medsi.errors import ConfigError
from medsi.model.unet import _check_int

__all__ = ["AnomalyScore"]


class AnomalyScore(nn.Module):
    """Locally averaged reconstruction error, piecewise affine in the image.

    E(x) = A(|x - f(x)|), or A(x - f(x)) when ``signed`` (only what is brighter than its
    reconstruction scores high). A is a ``kernel_size`` x ``kernel_size`` mean filter, stride 1,
    applied per channel; at the border it averages only the pixels inside the image
    (``avg_pool2d`` with zero padding and ``count_include_pad=False``), so the output has the
    shape of the input.

    Parameters
    ----------
    reconstruction
        The map f, e.g. :class:`~medsi.model.DDIMReconstruction`.
    kernel_size
        Odd size k of the averaging filter (the paper: 3).
    signed
        Average the signed difference instead of its absolute value.

    Raises
    ------
    ConfigError
        If ``kernel_size`` is not a positive odd integer.
    TypeError
        If ``reconstruction`` is not a module or ``signed`` is not a bool.

    Examples
    --------
    >>> import torch
    >>> score = AnomalyScore(nn.Identity())
    >>> score(torch.ones(1, 1, 4, 4)).abs().max().item()
    0.0
    """

    def __init__(self, reconstruction: nn.Module, kernel_size: int = 3, signed: bool = False):
        super().__init__()
        if not isinstance(reconstruction, nn.Module):
            raise TypeError(
                f'"reconstruction" must be a torch.nn.Module, got '
                f"{type(reconstruction).__name__}; pass e.g. a DDIMReconstruction."
            )
        _check_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ConfigError(
                f'"kernel_size" must be odd so the score map keeps the image size, got '
                f"{kernel_size}; pass e.g. 3."
            )
        if not isinstance(signed, bool):
            raise TypeError(f'"signed" must be a bool, got {type(signed).__name__}.')
        self.reconstruction = reconstruction
        self.kernel_size = kernel_size
        self.signed = signed

    def average(self, residual: torch.Tensor) -> torch.Tensor:
        """Apply the k x k mean filter A (border pixels average only pixels inside the image).

        Parameters
        ----------
        residual
            Shape (B, C, H, W) (or (B, C, D, H, W), filtered with a k x k x k cube).

        Returns
        -------
        torch.Tensor
            Same shape as ``residual``.

        Raises
        ------
        ConfigError
            If ``residual`` has neither 4 nor 5 axes.
        """
        pool = {4: F.avg_pool2d, 5: F.avg_pool3d}.get(residual.ndim)
        if pool is None:
            raise ConfigError(
                f'"x" must have shape (B, C, H, W), got {tuple(residual.shape)}; add the batch '
                "and channel axes, e.g. x[None, None]."
            )
        k = self.kernel_size
        return pool(residual, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score every pixel of ``x``.

        Parameters
        ----------
        x
            Images, shape (B, C, H, W), as the reconstruction expects them.

        Returns
        -------
        torch.Tensor
            E(x), shape (B, C, H, W).

        Raises
        ------
        ConfigError
            If ``x`` does not have 4 (or 5) axes, or the reconstruction refuses it.
        """
        residual = x - self.reconstruction(x)
        if not self.signed:
            residual = torch.abs(residual)
        return self.average(residual)
