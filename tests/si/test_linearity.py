from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsi.errors import NotPiecewiseLinearError
from medsi.si import LineEvaluator, check_piecewise_linear, register_piecewise_linear_module
from medsi.si.linearity import PIECEWISE_LINEAR_MODULES

Z = np.array([0.0, 0.5])


def _line(seed):
    """A seeded line x(z) = a + b z of (8, 8) float64 images."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(8, 8)), rng.normal(size=(8, 8))


@pytest.fixture
def registry():
    """The module registry, restored after the test."""
    saved = set(PIECEWISE_LINEAR_MODULES)
    yield PIECEWISE_LINEAR_MODULES
    PIECEWISE_LINEAR_MODULES.clear()
    PIECEWISE_LINEAR_MODULES.update(saved)


def _randomise_batchnorm(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model


def _full_stack():
    """Conv, BatchNorm (eval), ReLU, MaxPool, LeakyReLU, AvgPool, Linear, Upsample: (B,1,8,8)."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (4, 4, 4)
        nn.Conv2d(4, 4, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2),  # (4, 2, 2)
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.Unflatten(1, (1, 4, 4)),
        nn.Upsample(scale_factor=2, mode="nearest"),  # (1, 8, 8)
    )
    return _randomise_batchnorm(model, 0).eval()


def _monai_score():
    from monai.networks.blocks import Convolution

    block = Convolution(spatial_dims=2, in_channels=1, out_channels=4, act="RELU", norm="BATCH")
    return _randomise_batchnorm(nn.Sequential(block, nn.Conv2d(4, 1, 1)), 1).eval()


# --- check_piecewise_linear: static check of the module tree -----------------------------------


class _Container(nn.Module):
    """A custom container: walked, its leaves checked."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


ACCEPTED = {
    "conv_bn_relu": lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval(),
    "leaky_relu_avg_pool": lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.LeakyReLU(0.2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1)
    ),
    "max_pool_upsample": lambda: nn.Sequential(
        nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="bilinear")
    ),
    "linear_stack": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64), nn.Unflatten(1, (1, 8, 8))
    ),
    "full_stack": _full_stack,
    "nested_containers": lambda: nn.Sequential(
        OrderedDict(body=nn.Sequential(nn.Conv2d(1, 1, 3), nn.Sequential(nn.ReLU())))
    ),
    "custom_container": _Container,
    "relu6_hardtanh_prelu": lambda: nn.Sequential(nn.ReLU6(), nn.Hardtanh(), nn.PReLU()),
    "conv3d_batchnorm3d": lambda: nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2)).eval(),
    "transpose_conv_pad": lambda: nn.Sequential(
        nn.ConvTranspose2d(1, 1, 2, stride=2), nn.ZeroPad2d(1), nn.Identity()
    ),
    "dropout_eval": lambda: nn.Sequential(nn.Conv2d(1, 1, 3), nn.Dropout(0.5)).eval(),
    "dropout_p0_training": lambda: nn.Sequential(nn.Conv2d(1, 1, 3), nn.Dropout(0.0)).train(),
    "max_pool_floor_mode": lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=False),
    "monai_convolution": lambda: (
        pytest.importorskip("monai.networks.blocks")
        .Convolution(spatial_dims=2, in_channels=1, out_channels=4, act="RELU", norm="BATCH")
        .eval()
    ),
}


@pytest.mark.parametrize("build", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_check_piecewise_linear_accepts(build):
    assert check_piecewise_linear(build()) is None


def _in_body(bad, train=False):
    model = nn.Sequential(OrderedDict(body=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), bad)))
    model.eval()
    if train:
        bad.train()
    return model


REFUSED = [
    ("silu", lambda: _in_body(nn.SiLU()), r"module 'body\.1' of type SiLU is not piecewise"),
    ("gelu", lambda: _in_body(nn.GELU()), r"module 'body\.1' of type GELU is not piecewise"),
    ("sigmoid", lambda: _in_body(nn.Sigmoid()), r"module 'body\.1' of type Sigmoid is not"),
    ("tanh", lambda: _in_body(nn.Tanh()), r"module 'body\.1' of type Tanh is not"),
    ("softmax", lambda: _in_body(nn.Softmax(dim=1)), r"module 'body\.1' of type Softmax is"),
    ("group_norm", lambda: _in_body(nn.GroupNorm(2, 4)), r"module 'body\.1' of type GroupNorm"),
    ("layer_norm", lambda: _in_body(nn.LayerNorm([4, 8, 8])), r"module 'body\.1' of type LayerNo"),
    (
        "instance_norm",
        lambda: _in_body(nn.InstanceNorm2d(4)),
        r"module 'body\.1' of type InstanceNorm2d is not",
    ),
    (
        "multihead_attention",
        lambda: _in_body(nn.MultiheadAttention(4, 2)),
        # MultiheadAttention has a child (out_proj), so the walk refuses at the leaf below it.
        r"module 'body\.1(\.out_proj)?' of type "
        r"(MultiheadAttention|NonDynamicallyQuantizableLinear)",
    ),
    (
        "batch_norm_training",
        lambda: _in_body(nn.BatchNorm2d(4), train=True),
        r"module 'body\.1' \(BatchNorm2d\) is in training mode, where it normalises by batch "
        r"statistics that depend on the input; call model\.eval\(\) first\.",
    ),
    (
        "batch_norm_1d_training",
        lambda: _in_body(nn.Sequential(nn.Flatten(2), nn.BatchNorm1d(4)), train=True),
        r"module 'body\.1\.1' \(BatchNorm1d\) is in training mode",
    ),
    (
        "dropout_training",
        lambda: _in_body(nn.Dropout(0.3), train=True),
        r"module 'body\.1' \(Dropout\) drops units at random in training mode; call model\.eval",
    ),
    (
        "dropout2d_training",
        lambda: _in_body(nn.Dropout2d(0.3), train=True),
        r"module 'body\.1' \(Dropout2d\) drops units",
    ),
    (
        "max_pool_ceil_mode",
        lambda: _in_body(nn.MaxPool2d(2, ceil_mode=True)),
        r"module 'body\.1' \(MaxPool2d\) uses ceil_mode=True, which the engine does not "
        r"support; use ceil_mode=False\.",
    ),
    ("max_pool_3d", lambda: _in_body(nn.MaxPool3d(2)), r"module 'body\.1' of type MaxPool3d"),
    ("elu", lambda: _in_body(nn.ELU()), r"module 'body\.1' of type ELU"),
    ("root_leaf", lambda: nn.Sigmoid(), r"module 'Sigmoid' of type Sigmoid is not piecewise"),
    (
        "monai_convolution_training",
        lambda: _monai_score().train(),
        r"module '0\.adn\.N' \(BatchNorm2d\) is in training mode",
    ),
    (
        "monai_convolution_gelu_instance_norm",
        lambda: (
            pytest.importorskip("monai.networks.blocks")
            .Convolution(spatial_dims=2, in_channels=1, out_channels=4, act="GELU", norm="INSTANCE")
            .eval()
        ),
        r"module 'adn\.N' of type InstanceNorm2d",
    ),
]


@pytest.mark.parametrize("build, match", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_check_piecewise_linear_refuses(build, match):
    with pytest.raises(NotPiecewiseLinearError, match=match):
        check_piecewise_linear(build())


def test_refusal_message_says_what_to_do():
    with pytest.raises(NotPiecewiseLinearError, match=r"register_piecewise_linear_module"):
        check_piecewise_linear(_in_body(nn.SiLU()))


def test_not_piecewise_linear_error_is_a_type_error():
    with pytest.raises(TypeError):
        check_piecewise_linear(nn.Tanh())


@pytest.mark.parametrize(
    "value, match",
    [
        (lambda x: x, r"expected a torch\.nn\.Module, got function"),
        (nn.ReLU, r"expected a torch\.nn\.Module, got type"),
        (None, r"expected a torch\.nn\.Module, got NoneType"),
    ],
    ids=["function", "module_class", "none"],
)
def test_check_piecewise_linear_refuses_non_modules(value, match):
    with pytest.raises(TypeError, match=match):
        check_piecewise_linear(value)


def test_line_evaluator_runs_the_check():
    with pytest.raises(NotPiecewiseLinearError, match=r"module 'body\.1' of type SiLU"):
        LineEvaluator(_in_body(nn.SiLU()), 0.5)


# --- register_piecewise_linear_module ----------------------------------------------------------


class _Double(nn.Module):
    """A parameter-free leaf: x -> 2 x."""

    def forward(self, x):
        return 2.0 * x


class _SigmoidLeaf(nn.Module):
    """A leaf whose forward is not piecewise linear (a wrong registration)."""

    def forward(self, x):
        return torch.sigmoid(x)


def test_register_makes_a_custom_leaf_accepted(registry):
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), _Double())
    with pytest.raises(NotPiecewiseLinearError, match=r"module '1' of type _Double"):
        check_piecewise_linear(model)
    assert register_piecewise_linear_module(_Double) is _Double
    assert _Double in registry
    check_piecewise_linear(model)


def test_register_as_class_decorator(registry):
    @register_piecewise_linear_module
    class Halve(nn.Module):
        def forward(self, x):
            return x / 2

    assert isinstance(Halve, type) and Halve in registry
    check_piecewise_linear(nn.Sequential(Halve()))


def test_registration_is_by_exact_type(registry):
    class MyReLU(nn.ReLU):
        pass

    with pytest.raises(NotPiecewiseLinearError, match=r"module 'MyReLU' of type MyReLU"):
        check_piecewise_linear(MyReLU())
    register_piecewise_linear_module(MyReLU)
    check_piecewise_linear(MyReLU())


@pytest.mark.parametrize(
    "value, match",
    [
        (nn.ReLU(), r"expected a torch\.nn\.Module subclass, got ReLU\(\)"),
        (int, r"expected a torch\.nn\.Module subclass, got <class 'int'>"),
        ("ReLU", r"expected a torch\.nn\.Module subclass, got 'ReLU'"),
        (None, r"expected a torch\.nn\.Module subclass, got None"),
    ],
    ids=["instance", "other_class", "string", "none"],
)
def test_register_refuses_non_modules(registry, value, match):
    before = set(registry)
    with pytest.raises(TypeError, match=match):
        register_piecewise_linear_module(value)
    assert registry == before


def test_registered_leaf_is_still_checked_at_run_time(registry):
    register_piecewise_linear_module(_SigmoidLeaf)
    torch.manual_seed(0)
    evaluator = LineEvaluator(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), _SigmoidLeaf()), 0.5)
    a, b = _line(0)
    with pytest.raises(NotPiecewiseLinearError, match=r"operation 'sigmoid' in module '1'"):
        evaluator.evaluate(a, b, Z)


# --- the runtime recorder: refusals ------------------------------------------------------------


class _Head(nn.Module):
    """A fixed 3x3 convolution followed by ``fn`` (``fn`` runs in this module's forward)."""

    def __init__(self, fn):
        super().__init__()
        self.lin = nn.Conv2d(1, 1, 3, padding=1)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x))


class _Score(nn.Module):
    """A wrapper, so that the operation runs in the submodule named ``head``."""

    def __init__(self, fn):
        super().__init__()
        self.head = _Head(fn)

    def forward(self, x):
        return self.head(x)


class _RootScore(nn.Module):
    """The operation runs in the root's own forward, after its child has returned."""

    def __init__(self, fn):
        super().__init__()
        self.lin = nn.Conv2d(1, 1, 3, padding=1)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x))


NON_LINEAR = "is not linear or piecewise linear in the input"
RUNTIME_REFUSED = [
    ("sigmoid", torch.sigmoid, rf"operation 'sigmoid' in module 'head' {NON_LINEAR}"),
    ("tanh", torch.tanh, rf"operation 'tanh' in module 'head' {NON_LINEAR}"),
    ("softmax", lambda x: F.softmax(x, dim=-1), r"operation 'softmax' in module 'head'"),
    ("exp", torch.exp, rf"operation 'exp' in module 'head' {NON_LINEAR}"),
    (
        "layer_norm",
        lambda x: F.layer_norm(x, x.shape[-2:]),
        rf"operation 'layer_norm' in module 'head' {NON_LINEAR}",
    ),
    (
        "square_operator",
        lambda x: x * x,
        r"operation '(__mul__|mul)' in module 'head' multiplies two quantities that both depend "
        r"on the input",
    ),
    (
        "square_function",
        lambda x: torch.mul(x, x),
        r"operation 'mul' in module 'head' multiplies two quantities that both depend",
    ),
    (
        "ratio_operator",
        lambda x: x / x,
        r"operation '(__truediv__|div)' in module 'head' divides by a quantity that depends on "
        r"the input",
    ),
    (
        "ratio_function",
        lambda x: torch.div(x, x),
        r"operation 'div' in module 'head' divides by a quantity that depends on the input",
    ),
    ("step_operator", lambda x: (x > 0).float(), r"operation '(__gt__|gt)' in module 'head'"),
    ("step_function", lambda x: torch.gt(x, 0).double(), r"operation 'gt' in module 'head'"),
    # A refused comparison must not fall back to Python's identity comparison (a bool).
    ("not_equal_operator", lambda x: x * (x != 0), r"operation '(__ne__|ne)' in module 'head'"),
    (
        "batch_norm_training",
        lambda x: F.batch_norm(x, None, None, training=True),
        r"operation 'batch_norm' in module 'head' runs in training mode \(batch statistics\)",
    ),
    (
        "dropout_active",
        lambda x: F.dropout(x, 0.5),
        r"operation 'dropout' in module 'head' is active \(training mode\)",
    ),
    (
        "conv_weight_from_input",
        lambda x: F.conv2d(x, x[:1, :, :3, :3], padding=1),
        r"operation 'conv2d' in module 'head' has a weight that depends on the input",
    ),
    (
        "max_pool_ceil_mode",
        lambda x: F.interpolate(F.max_pool2d(x, 3, stride=3, ceil_mode=True), size=(8, 8)),
        r"operation 'max_pool2d' in module 'head' uses ceil_mode=True",
    ),
]


@pytest.mark.parametrize(
    "fn, match", [c[1:] for c in RUNTIME_REFUSED], ids=[c[0] for c in RUNTIME_REFUSED]
)
def test_recorder_refuses_non_linear_operations(fn, match):
    torch.manual_seed(0)
    evaluator = LineEvaluator(_Score(fn), 0.1)
    a, b = _line(0)
    with pytest.raises(NotPiecewiseLinearError, match=match):
        evaluator.evaluate(a, b, Z)


def test_recorder_names_the_root_module():
    torch.manual_seed(0)
    evaluator = LineEvaluator(_RootScore(torch.sigmoid), 0.1)
    a, b = _line(0)
    match = r"operation 'sigmoid' in module '_RootScore'"
    with pytest.raises(NotPiecewiseLinearError, match=match):
        evaluator.evaluate(a, b, Z)


def test_refusal_leaves_no_hooks_behind():
    torch.manual_seed(0)
    model = _Score(torch.sigmoid)
    evaluator = LineEvaluator(model, 0.1)
    a, b = _line(0)
    with pytest.raises(NotPiecewiseLinearError):
        evaluator.evaluate(a, b, Z)
    for m in evaluator.score.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


# --- the runtime recorder: exact intervals -----------------------------------------------------


def _assert_intervals_exact(evaluator, a, b, pieces, n_inside=50):
    """Decisions are constant inside each interval and change just outside each finite end."""
    assert np.isfinite(pieces.lower).any() or np.isfinite(pieces.upper).any()
    for k, zk in enumerate(pieces.z):
        lo, hi = pieces.lower[k], pieces.upper[k]
        assert lo <= zk <= hi and lo < hi
        assert not pieces.degenerate[k]
        np.testing.assert_array_equal(pieces.selected[k], evaluator.select(a + b * zk))
        ref = evaluator.patterns((a + b * zk)[None])[0]
        reach = max(1.0, 10 * max(abs(e - zk) for e in (lo, hi) if np.isfinite(e)))
        span_lo = lo if np.isfinite(lo) else zk - reach
        span_hi = hi if np.isfinite(hi) else zk + reach
        width = span_hi - span_lo
        points = np.linspace(span_lo, span_hi, n_inside + 2)[1:-1]
        points = points[(points - lo > 1e-9 * width) & (hi - points > 1e-9 * width)]
        assert len(points) >= n_inside
        rows = evaluator.patterns(a[None] + b[None] * points[:, None, None])
        changed = ~(rows == ref).all(1)
        assert not changed.any(), f"point {k}: decisions change inside at {points[changed][:3]}"
        for end, side in ((lo, -1.0), (hi, 1.0)):
            if np.isfinite(end):
                outside = end + side * 1e-7 * width
                row = evaluator.patterns((a + b * outside)[None])[0]
                assert (row != ref).any(), f"point {k}: nothing changes just outside {end}"


def _threshold(model, a, b):
    """Halfway between two distinct score values off the tested points, so selection varies."""
    scores = np.unique(LineEvaluator(model, 0.0).score_map(a + 0.25 * b))
    i = int(0.7 * len(scores))
    return float(scores[i - 1] + scores[i]) / 2


class _Fn(nn.Module):
    """A fixed 3x3 convolution, then ``fn(self, y)``; holds two constant maps ``c`` and ``d``."""

    def __init__(self, fn, scale=1.0):
        super().__init__()
        self.lin = nn.Conv2d(1, 1, 3, padding=1)
        self.fn = fn
        self.scale = scale
        self.register_buffer("c", 0.3 * torch.randn(1, 1, 8, 8))
        self.register_buffer("d", 0.3 + 0.3 * torch.rand(1, 1, 8, 8))

    def forward(self, x):
        return self.fn(self, self.scale * self.lin(x))


def _prelu():
    return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.PReLU(init=-0.3))


EXACT = {
    "relu_of_conv": lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU()),
    "relu_functional": lambda: _Fn(lambda s, y: F.relu(y)),
    "relu_inplace": lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(inplace=True)),
    "two_relu_layers": lambda: nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 1, 3, padding=1), nn.ReLU()
    ),
    "abs": lambda: _Fn(lambda s, y: torch.abs(y)),
    "abs_method": lambda: _Fn(lambda s, y: y.abs() - 0.2),
    "clamp_min_max": lambda: _Fn(lambda s, y: torch.clamp(y, -0.3, 0.4)),
    "clamp_keywords": lambda: _Fn(lambda s, y: y.clamp(min=-0.2, max=0.5)),
    "clamp_min_only": lambda: _Fn(lambda s, y: torch.clamp(y, min=-0.1)),
    "clamp_tensor_bounds": lambda: _Fn(lambda s, y: torch.clamp(y, min=s.c, max=s.c + s.d)),
    "hardtanh": lambda: _Fn(lambda s, y: F.hardtanh(y, -0.5, 0.3)),
    "hardtanh_module": lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Hardtanh(-0.2, 0.4)),
    "relu6": lambda: _Fn(lambda s, y: F.relu6(y), scale=8.0),
    "relu6_module": lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU6()),
    "maximum_const": lambda: _Fn(lambda s, y: torch.maximum(y, s.c)),
    "minimum_const_first": lambda: _Fn(lambda s, y: torch.minimum(s.c, y)),
    "max_pool2d_padding_stride": lambda: _Fn(
        lambda s, y: F.interpolate(
            F.max_pool2d(y, 3, stride=2, padding=1), scale_factor=2, mode="nearest"
        )
    ),
    "max_pool2d_positional": lambda: _Fn(
        lambda s, y: F.interpolate(F.max_pool2d(y, 3, 2, 1), size=(8, 8))
    ),
    "max_pool2d_dilation": lambda: _Fn(
        lambda s, y: F.max_pool2d(F.pad(y, (2, 2, 2, 2)), 3, stride=1, padding=0, dilation=2)
    ),
    "max_pool2d_module": lambda: nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2), nn.Upsample(scale_factor=2)
    ),
    "max_pool1d": lambda: _Fn(lambda s, y: F.max_pool1d(y.flatten(2), 3, 1, 1).view_as(y)),
    "leaky_relu": lambda: _Fn(lambda s, y: F.leaky_relu(y, 0.1)),
    "leaky_relu_negative_slope": lambda: _Fn(lambda s, y: F.leaky_relu(y, -0.5)),
    "prelu": _prelu,
    "full_stack": _full_stack,
    "monai_convolution": _monai_score,
}


@pytest.mark.parametrize("build", list(EXACT.values()), ids=list(EXACT))
def test_intervals_are_exact(build):
    torch.manual_seed(0)
    model = build()
    a, b = _line(1)
    threshold = _threshold(model, a, b)
    evaluator = LineEvaluator(model, threshold)
    pieces = evaluator.evaluate(a, b, Z)
    _assert_intervals_exact(evaluator, a, b, pieces)


class _TimeEmbedded(nn.Module):
    """Image path: conv, plus a constant time embedding, times constant softmax weights, ReLU.

    The embedding uses sin/cos/exp/softmax, all of tensors that do not depend on the input.
    """

    def __init__(self):
        super().__init__()
        self.lin = nn.Conv2d(1, 2, 3, padding=1)
        self.register_buffer("t", torch.tensor(0.37))
        self.logits = nn.Parameter(torch.randn(2))

    def forward(self, x):
        freqs = torch.exp(-torch.arange(8, dtype=x.dtype) / 4)
        emb = torch.sin(self.t * freqs)[:, None] * torch.cos(self.t * freqs)[None, :]
        weights = torch.softmax(self.logits, dim=0).view(1, 2, 1, 1)
        y = F.relu(self.lin(x) + torch.tanh(emb))
        y = F.dropout(y, 0.5, training=False)
        return (y * weights).sum(1, keepdim=True)


def test_operations_on_constants_are_accepted():
    torch.manual_seed(0)
    model = _TimeEmbedded()
    a, b = _line(2)
    threshold = _threshold(model, a, b)
    evaluator = LineEvaluator(model, threshold)
    pieces = evaluator.evaluate(a, b, Z)
    _assert_intervals_exact(evaluator, a, b, pieces)


def test_batch_norm_in_eval_mode_inside_forward_is_accepted():
    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            mean, var = torch.tensor([0.1], dtype=x.dtype), torch.tensor([2.0], dtype=x.dtype)
            return F.relu(F.batch_norm(self.lin(x), mean, var, training=False))

    torch.manual_seed(0)
    evaluator = LineEvaluator(Normed(), 0.05)
    a, b = _line(3)
    _assert_intervals_exact(evaluator, a, b, evaluator.evaluate(a, b, Z))


# --- the threshold comparison bounds the interval ----------------------------------------------


def _identity_line(case):
    a, b = _line(4)
    if case == "flat_pixels":
        b[::2, ::3] = 0.0  # these never cross
    elif case == "all_crossings_below":  # every crossing at z < 0: the upper end is infinite
        b = np.abs(b) + 0.5
        a = 0.3 + np.abs(a) + 0.1
    return a, b


@pytest.mark.parametrize("case", ["random", "flat_pixels", "all_crossings_below"])
def test_threshold_crossing_bounds_the_interval(case):
    threshold = 0.3
    a, b = _identity_line(case)
    evaluator = LineEvaluator(nn.Identity(), threshold)
    pieces = evaluator.evaluate(a, b, Z)
    with np.errstate(divide="ignore"):
        crossing = np.where(b != 0, (threshold - a) / np.where(b != 0, b, 1.0), np.nan)
    crossing = crossing[np.isfinite(crossing)]
    for k, zk in enumerate(Z):
        below, above = crossing[crossing < zk], crossing[crossing > zk]
        expected_lower = below.max() if len(below) else -np.inf
        expected_upper = above.min() if len(above) else np.inf
        np.testing.assert_allclose(pieces.lower[k], expected_lower, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(pieces.upper[k], expected_upper, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(pieces.selected[k], a + b * zk > threshold)
    assert not pieces.degenerate.any()
    if case == "all_crossings_below":
        assert np.isinf(pieces.upper).all()
    _assert_intervals_exact(evaluator, a, b, pieces)


def test_constant_line_has_an_unbounded_interval():
    a, _ = _line(5)
    pieces = LineEvaluator(nn.Identity(), 0.3).evaluate(a, np.zeros((8, 8)), Z)
    assert np.isneginf(pieces.lower).all() and np.isposinf(pieces.upper).all()


def test_pixel_on_the_threshold_is_degenerate():
    a, b = _line(6)
    a[2, 3], b[2, 3] = 0.3, 1.0  # exactly on the threshold at z = 0
    pieces = LineEvaluator(nn.Identity(), 0.3).evaluate(a, b, Z)
    assert pieces.degenerate.tolist() == [True, False]
