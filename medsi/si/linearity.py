"""Which torch operations the engine accepts, and the recorder of piecewise decisions.

The engine evaluates a model along a line x(z) = a + b z with forward-mode AD
(DESIGN.md section 2): every tensor that depends on z carries a tangent. An operation
applied to such a tensor must be one of

* a *linear* operation (conv, linear, pooling by averaging, interpolation, addition,
  concatenation, reshaping, BatchNorm in eval mode, ...): nothing to record;
* a *piecewise* operation (ReLU, LeakyReLU, PReLU, abs, clamp, hardtanh, max pooling,
  elementwise max/min): its decision (a sign, or an argmax) stays the same while a
  linear function of z keeps its sign, which bounds the interval around each point.

Anything else (sigmoid, softmax, normalisation over the data, a comparison that
returns a mask, ...) is refused with :class:`~medsi.errors.NotPiecewiseLinearError`,
naming the operation and the module that ran it. Operations on tensors that do not
depend on z (a time embedding, the fixed DDIM noise) are always allowed.

Why a ``TorchFunctionMode`` rather than per-module hooks: functional calls inside a
``forward`` (``torch.abs`` in a score, ``F.relu`` in a block) are decisions as well, and
the mode sees every call at the level of the torch API, above autograd, with the dual
tensors intact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from medsi.errors import InferenceError, NotPiecewiseLinearError

__all__ = [
    "check_piecewise_linear",
    "register_piecewise_linear_module",
    "DecisionRecorder",
    "PIECEWISE_LINEAR_MODULES",
]

# Leaf module types whose forward is piecewise linear in the input (containers are walked).
PIECEWISE_LINEAR_MODULES: set[type[nn.Module]] = {
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.Upsample,
    nn.UpsamplingBilinear2d,
    nn.UpsamplingNearest2d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
}

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def register_piecewise_linear_module(module_type: type[nn.Module]) -> type[nn.Module]:
    """Declare a leaf module type piecewise linear, so that the checker accepts it.

    The runtime recorder still checks every torch operation the module performs, so a
    wrong registration is caught when the engine runs it.

    Parameters
    ----------
    module_type
        A subclass of ``torch.nn.Module``.

    Returns
    -------
    type[torch.nn.Module]
        ``module_type``, so this can be used as a class decorator.

    Raises
    ------
    TypeError
        If ``module_type`` is not a subclass of ``torch.nn.Module``.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"expected a torch.nn.Module subclass, got {module_type!r}")
    PIECEWISE_LINEAR_MODULES.add(module_type)
    return module_type


def check_piecewise_linear(module: nn.Module) -> None:
    """Refuse a model that is not piecewise linear in its input, naming the module.

    Walks every submodule: leaf modules must be of a registered piecewise-linear type;
    BatchNorm must be in eval mode (in training mode it normalises by batch statistics,
    which depend on the input), dropout must be off, max pooling must not use
    ``ceil_mode``. Functional calls inside ``forward`` are checked when the engine runs.

    Parameters
    ----------
    module
        The model, e.g. the anomaly score of a diffusion reconstruction.

    Raises
    ------
    NotPiecewiseLinearError
        If some submodule is not piecewise linear; the message names it.
    TypeError
        If ``module`` is not a ``torch.nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    for name, sub in module.named_modules():
        label = name or type(module).__name__
        if isinstance(sub, _BATCHNORMS) and sub.training:
            raise NotPiecewiseLinearError(
                f"module {label!r} ({type(sub).__name__}) is in training mode, where it normalises "
                "by batch statistics that depend on the input; call model.eval() first."
            )
        if isinstance(sub, _DROPOUTS) and sub.training and sub.p > 0:
            raise NotPiecewiseLinearError(
                f"module {label!r} ({type(sub).__name__}) drops units at random in training mode; "
                "call model.eval() first."
            )
        if isinstance(sub, nn.MaxPool1d | nn.MaxPool2d) and sub.ceil_mode:
            raise NotPiecewiseLinearError(
                f"module {label!r} ({type(sub).__name__}) uses ceil_mode=True, which the engine "
                "does not support; use ceil_mode=False."
            )
        if next(sub.children(), None) is not None:
            continue
        if not any(type(sub) is t for t in PIECEWISE_LINEAR_MODULES):
            raise NotPiecewiseLinearError(
                f"module {label!r} of type {type(sub).__name__} is not piecewise linear in its "
                "input (or not known to be); build the model from conv, linear, BatchNorm (eval), "
                "ReLU/LeakyReLU/PReLU/ReLU6/Hardtanh, average or max pooling and interpolation, "
                "or register a truly piecewise-linear type with "
                "medsi.si.register_piecewise_linear_module."
            )


def _tangent(t) -> torch.Tensor | None:
    if isinstance(t, torch.Tensor):
        return fwAD.unpack_dual(t).tangent
    return None


def _primal(t):
    if isinstance(t, torch.Tensor):
        return fwAD.unpack_dual(t).primal
    return t


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


# Operations that are linear (or affine) in their z-dependent arguments as long as the
# listed argument roles do not depend on z. Names are those torch reports to the mode.
_LINEAR_ANY = frozenset(
    """
    add __add__ __radd__ add_ __iadd__ sub __sub__ __rsub__ sub_ __isub__ rsub neg __neg__
    negative positive __pos__ cat concat concatenate stack hstack vstack dstack
    reshape view view_as flatten unflatten permute transpose t contiguous squeeze unsqueeze
    expand expand_as repeat tile narrow __getitem__ select index_select chunk split
    tensor_split unbind clone flip fliplr flipud roll movedim moveaxis swapaxes swapdims
    sum mean cumsum nansum trace diagonal diag
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    interpolate upsample upsample_bilinear upsample_nearest pad constant_pad_nd
    pixel_shuffle pixel_unshuffle unfold fold identity __setitem__ copy_ masked_fill
    where to type_as double float clone real
    conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear
    zeros_like ones_like empty_like full_like
    dim size numel __get__ __len__ is_floating_point is_complex is_contiguous dtype device
    __format__ __repr__ __hash__ __bool__ requires_grad_ data_ptr element_size stride
    storage_offset get_device is_nonzero
    """.split()
)
# Weight/bias roles that must not depend on z.
_LINEAR_CONSTANT_ROLES: dict[str, tuple[tuple[int, str], ...]] = {
    "conv1d": ((1, "weight"),),
    "conv2d": ((1, "weight"),),
    "conv3d": ((1, "weight"),),
    "conv_transpose1d": ((1, "weight"),),
    "conv_transpose2d": ((1, "weight"),),
    "conv_transpose3d": ((1, "weight"),),
    "linear": ((1, "weight"),),
    "masked_fill": ((1, "mask"),),
    "where": ((0, "condition"),),
}
# Products: linear only when at most one factor depends on z.
_PRODUCTS = frozenset(
    "mul __mul__ __rmul__ mul_ __imul__ multiply matmul __matmul__ __rmatmul__ mm bmm mv "
    "einsum tensordot outer dot inner addmm addmv baddbmm".split()
)
# Quotients: linear only when the divisor does not depend on z.
_QUOTIENTS = frozenset("div __truediv__ div_ __itruediv__ true_divide divide".split())
_PIECEWISE = frozenset(
    """
    relu relu_ leaky_relu leaky_relu_ prelu relu6 hardtanh hardtanh_ clamp clamp_ clip
    clip_ clamp_min clamp_max abs abs_ absolute max_pool1d max_pool2d
    max_pool1d_with_indices max_pool2d_with_indices maximum minimum fmax fmin
    """.split()
)
# Linear when switched to inference behaviour (eval mode); refused otherwise.
_MODE_DEPENDENT = frozenset(
    "batch_norm dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout".split()
)


@dataclasses.dataclass
class _Bounds:
    """Running bounds of the interval of constant decisions around each of K points."""

    lower: torch.Tensor  # (K,) offsets dz <= 0
    upper: torch.Tensor  # (K,) offsets dz >= 0
    degenerate: torch.Tensor  # (K,) a decision sits exactly on its boundary

    def constrain(self, q: torch.Tensor, q_dot: torch.Tensor | None) -> None:
        """Keep the sign of ``q + q_dot * dz`` on every unit; ``q`` is (K, ...)."""
        if q_dot is None:
            return
        q = q.reshape(q.shape[0], -1)
        q_dot = q_dot.reshape(q.shape[0], -1)
        if q.shape[1] == 0:
            return
        # A unit reaches its boundary at dz = -q / q_dot. Work with the rate s = -q_dot / q =
        # 1 / dz: the nearest boundary above is 1 / max(s) and below 1 / min(s), so two
        # reductions replace masked minima (this runs on every activation of the model).
        rate = torch.nan_to_num(-q_dot / q, nan=0.0, posinf=math.inf, neginf=-math.inf)
        low, high = torch.aminmax(rate, dim=1)
        self.upper = torch.minimum(self.upper, torch.where(high > 0, 1.0 / high, math.inf))
        self.lower = torch.maximum(self.lower, torch.where(low < 0, 1.0 / low, -math.inf))
        # q == 0 while q_dot != 0: the point sits exactly on a boundary
        self.degenerate |= torch.isinf(high) | torch.isinf(low)


class DecisionRecorder(TorchFunctionMode):
    """Check every torch call along the line and record the piecewise decisions.

    Used as a context manager around a forward pass whose input is a dual tensor of
    batch size K (one line point per batch element). After the pass, ``lower`` and
    ``upper`` hold, per point, the offsets from the point to the nearest change of any
    piecewise decision, and ``degenerate`` flags points that lie exactly on a boundary.
    With ``record_patterns=True`` (no dual tensors needed) the decisions themselves are
    kept in ``patterns``, one (K, m) tensor per operation, for tests and diagnostics.

    Parameters
    ----------
    batch_size
        K, the number of line points in the batch.
    device
        Where the bounds live.
    record_patterns
        Also keep the decisions.
    module_path
        A callable returning the dotted name of the module running now, for messages.
    """

    def __init__(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        record_patterns: bool = False,
        module_path: Callable[[], str] | None = None,
    ):
        super().__init__()
        self.bounds = _Bounds(
            lower=torch.full((batch_size,), -math.inf, dtype=torch.float64, device=device),
            upper=torch.full((batch_size,), math.inf, dtype=torch.float64, device=device),
            degenerate=torch.zeros(batch_size, dtype=torch.bool, device=device),
        )
        self.batch_size = batch_size
        self.record_patterns = record_patterns
        self.patterns: list[torch.Tensor] = []
        self._module_path = module_path or (lambda: "")
        # torch's operator wrappers (x * y, x > 0, ...) turn a TypeError into NotImplemented,
        # which would hide the refusal; the evaluator re-raises this one after the pass.
        self.refusal: NotPiecewiseLinearError | None = None

    def raise_refusal(self) -> None:
        """Raise the first refusal seen during the pass, if any (see ``refusal``)."""
        if self.refusal is not None:
            raise self.refusal

    @property
    def lower(self) -> torch.Tensor:
        """(K,) offsets to the nearest decision change below each point (<= 0)."""
        return self.bounds.lower

    @property
    def upper(self) -> torch.Tensor:
        """(K,) offsets to the nearest decision change above each point (>= 0)."""
        return self.bounds.upper

    @property
    def degenerate(self) -> torch.Tensor:
        """(K,) True where some decision lies exactly on its boundary."""
        return self.bounds.degenerate

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        dual = _dual_tensors(args, kwargs)
        if not dual:
            if self.record_patterns and name in _PIECEWISE:
                self._record_piecewise(name, args, kwargs)
            return func(*args, **kwargs)
        if name in _PIECEWISE:
            self._record_piecewise(name, args, kwargs)
        elif name in _MODE_DEPENDENT:
            self._check_inference_mode(name, args, kwargs)
        elif name in _PRODUCTS:
            if len(dual) > 1:
                self._refuse(name, "multiplies two quantities that both depend on the input")
        elif name in _QUOTIENTS:
            if _tangent(_arg(args, kwargs, 1, "other")) is not None:
                self._refuse(name, "divides by a quantity that depends on the input")
        elif name in _LINEAR_ANY:
            for index, role in _LINEAR_CONSTANT_ROLES.get(name, ()):
                if _tangent(_arg(args, kwargs, index, role)) is not None:
                    self._refuse(name, f"has a {role} that depends on the input")
            if name == "interpolate":
                mode = _arg(args, kwargs, 2, "mode", "nearest")
                if mode not in (
                    "nearest",
                    "nearest-exact",
                    "linear",
                    "bilinear",
                    "bicubic",
                    "trilinear",
                    "area",
                ):
                    self._refuse(name, f"uses mode {mode!r}")
        else:
            self._refuse(name, "is not linear or piecewise linear in the input")
        return func(*args, **kwargs)

    def _refuse(self, name: str, why: str) -> None:
        where = self._module_path()
        place = f" in module {where!r}" if where else ""
        error = NotPiecewiseLinearError(
            f"operation {name!r}{place} {why}, so the engine cannot follow it along the line; "
            "use only conv/linear/pooling/interpolation/ReLU-type operations on the image path."
        )
        if self.refusal is None:
            self.refusal = error
        raise error

    def _constrain(self, q, q_dot, pattern: torch.Tensor | None = None) -> None:
        if q.shape[0] != self.batch_size:
            raise InferenceError(
                f"a piecewise operation received a tensor of batch size {q.shape[0]}, expected "
                f"{self.batch_size} (one per line point); keep the batch in dimension 0."
            )
        with torch.no_grad():
            self.bounds.constrain(q, q_dot)
            if self.record_patterns:
                p = (q > 0) if pattern is None else pattern
                self.patterns.append(p.reshape(self.batch_size, -1).cpu())

    def _check_inference_mode(self, name: str, args: tuple, kwargs: dict) -> None:
        if name == "batch_norm":
            if _arg(args, kwargs, 5, "training", False):
                self._refuse(name, "runs in training mode (batch statistics)")
        elif _arg(args, kwargs, 2, "training", True) and _arg(args, kwargs, 1, "p", 0.5) > 0:
            self._refuse(name, "is active (training mode)")

    def _record_piecewise(self, name: str, args: tuple, kwargs: dict) -> None:
        x = _arg(args, kwargs, 0, "input")
        xp, xt = _primal(x), _tangent(x)
        if name in (
            "relu",
            "relu_",
            "leaky_relu",
            "leaky_relu_",
            "prelu",
            "abs",
            "abs_",
            "absolute",
        ):
            self._constrain(xp, xt)
        elif name in (
            "clamp",
            "clamp_",
            "clip",
            "clip_",
            "clamp_min",
            "clamp_max",
            "hardtanh",
            "hardtanh_",
            "relu6",
        ):
            self._record_clamp(name, args, kwargs, xp, xt)
        elif name in ("maximum", "minimum", "fmax", "fmin"):
            other = _arg(args, kwargs, 1, "other")
            op, ot = _primal(other), _tangent(other)
            q = xp - op
            q_dot = _difference(xt, ot, q)
            self._constrain(q.expand(torch.broadcast_shapes(q.shape, xp.shape)), q_dot)
        elif name.startswith("max_pool"):
            self._record_max_pool(name, args, kwargs, xp, xt)
        else:  # pragma: no cover - the name sets above and this dispatch are kept in step
            self._refuse(name, "has no decision rule in the engine")

    def _record_clamp(self, name, args, kwargs, xp, xt) -> None:
        if name == "relu6":
            low, high = 0.0, 6.0
        elif name.startswith("hardtanh"):
            low = _arg(args, kwargs, 1, "min_val", -1.0)
            high = _arg(args, kwargs, 2, "max_val", 1.0)
        elif name == "clamp_min":
            low, high = _arg(args, kwargs, 1, "min"), None
        elif name == "clamp_max":
            low, high = None, _arg(args, kwargs, 1, "max")
        else:
            low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
        for bound, sign in ((low, 1.0), (high, -1.0)):
            if bound is None:
                continue
            q = sign * (xp - _primal(bound))
            q_dot = _difference(xt, _tangent(bound), q)
            self._constrain(q, None if q_dot is None else sign * q_dot)

    def _record_max_pool(self, name, args, kwargs, xp, xt) -> None:
        kernel = _arg(args, kwargs, 1, "kernel_size")
        stride = _arg(args, kwargs, 2, "stride") or kernel
        padding = _arg(args, kwargs, 3, "padding", 0)
        dilation = _arg(args, kwargs, 4, "dilation", 1)
        if _arg(args, kwargs, 5, "ceil_mode", False):
            self._refuse(name, "uses ceil_mode=True")
        one_d = name.startswith("max_pool1d")
        if one_d:  # treat (N, C, L) as (N, C, 1, L)
            xp = xp.unsqueeze(-2)
            xt = None if xt is None else xt.unsqueeze(-2)
            kernel, stride, padding, dilation = (
                (1, _single(v)) for v in (kernel, stride, padding, dilation)
            )
        if xp.dim() != 4:
            raise InferenceError(
                f"max pooling received a {xp.dim()}-D tensor; the engine needs a batch "
                "(one line point per element) in dimension 0."
            )
        windows, tangents = _pool_windows(xp, xt, kernel, stride, padding, dilation)
        best = windows.argmax(dim=2, keepdim=True)
        margin = windows.gather(2, best) - windows
        margin = torch.where(torch.isfinite(windows), margin, math.inf)  # padding never wins
        margin_dot = None
        if tangents is not None:
            margin_dot = tangents.gather(2, best) - tangents
            margin_dot = torch.where(torch.isfinite(windows), margin_dot, 0.0)
        # The argmax stays while every margin stays >= 0; margin == 0 at the argmax itself.
        not_self = torch.ones_like(margin, dtype=torch.bool).scatter_(2, best, False)
        q = torch.where(not_self, margin, math.inf)
        q_dot = None if margin_dot is None else torch.where(not_self, margin_dot, 0.0)
        self._constrain(q, q_dot, pattern=best)


def _dual_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Tensors carrying a tangent among the arguments (a fast path for flat arguments)."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            if fwAD.unpack_dual(value).tangent is not None:
                found.append(value)
        elif isinstance(value, (list, tuple, dict)):
            flat, _ = tree_flatten(value)
            found.extend(t for t in flat if _tangent(t) is not None)
    return found


def _single(v) -> int:
    return v[0] if isinstance(v, (tuple, list)) else v


def _difference(a_dot, b_dot, like: torch.Tensor):
    if a_dot is None and b_dot is None:
        return None
    a_dot = torch.zeros_like(like) if a_dot is None else a_dot
    b_dot = 0.0 if b_dot is None else b_dot
    return (a_dot - b_dot).expand_as(like)


def _pool_windows(xp, xt, kernel, stride, padding, dilation):
    """Windows of a 2-D max pooling as (N, C, kh*kw, oh*ow), padded with -inf (tangent 0)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        _pair(kernel),
        _pair(stride),
        _pair(padding),
        _pair(dilation),
    )
    if ph or pw:
        xp = F.pad(xp, (pw, pw, ph, ph), value=-math.inf)
        xt = None if xt is None else F.pad(xt, (pw, pw, ph, ph), value=0.0)

    def windows(t: torch.Tensor) -> torch.Tensor:
        # Tensor.unfold makes strided views, far cheaper than im2col for pooling.
        w = t.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
        w = w[..., ::dh, ::dw]  # (N, C, oh, ow, kh, kw)
        n, c, oh, ow = w.shape[:4]
        return w.reshape(n, c, oh * ow, kh * kw).transpose(2, 3)

    return windows(xp), None if xt is None else windows(xt)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return int(v), int(v)


def named_module_tracker(module: nn.Module) -> tuple[Callable[[], str], Callable[[], None]]:
    """Hooks that keep the dotted name of the submodule currently running.

    Returns
    -------
    tuple
        ``(current_path, remove)``: a callable giving the innermost running module's
        name, and a callable that removes the hooks.
    """
    stack: list[str] = []
    handles = []
    for name, sub in module.named_modules():
        label = name or type(module).__name__

        def pre(_mod, _inp, label=label):
            stack.append(label)

        def post(_mod, _inp, _out):
            if stack:
                stack.pop()

        handles.append(sub.register_forward_pre_hook(pre))
        handles.append(sub.register_forward_hook(post))

    def remove() -> None:
        for h in handles:
            h.remove()
        stack.clear()

    return (lambda: stack[-1] if stack else ""), remove
