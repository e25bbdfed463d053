import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medsi.errors import ConfigError, InferenceError
from medsi.selftest import interval_exactness
from medsi.si import LineEvaluator


class RandomPLScore(nn.Module):
    """conv + ReLU + avg/max pool + bilinear upsample + abs + 3x3 average filter."""

    def __init__(self, seed: int, pool: str):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv3 = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x):
        h = self.up(F.relu(self.conv2(self.pool(F.relu(self.conv1(x))))))
        residual = torch.abs(x - self.conv3(h))
        return F.avg_pool2d(residual, 3, stride=1, padding=1, count_include_pad=False)


def _check_lines(evaluator, rng, n_lines, size=8, inside=50):
    checked = 0
    for _ in range(n_lines):
        a, b = rng.normal(size=(size, size)), rng.normal(size=(size, size))
        pieces = evaluator.evaluate(a, b, np.sort(rng.uniform(-3, 3, size=6)))
        for zk, lo, hi in zip(pieces.z, pieces.lower, pieces.upper, strict=True):
            assert lo <= zk <= hi
            ref = evaluator.patterns((a + b * zk)[None])[0]
            lo_f = lo if np.isfinite(lo) else zk - 5
            hi_f = hi if np.isfinite(hi) else zk + 5
            width = hi_f - lo_f
            z_in = lo_f + width * rng.uniform(1e-6, 1 - 1e-6, size=inside)
            pats = evaluator.patterns(a[None] + b[None] * z_in[:, None, None])
            assert (pats == ref[None]).all(), "a decision changed inside its interval"
            sel = evaluator.select(a[None] + b[None] * z_in[:, None, None])
            assert (sel == evaluator.select(a + b * zk)[None]).all()
            for end in (lo, hi):
                if np.isfinite(end):
                    out = end + np.sign(end - zk) * 1e-7 * width
                    assert (evaluator.patterns((a + b * out)[None])[0] != ref).any(), (
                        "no decision changed just outside an interval end"
                    )
            checked += 1
    return checked


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["net0", "net1", "net2"])
@pytest.mark.parametrize("pool", ["max", "avg"], ids=["maxpool", "avgpool"])
def test_intervals_are_exact_for_random_pl_networks(seed, pool):
    evaluator = LineEvaluator(RandomPLScore(seed, pool).double().eval(), threshold=1.0)
    assert _check_lines(evaluator, np.random.default_rng(seed), n_lines=3) == 18


def test_intervals_are_exact_for_the_selftest_reconstruction():
    checked, inside_bad, outside_same = interval_exactness(n_lines=4, seed=5)
    assert checked == 32
    assert inside_bad == 0
    assert outside_same == 0


def test_float32_module_is_evaluated_in_float64_without_changing_it():
    module = RandomPLScore(0, "max").eval()
    evaluator = LineEvaluator(module, threshold=1.0)
    assert next(module.parameters()).dtype == torch.float32
    assert next(evaluator.score.parameters()).dtype == torch.float64


def test_batchnorm_is_folded_into_the_same_function():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net = net.double().eval()
    evaluator = LineEvaluator(net, threshold=0.0)
    x = np.random.default_rng(0).normal(size=(3, 8, 8))
    with torch.no_grad():
        expected = net(torch.as_tensor(x).unsqueeze(1))[:, 0].numpy()
    np.testing.assert_allclose(evaluator.score_map(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 5, 3, padding=1),
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.Conv2d(4, 2, (3, 5), padding=(1, 2)),
        nn.Conv2d(3, 3, 1),
        nn.Conv2d(2, 3, 3),  # no padding: the output shrinks
    ],
    ids=["3x3", "no-bias", "3x5", "1x1", "valid"],
)
@pytest.mark.parametrize("batch", [1, 2, 9])
def test_shifted_convolution_is_the_same_linear_map(conv, batch, monkeypatch):
    from medsi.si.line import ShiftedConv2d

    monkeypatch.setattr(ShiftedConv2d, "min_work", 0)  # these calls are small
    torch.manual_seed(1)
    conv = conv.double()
    assert ShiftedConv2d.fits(conv)
    shifted = ShiftedConv2d(conv)
    x = torch.randn(batch, conv.in_channels, 10, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(x)
        got = shifted(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for other in (
        nn.Conv2d(2, 2, 3, stride=2),
        nn.Conv2d(2, 2, 3, dilation=2),
        nn.Conv2d(2, 2, 3, groups=2),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(2, 2, 3, padding="same"),
    ):
        assert not ShiftedConv2d.fits(other)


def test_the_cpu_evaluator_gives_the_pieces_of_plain_convolutions(monkeypatch):
    from medsi.si.line import ShiftedConv2d

    monkeypatch.setattr(ShiftedConv2d, "min_work", 0)
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)
    ).double()
    evaluator = LineEvaluator(net, threshold=0.1)
    assert sum(isinstance(m, ShiftedConv2d) for m in evaluator.score.modules()) == 2
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 8, 8)), rng.normal(size=(6, 8, 8))
    z = rng.normal(size=6)
    shifted = evaluator.evaluate(a, b, z)
    plain = LineEvaluator(net, threshold=0.1)
    plain.score = copy.deepcopy(net)  # torch's own convolutions
    expected = plain.evaluate(a, b, z)
    assert (shifted.selected == expected.selected).all()
    np.testing.assert_allclose(shifted.lower, expected.lower, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(shifted.upper, expected.upper, rtol=1e-9, atol=1e-12)


def test_mask_restricts_selection_and_threshold_decisions():
    evaluator = LineEvaluator(nn.Identity(), threshold=0.5, mask=np.eye(4, dtype=bool))
    a = np.full((4, 4), 1.0)
    b = np.ones((4, 4))
    pieces = evaluator.evaluate(a, b, np.array([0.0]))
    assert pieces.selected[0].sum() == 4
    # only the masked pixels' crossings at z = -0.5 bound the interval
    assert pieces.lower[0] == pytest.approx(-0.5)
    assert pieces.upper[0] == np.inf


def test_bad_inputs():
    with pytest.raises(ConfigError, match='"threshold" must be a finite number'):
        LineEvaluator(nn.Identity(), threshold=float("nan"))
    evaluator = LineEvaluator(nn.Identity(), threshold=0.5, mask=np.ones((3, 3), bool))
    with pytest.raises(ConfigError, match='"mask" has shape'):
        evaluator.evaluate(np.zeros((4, 4)), np.ones((4, 4)), np.array([0.0]))
    shrinks = nn.AvgPool2d(2)
    with pytest.raises(InferenceError, match="must return"):
        LineEvaluator(shrinks, 0.5).evaluate(np.zeros((4, 4)), np.ones((4, 4)), np.zeros(1))
