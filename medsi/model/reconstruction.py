"""DDIM reconstruction with fixed noise: a piecewise-affine map x -> f(x) (DESIGN.md section 1).

Timesteps are MONAI's 0-based indices: ``alphas_cumprod[t]`` here (and in MONAI) is the paper's
alpha_bar[t + 1]. The betas come from MONAI's ``DDPMScheduler`` (float32), are cast to float64,
and the cumulative product is formed in float64.
"""

import math

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from medsi.errors import ConfigError
from medsi.model.unet import _check_int

__all__ = ["DDIMReconstruction", "ddim_timesteps"]


def ddim_timesteps(start_timestep: int, num_steps: int) -> tuple[int, ...]:
    """Evenly spaced reverse-process timesteps from ``start_timestep`` down to 0.

    Parameters
    ----------
    start_timestep
        T', the first (largest) timestep, 0-based.
    num_steps
        Number of U-Net evaluations; ``num_steps - 1 <= start_timestep``.

    Returns
    -------
    tuple[int, ...]
        Strictly decreasing, ``round(start_timestep * (num_steps - 1 - i) / (num_steps - 1))``
        for i = 0 .. num_steps - 1, ending at 0; ``(start_timestep,)`` when ``num_steps`` is 1.

    Raises
    ------
    ConfigError
        If ``num_steps - 1 > start_timestep`` (the timesteps would repeat).

    Examples
    --------
    >>> ddim_timesteps(460, 5)
    (460, 345, 230, 115, 0)
    """
    _check_int("start_timestep", start_timestep, minimum=0)
    _check_int("num_steps", num_steps)
    if num_steps - 1 > start_timestep:
        raise ConfigError(
            f'"num_steps" must be at most start_timestep + 1 = {start_timestep + 1}, got '
            f"{num_steps}; use fewer steps or a larger start_timestep."
        )
    if num_steps == 1:
        return (start_timestep,)
    return tuple(
        round(start_timestep * (num_steps - 1 - i) / (num_steps - 1)) for i in range(num_steps)
    )


class DDIMReconstruction(nn.Module):
    """Reconstruct an image by DDIM from timestep T' with noise drawn once from a seed.

    With ab = ``alphas_cumprod``, ``forward`` computes (DESIGN.md section 1)::

        x_t = sqrt(ab[T']) x + sqrt(1 - ab[T']) eps0
        for each t in timesteps (T' first, 0 last):
            eps_hat = unet(x_t, t)
            x0 = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t)
            x_t = sqrt(ab_next) x0 + c1 xi_t + c2 eps_hat
        return x_t

    with ab_next the ab of the next timestep (1 after the last step),
    c1 = eta sqrt((1 - ab_t / ab_next)(1 - ab_next) / (1 - ab_t)) and
    c2 = sqrt(1 - ab_next - c1^2). The noise ``eps0`` and ``xi_t`` (shape (1, C, H, W)) is drawn
    once per image shape from a ``torch.Generator`` seeded with ``seed``, cached, and broadcast
    over the batch, so every batch element sees the same noise and f is a deterministic
    function of each image alone, piecewise affine whenever the U-Net is.

    The constructor puts the module (and the U-Net) in eval mode; ``forward`` refuses to run in
    training mode, where BatchNorm would mix the batch.

    Parameters
    ----------
    unet
        Noise-prediction network called as ``unet(x_t, t)`` with ``t`` an int, e.g.
        :class:`~medsi.model.PLUNet`. Its parameters decide dtype and device.
    num_train_timesteps
        T, the length of the training noise schedule.
    start_timestep
        T', the 0-based timestep the reverse process starts from (the paper: 460).
    num_steps
        Number of DDIM steps (U-Net evaluations) from T' down to 0 (the paper: 5).
    eta
        DDIM stochasticity in [0, 1]: 0 is deterministic DDIM, 1 (the paper) DDPM-like.
    beta_start, beta_end
        First and last beta of the linear schedule.
    seed
        Seed of the generator that draws ``eps0`` and every ``xi_t``; write it to the run
        record.

    Attributes
    ----------
    betas : torch.Tensor
        (T,), float64, MONAI's float32 betas cast to float64.
    alphas_cumprod : torch.Tensor
        (T,), float64, ``cumprod(1 - betas)`` computed in float64.
    timesteps : tuple[int, ...]
        The reverse-process timesteps, T' first, 0 last.
    alpha_bar : tuple[float, ...]
        ab_t for each step; ``alpha_bar[0]`` = ab[T'] also scales the input.
    alpha_bar_next : tuple[float, ...]
        ab of the next timestep for each step; 1.0 after the last.
    c1, c2 : tuple[float, ...]
        Coefficients of ``xi_t`` and ``eps_hat`` for each step.

    Raises
    ------
    ConfigError
        If a schedule argument is out of range.
    TypeError
        If ``unet`` is not a module or an integer argument is not an int.

    Examples
    --------
    >>> from medsi.model import PLUNet
    >>> rec = DDIMReconstruction(PLUNet(channels=(8, 16), time_embed_dim=8))
    >>> rec.timesteps
    (460, 345, 230, 115, 0)
    >>> round(rec.alpha_bar[0], 4)
    0.1148
    """

    def __init__(
        self,
        unet: nn.Module,
        num_train_timesteps: int = 1000,
        start_timestep: int = 460,
        num_steps: int = 5,
        eta: float = 1.0,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise TypeError(
                f'"unet" must be a torch.nn.Module, got {type(unet).__name__}; pass e.g. a PLUNet.'
            )
        if next(unet.parameters(), None) is None:
            raise ConfigError(
                '"unet" must have parameters (they decide dtype and device), got a module '
                "without any; pass a trained noise-prediction network."
            )
        _check_int("num_train_timesteps", num_train_timesteps)
        _check_int("start_timestep", start_timestep, minimum=0)
        if start_timestep >= num_train_timesteps:
            raise ConfigError(
                f'"start_timestep" must be below num_train_timesteps = {num_train_timesteps}, '
                f"got {start_timestep}; pass a 0-based timestep such as 460."
            )
        _check_int("seed", seed, minimum=0)
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(
                f'"eta" must be in [0, 1], got {eta}; pass 1.0 (the paper) or 0.0 (plain DDIM).'
            )
        beta_start, beta_end = float(beta_start), float(beta_end)
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ConfigError(
                f'"beta_start" and "beta_end" must satisfy 0 < beta_start <= beta_end < 1, got '
                f"{beta_start} and {beta_end}; pass e.g. 1e-4 and 0.02."
            )
        self.unet = unet
        self.num_train_timesteps = num_train_timesteps
        self.start_timestep = start_timestep
        self.num_steps = num_steps
        self.eta = eta
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.seed = seed

        scheduler = DDPMScheduler(
            num_train_timesteps,
            schedule="linear_beta",
            beta_start=beta_start,
            beta_end=beta_end,
            clip_sample=False,
        )
        self.betas = scheduler.betas.detach().to(dtype=torch.float64, device="cpu")
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.timesteps = ddim_timesteps(start_timestep, num_steps)
        ab = [float(self.alphas_cumprod[t]) for t in self.timesteps]
        self.alpha_bar = tuple(ab)
        self.alpha_bar_next = tuple(ab[1:]) + (1.0,)
        c1, c2 = [], []
        for ab_t, ab_next in zip(self.alpha_bar, self.alpha_bar_next, strict=True):
            c1_t = eta * math.sqrt((1.0 - ab_t / ab_next) * (1.0 - ab_next) / (1.0 - ab_t))
            c1.append(c1_t)
            # >= 0 in exact arithmetic for eta <= 1; the clamp only removes rounding below zero.
            c2.append(math.sqrt(max(1.0 - ab_next - c1_t**2, 0.0)))
        self.c1 = tuple(c1)
        self.c2 = tuple(c2)
        self._noise_cache: dict[tuple, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.eval()

    def record(self) -> dict:
        """Return the settings and the derived schedule as plain Python values, for a run record.

        Returns
        -------
        dict
            Keys ``num_train_timesteps``, ``start_timestep``, ``num_steps``, ``eta``,
            ``beta_start``, ``beta_end``, ``seed``, ``schedule`` ("linear_beta"),
            ``clip_sample`` (False), ``timesteps``, ``alpha_bar``, ``alpha_bar_next``, ``c1``,
            ``c2`` (lists of floats, one per step).
        """
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "start_timestep": self.start_timestep,
            "num_steps": self.num_steps,
            "eta": self.eta,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "seed": self.seed,
            "schedule": "linear_beta",
            "clip_sample": False,
            "timesteps": list(self.timesteps),
            "alpha_bar": list(self.alpha_bar),
            "alpha_bar_next": list(self.alpha_bar_next),
            "c1": list(self.c1),
            "c2": list(self.c2),
        }

    def noise(
        self,
        sample_shape: tuple[int, ...],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Return the fixed noise for images of one shape: ``eps0`` and one ``xi_t`` per step.

        A CPU ``torch.Generator`` seeded with ``seed`` draws, in float64 and in this order,
        ``eps0`` and then ``xi_t`` for each of ``timesteps``; the draws are cast to ``dtype``
        and moved to ``device``, so every device and precision sees the same noise up to
        rounding. The result is cached per (shape, dtype, device).

        Parameters
        ----------
        sample_shape
            Shape of one image, (C, H, W).
        dtype
            Floating dtype of the returned tensors.
        device
            Device of the returned tensors.

        Returns
        -------
        tuple[torch.Tensor, tuple[torch.Tensor, ...]]
            ``eps0`` of shape (1, *sample_shape) and a tuple of ``num_steps`` tensors ``xi_t``
            of the same shape.
        """
        shape = tuple(int(s) for s in sample_shape)
        device = torch.device(device)
        key = (shape, dtype, device)
        cached = self._noise_cache.get(key)
        if cached is None:
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            draws = [
                torch.randn((1, *shape), generator=generator, dtype=torch.float64)
                for _ in range(1 + len(self.timesteps))
            ]
            draws = [d.to(dtype=dtype, device=device) for d in draws]
            cached = (draws[0], tuple(draws[1:]))
            self._noise_cache[key] = cached
        return cached

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'"x" must be a torch.Tensor, got {type(x).__name__}.')
        if x.ndim < 3:
            raise ConfigError(
                f'"x" must have shape (B, C, H, W), got {tuple(x.shape)}; add the batch and '
                "channel axes, e.g. x[None, None]."
            )
        param = next(self.unet.parameters())
        if x.dtype != param.dtype:
            raise ConfigError(
                f'"x" must have the model\'s dtype {param.dtype}, got {x.dtype}; '
                f"cast the input with x.to({param.dtype}) or the model with .to(dtype)."
            )
        if x.device != param.device:
            raise ConfigError(
                f'"x" must be on the model\'s device {param.device}, got {x.device}; '
                f"move the input with x.to('{param.device}') or the model with .to(device)."
            )
        if any(m.training for m in self.unet.modules()):
            raise ConfigError(
                '"unet" must be in eval mode for a reconstruction (BatchNorm in training mode '
                "mixes the batch and is not piecewise affine), got training mode; call .eval()."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``.

        Parameters
        ----------
        x
            Images, shape (B, C, H, W), in the U-Net's dtype and on its device.

        Returns
        -------
        torch.Tensor
            The reconstruction f(x), same shape, dtype and device as ``x``.

        Raises
        ------
        ConfigError
            If ``x`` has too few axes, another dtype or device than the U-Net, or the U-Net is
            in training mode (and whatever the U-Net raises for a bad size).
        TypeError
            If ``x`` is not a tensor.
        """
        self._check_input(x)
        eps0, xis = self.noise(x.shape[1:], x.dtype, x.device)
        ab_start = self.alpha_bar[0]
        x_t = math.sqrt(ab_start) * x + math.sqrt(1.0 - ab_start) * eps0
        steps = zip(
            self.timesteps, self.alpha_bar, self.alpha_bar_next, self.c1, self.c2, xis, strict=True
        )
        for t, ab_t, ab_next, c1, c2, xi in steps:
            eps_hat = self.unet(x_t, t)
            x0 = (x_t - math.sqrt(1.0 - ab_t) * eps_hat) / math.sqrt(ab_t)
            x_t = math.sqrt(ab_next) * x0
            if c1 != 0.0:
                x_t = x_t + c1 * xi
            if c2 != 0.0:
                x_t = x_t + c2 * eps_hat
        return x_t
