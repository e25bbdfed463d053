import json
import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler
from torch import nn
from torch.autograd import forward_ad as fwad

from medsi.errors import ConfigError
from medsi.model import DDIMReconstruction, ddim_timesteps
from tests.model.conftest import small_unet


def _direct_alphas_cumprod(T=1000, beta_start=1e-4, beta_end=0.02):
    """ab straight from float64 linspace betas (MONAI's index t = the paper's t + 1)."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def _points(seed, shape=(1, 1, 16, 16)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    d = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x, d


# --- schedule ---------------------------------------------------------------------------------


def test_schedule_matches_direct_float64(unet64):
    rec = DDIMReconstruction(unet64)
    direct = _direct_alphas_cumprod()
    assert rec.betas.dtype == rec.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(rec.alphas_cumprod, direct, rtol=1e-7, atol=1e-9)
    assert rec.timesteps == (460, 345, 230, 115, 0)
    expected = [float(direct[t]) for t in rec.timesteps]
    assert rec.alpha_bar == pytest.approx(expected, rel=1e-7)
    assert rec.alpha_bar_next == pytest.approx(expected[1:] + [1.0], rel=1e-7)
    # ab at 0-based 460 is the paper's alpha_bar[461]: 461 factors (1 - beta)
    assert rec.alpha_bar[0] == pytest.approx(0.1147600394, rel=1e-7)
    assert rec.alpha_bar[0] == pytest.approx(float(torch.prod(1 - rec.betas[:461])), rel=1e-12)


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0], ids=["eta1", "eta0.5", "eta0"])
def test_coefficients(unet64, eta):
    rec = DDIMReconstruction(unet64, eta=eta)
    for ab_t, ab_next, c1, c2 in zip(
        rec.alpha_bar, rec.alpha_bar_next, rec.c1, rec.c2, strict=True
    ):
        want_c1 = eta * math.sqrt((1 - ab_t / ab_next) * (1 - ab_next) / (1 - ab_t))
        assert c1 == pytest.approx(want_c1, rel=1e-14, abs=1e-300)
        assert c2 == pytest.approx(math.sqrt(1 - ab_next - want_c1**2), rel=1e-12, abs=1e-300)
    assert rec.c1[-1] == rec.c2[-1] == 0.0


def test_record_is_plain(unet64):
    rec = DDIMReconstruction(unet64, seed=7)
    record = json.loads(json.dumps(rec.record()))
    assert record["seed"] == 7
    assert record["clip_sample"] is False
    assert record["timesteps"] == [460, 345, 230, 115, 0]
    assert record["c1"] == list(rec.c1)


@pytest.mark.parametrize(
    ("start", "steps", "expected"),
    [(460, 5, (460, 345, 230, 115, 0)), (10, 1, (10,)), (4, 5, (4, 3, 2, 1, 0)), (7, 3, (7, 4, 0))],
    ids=["paper", "one-step", "every-step", "rounded"],
)
def test_ddim_timesteps(start, steps, expected):
    assert ddim_timesteps(start, steps) == expected


# --- arithmetic -------------------------------------------------------------------------------


def test_matches_reference_loop(unet64):
    """The paper's recursion written out with the direct float64 schedule."""
    rec = DDIMReconstruction(unet64)
    x, _ = _points(3, (2, 1, 16, 16))
    eps0, xis = rec.noise((1, 16, 16))
    ab = _direct_alphas_cumprod()
    ts = [460, 345, 230, 115, 0]
    x_t = ab[460].sqrt() * x + (1 - ab[460]).sqrt() * eps0
    for i, t in enumerate(ts):
        ab_t = ab[t]
        ab_next = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        eps_hat = unet64(x_t, t)
        x0 = (x_t - (1 - ab_t).sqrt() * eps_hat) / ab_t.sqrt()
        c1 = ((1 - ab_t / ab_next) * (1 - ab_next) / (1 - ab_t)).sqrt()
        c2 = (1 - ab_next - c1**2).clamp(min=0).sqrt()
        x_t = ab_next.sqrt() * x0 + c1 * xis[i] + c2 * eps_hat
    torch.testing.assert_close(rec(x), x_t, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["eta0", "eta1"])
def test_matches_monai_ddim_step(unet64, eta):
    """MONAI's DDIMScheduler.step on its own even schedule (800, 600, ..., 0), same noise."""
    rec = DDIMReconstruction(unet64, start_timestep=800, num_steps=5, eta=eta, seed=3)
    assert rec.timesteps == (800, 600, 400, 200, 0)
    sched = DDIMScheduler(1000, schedule="linear_beta", clip_sample=False)
    sched.set_timesteps(5)
    x, _ = _points(4)
    gen = torch.Generator().manual_seed(3)
    eps0 = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ab = sched.alphas_cumprod.double()
    x_t = ab[800].sqrt() * x + (1 - ab[800]).sqrt() * eps0
    for t in (800, 600, 400, 200, 0):
        # MONAI draws its xi_t from the generator after eps_hat, as medsi draws xi_t after eps0
        x_t, _ = sched.step(unet64(x_t, t), t, x_t, eta=eta, generator=gen)
    torch.testing.assert_close(rec(x), x_t, rtol=1e-5, atol=1e-5)


def test_deterministic(unet64):
    x, _ = _points(5, (3, 1, 16, 16))
    rec = DDIMReconstruction(unet64, seed=11)
    out = rec(x)
    assert torch.equal(out, rec(x))
    assert torch.equal(out, DDIMReconstruction(unet64, seed=11)(x))
    assert not torch.allclose(out, DDIMReconstruction(unet64, seed=12)(x))


@pytest.mark.parametrize(
    ("in_channels", "size"), [(1, 8), (1, 16), (3, 16)], ids=["8px", "16px", "rgb"]
)
def test_batch_elements_independent(in_channels, size):
    rec = DDIMReconstruction(small_unet(in_channels=in_channels))
    x, _ = _points(6, (4, in_channels, size, size))
    batch = rec(x)
    assert batch.shape == x.shape
    for i in range(4):
        torch.testing.assert_close(batch[i : i + 1], rec(x[i : i + 1]), rtol=0, atol=1e-12)


def test_noise_is_cached_and_shared():
    rec = DDIMReconstruction(small_unet(in_channels=3))
    eps0, xis = rec.noise((3, 8, 8))
    assert eps0.shape == (1, 3, 8, 8)
    assert len(xis) == 5
    assert all(xi.shape == (1, 3, 8, 8) for xi in xis)
    assert rec.noise((3, 8, 8))[0] is eps0
    eps0_32, xis_32 = rec.noise((3, 8, 8), torch.float32)
    assert eps0_32.dtype == torch.float32
    torch.testing.assert_close(eps0_32.double(), eps0, rtol=1e-6, atol=1e-7)
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(eps0, torch.randn((1, 3, 8, 8), generator=gen, dtype=torch.float64))


def test_float32_close_to_float64():
    rec64 = DDIMReconstruction(small_unet(dtype=torch.float64))
    rec32 = DDIMReconstruction(small_unet(dtype=torch.float32))
    x, _ = _points(7)
    out32 = rec32(x.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), rec64(x), rtol=1e-4, atol=1e-4)


# --- piecewise affinity -----------------------------------------------------------------------


def _second_difference_ratio(rec, x, d, s):
    with torch.no_grad():
        fp, f0, fm = rec(x + s * d), rec(x), rec(x - s * d)
    return float((fp - 2 * f0 + fm).abs().max() / (fp - fm).abs().max())


def _jvp(rec, x, d):
    with torch.no_grad(), fwad.dual_level():
        return fwad.unpack_dual(rec(fwad.make_dual(x, d))).tangent


def _silu_twin(net):
    """The same U-Net with every ReLU replaced by SiLU: smooth, so not piecewise affine."""
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.SiLU())
    return net.eval()


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["point0", "point1", "point2"])
def test_affine_on_short_segment(unet64, seed):
    x, d = _points(seed)
    rec = DDIMReconstruction(unet64)
    assert _second_difference_ratio(rec, x, d, 1e-5) < 2e-9
    # the Jacobian is locally constant: the tangent is the same a little further on
    torch.testing.assert_close(_jvp(rec, x + 1e-6 * d, d), _jvp(rec, x, d), rtol=1e-12, atol=0)


def test_smooth_twin_fails_the_affinity_checks():
    """Negative control: the checks above can tell a smooth network apart."""
    x, d = _points(0)
    rec = DDIMReconstruction(_silu_twin(small_unet()))
    assert _second_difference_ratio(rec, x, d, 1e-5) > 5e-9
    moved = _jvp(rec, x + 1e-6 * d, d)
    assert not torch.allclose(moved, _jvp(rec, x, d), rtol=1e-9, atol=0)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_timestep": 1000}, '"start_timestep" must be below num_train_timesteps = 1000'),
        ({"num_steps": 500, "start_timestep": 10}, '"num_steps" must be at most'),
        ({"eta": 1.5}, r'"eta" must be in \[0, 1\]'),
        ({"beta_start": 0.03}, "0 < beta_start <= beta_end < 1"),
        ({"beta_end": 1.0}, "0 < beta_start <= beta_end < 1"),
        ({"seed": -1}, '"seed" must be an integer >= 0'),
        ({"num_train_timesteps": 0}, '"num_train_timesteps" must be an integer >= 1'),
    ],
    ids=["start", "steps", "eta", "betas-order", "beta-one", "seed", "T"],
)
def test_bad_arguments(unet64, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DDIMReconstruction(unet64, **kwargs)


def test_bad_unet():
    with pytest.raises(TypeError, match='"unet" must be a torch.nn.Module'):
        DDIMReconstruction(lambda x, t: x)
    with pytest.raises(ConfigError, match='"unet" must have parameters'):
        DDIMReconstruction(nn.Identity())


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(1, 1, 16, 16, dtype=torch.float32), "dtype torch.float64, got torch.float32"),
        (torch.zeros(16, 16, dtype=torch.float64), r"must have shape \(B, C, H, W\)"),
        (torch.zeros(1, 1, 9, 9, dtype=torch.float64), "divisible by 2"),
    ],
    ids=["dtype", "ndim", "size"],
)
def test_bad_inputs(unet64, x, match):
    with pytest.raises(ConfigError, match=match):
        DDIMReconstruction(unet64)(x)


def test_training_mode_refused(unet64):
    rec = DDIMReconstruction(unet64.train())
    assert not unet64.training  # the constructor switched to eval mode
    rec.train()
    with pytest.raises(ConfigError, match="must be in eval mode"):
        rec(torch.zeros(1, 1, 16, 16, dtype=torch.float64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rec = DDIMReconstruction(small_unet())
    x, _ = _points(8, (2, 1, 16, 16))
    expected = rec(x)
    rec.cuda()
    out = rec(x.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(ConfigError, match="must be on the model's device"):
        rec(x)


def test_bad_argument_types(unet64):
    with pytest.raises(TypeError, match='"seed" must be an int'):
        DDIMReconstruction(unet64, seed=1.5)
    with pytest.raises(TypeError, match='"x" must be a torch.Tensor'):
        DDIMReconstruction(unet64)([[0.0]])
    with pytest.raises(ConfigError, match='"num_steps" must be at most start_timestep \\+ 1 = 4'):
        ddim_timesteps(3, 5)
