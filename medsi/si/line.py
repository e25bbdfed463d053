"""Evaluate a piecewise-linear score along a line of images, K points at once.

For points z_1..z_K on the line x(z) = a + b z, one batched forward pass with
forward-mode AD (float64) gives, per point, the selected set {score > threshold}
(within the mask) and the largest interval [L_k, U_k] around z_k on which every
piecewise decision of the model and every threshold comparison is unchanged
(DESIGN.md section 2). On that interval the selection is constant.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from medsi.errors import ConfigError, InferenceError
from medsi.si.linearity import (
    DecisionRecorder,
    check_piecewise_linear,
    named_module_tracker,
    register_piecewise_linear_module,
)

__all__ = ["LineEvaluator", "LinePieces"]


@dataclasses.dataclass(frozen=True)
class LinePieces:
    """What one batch of line points found.

    Attributes
    ----------
    z
        (K,) the points.
    lower, upper
        (K,) the interval of constant decisions around each point; ``lower <= z <= upper``,
        infinite when no decision changes on that side.
    selected
        (K, H, W) bool, the selected set at each point.
    degenerate
        (K,) True where a decision lies exactly on its boundary at the point; that
        point's interval is then only the point itself and must be evaluated again nearby.
    """

    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    selected: np.ndarray
    degenerate: np.ndarray


@register_piecewise_linear_module
class ChannelAffine(nn.Module):
    """y = x * scale + shift per channel (dimension 1): an eval-mode BatchNorm, folded."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the affine map."""
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(view) + self.shift.view(view)


def _fold_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every eval-mode BatchNorm with running statistics by a ChannelAffine."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if isinstance(module, norms):
        return _as_affine(module) if module.running_var is not None else module
    for name, child in module.named_children():
        if isinstance(child, norms) and not child.training and child.running_var is not None:
            setattr(module, name, _as_affine(child))
        else:
            _fold_batchnorm(child)
    return module


def _as_affine(norm: nn.Module) -> ChannelAffine:
    with torch.no_grad():
        scale = 1.0 / torch.sqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
    return ChannelAffine(scale.clone(), shift.clone()).train(norm.training)


class ShiftedConv2d(nn.Module):
    """A 2-D convolution (stride 1, zero padding, one group) as a sum of channel products.

    The same linear map as the :class:`torch.nn.Conv2d` it is made from, for float64 on a
    CPU: torch runs float64 convolutions through a generic im2col path, which is slow for
    the few channels and large images of a diffusion U-Net, and slower per image as the
    batch grows; a matrix product over the channels per kernel offset is up to ~2x faster
    on batches of many images (benchmarks/conv_paths.py). Small calls (fewer than
    ``min_batch`` images, or fewer than ``min_work`` multiply-adds per kernel offset) keep
    the convolution, which is faster there.
    """

    min_batch = 2
    min_work = 2**20

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        # parameters (not buffers), so the module reports its dtype and device like the conv
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), False)
        self.register_parameter("bias", bias)
        self.padding = conv.padding

    @staticmethod
    def fits(conv: nn.Module) -> bool:
        """Whether ``conv`` is a Conv2d this class reproduces."""
        return (
            type(conv) is nn.Conv2d
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve (B, C, H, W) images."""
        work = x.shape[0] * x.shape[2] * x.shape[3] * self.weight.shape[0] * self.weight.shape[1]
        if x.shape[0] < self.min_batch or work < self.min_work:
            return F.conv2d(x, self.weight, self.bias, padding=self.padding)
        kh, kw = self.weight.shape[2:]
        ph, pw = self.padding
        padded = F.pad(x, (pw, pw, ph, ph))
        height, width = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
        out = None
        for dy in range(kh):
            for dx in range(kw):
                window = padded[:, :, dy : dy + height, dx : dx + width]
                term = torch.einsum("oc,bchw->bohw", self.weight[:, :, dy, dx], window)
                out = term if out is None else out + term
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


def _shift_convolutions(module: nn.Module) -> nn.Module:
    """Replace every Conv2d that :class:`ShiftedConv2d` reproduces by one."""
    for name, child in module.named_children():
        if ShiftedConv2d.fits(child):
            setattr(module, name, ShiftedConv2d(child).train(child.training))
        else:
            _shift_convolutions(child)
    return module


class LineEvaluator:
    """Batched forward-AD evaluation of ``score(x) > threshold`` along lines.

    Parameters
    ----------
    score
        A torch module mapping images (B, 1, H, W) to a score map (B, 1, H, W) that is
        piecewise linear in the images. It is checked with
        :func:`~medsi.si.check_piecewise_linear` and run in float64 (a float64 copy is
        made if its parameters are in another precision).
    threshold
        lambda: a pixel is selected when its score is strictly above it.
    mask
        (H, W) bool; pixels outside are never selected. ``None`` allows every pixel.
    device
        Where to run, e.g. ``"cpu"`` or ``"cuda"``; default: where the score's parameters are.

    Raises
    ------
    NotPiecewiseLinearError
        If the module is not piecewise linear.
    ConfigError
        If the threshold is not finite.
    """

    def __init__(
        self,
        score: nn.Module,
        threshold: float,
        mask: np.ndarray | None = None,
        device: str | torch.device | None = None,
    ):
        check_piecewise_linear(score)
        if not math.isfinite(float(threshold)):
            raise ConfigError(
                f'"threshold" must be a finite number, got {threshold!r}; pass e.g. 0.8.'
            )
        param = next(score.parameters(), None)
        if device is None:
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        # A private float64 copy, with BatchNorm folded into a per-channel affine map: the
        # same function, but forward AD through batch_norm is several times slower.
        score = copy.deepcopy(score).to(device=self.device, dtype=torch.float64)
        self.score = _fold_batchnorm(score)
        if self.device.type == "cpu":
            self.score = _shift_convolutions(self.score)
        self.threshold = float(threshold)
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)

    def close(self) -> None:
        """Release workers; an in-process evaluator holds none (see :mod:`medsi.si.parallel`)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=self.device)

    def _mask_tensor(self, shape, mask: np.ndarray | None = None) -> torch.Tensor | None:
        """The mask for a batch of images of ``shape`` (B, H, W), broadcastable to it."""
        mask = self.mask if mask is None else np.asarray(mask, dtype=bool)
        if mask is None:
            return None
        if mask.shape not in (tuple(shape[1:]), tuple(shape)):
            raise ConfigError(
                f'"mask" has shape {mask.shape} but the images are {tuple(shape[1:])}; '
                "pass a mask of the image's shape (or one per image)."
            )
        return torch.as_tensor(mask, device=self.device)

    def _score(self, images: torch.Tensor) -> torch.Tensor:
        out = self.score(images.unsqueeze(1))
        if out.dim() != 4 or out.shape[1] != 1 or out.shape[2:] != images.shape[1:]:
            raise InferenceError(
                f"the score module returned shape {tuple(out.shape)} for input "
                f"{tuple(images.unsqueeze(1).shape)}; it must return (B, 1, H, W)."
            )
        return out[:, 0]

    def select(self, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Selected set of each image by a plain forward pass (no AD).

        Parameters
        ----------
        images
            (H, W) or (B, H, W) images.
        mask
            Pixels that may be selected, (H, W) or one per image (B, H, W); default the
            evaluator's mask.

        Returns
        -------
        numpy.ndarray
            bool, same shape as ``images``.
        """
        images = np.asarray(images, dtype=np.float64)
        single = images.ndim == 2
        batch = self._tensor(images[None] if single else images)
        mask = self._mask_tensor(batch.shape, mask)
        with torch.no_grad():
            score = self._score(batch)
        sel = score > self.threshold
        if mask is not None:
            sel &= mask
        out = sel.cpu().numpy()
        return out[0] if single else out

    def score_map(self, images: np.ndarray) -> np.ndarray:
        """The score of each image by a plain forward pass, (H, W) or (B, H, W)."""
        images = np.asarray(images, dtype=np.float64)
        single = images.ndim == 2
        batch = self._tensor(images[None] if single else images)
        with torch.no_grad():
            out = self._score(batch).cpu().numpy()
        return out[0] if single else out

    def patterns(self, images: np.ndarray) -> np.ndarray:
        """Every piecewise decision (and threshold comparison) of each image, for checks.

        Parameters
        ----------
        images
            (B, H, W) images.

        Returns
        -------
        numpy.ndarray
            (B, m) integer codes of the decisions; two images share all decisions
            exactly when their rows are equal.
        """
        batch = self._tensor(images)
        mask = self._mask_tensor(batch.shape)
        recorder = DecisionRecorder(batch.shape[0], self.device, record_patterns=True)
        with torch.no_grad(), recorder:
            score = self._score(batch)
        above = score > self.threshold
        if mask is not None:
            above = above & mask
        parts = [p.to(torch.int64) for p in recorder.patterns] + [above.reshape(len(batch), -1)]
        return torch.cat([p.cpu().to(torch.int64) for p in parts], dim=1).numpy()

    def evaluate(
        self, a: np.ndarray, b: np.ndarray, z: np.ndarray, mask: np.ndarray | None = None
    ) -> LinePieces:
        """Selected sets and intervals of constant decisions at points of the line.

        Parameters
        ----------
        a, b
            (H, W) the line x(z) = a + b z in image space, or (K, H, W): one line per point
            (several slices of one volume, each moving along its own line, in one batch).
        z
            (K,) the points.
        mask
            Pixels that may be selected, (H, W) or (K, H, W); default the evaluator's mask.

        Returns
        -------
        LinePieces
            Per point: the selection and the interval [lower, upper] around it.

        Raises
        ------
        InferenceError
            If the model returns non-finite values or an interval misses its point.
        """
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        k = len(z)
        at, bt = self._tensor(a), self._tensor(b)
        if at.dim() == 2:
            at, bt = at.unsqueeze(0), bt.unsqueeze(0)
        if at.shape != bt.shape or at.dim() != 3 or at.shape[0] not in (1, k):
            raise ConfigError(
                f'"a" and "b" must be (H, W) or (K, H, W) with K = {k} points, got '
                f"{tuple(np.shape(a))} and {tuple(np.shape(b))}."
            )
        mask = self._mask_tensor((k, *at.shape[1:]), mask)
        zt = self._tensor(z).view(k, 1, 1)
        primal = at + bt * zt
        tangent = bt.expand(k, -1, -1).contiguous()
        module_path, remove_hooks = named_module_tracker(self.score)
        recorder = DecisionRecorder(k, self.device, module_path=module_path)
        try:
            with torch.no_grad(), fwAD.dual_level():
                dual = fwAD.make_dual(primal, tangent)
                try:
                    with recorder:
                        out = self._score(dual)
                except TypeError:
                    recorder.raise_refusal()
                    raise
                recorder.raise_refusal()
                value, slope = fwAD.unpack_dual(out)
                if slope is None:
                    slope = torch.zeros_like(value)
                q = value - self.threshold
                if mask is not None:
                    # pixels that can never be selected constrain nothing: slope 0, q 1
                    q = torch.where(mask, q, torch.ones_like(q))
                    slope = torch.where(mask, slope, torch.zeros_like(slope))
                recorder.bounds.constrain(q, slope)
                selected = value > self.threshold
                if mask is not None:
                    selected &= mask
        finally:
            remove_hooks()
        if not bool(torch.isfinite(value).all()):
            raise InferenceError(
                "the score module returned NaN or infinite values on the line; check the model "
                "and the input images for non-finite values."
            )
        lower = z + recorder.lower.cpu().numpy()
        upper = z + recorder.upper.cpu().numpy()
        if np.isnan(lower).any() or np.isnan(upper).any() or (lower > z).any() or (upper < z).any():
            raise InferenceError(
                "an interval of constant decisions does not contain its point; the model may "
                "not be piecewise linear or produced non-finite slopes."
            )
        return LinePieces(
            z=z,
            lower=lower,
            upper=upper,
            selected=selected.cpu().numpy(),
            degenerate=recorder.degenerate.cpu().numpy(),
        )
