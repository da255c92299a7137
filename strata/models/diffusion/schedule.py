"""Noise schedules: the forward process q(x_t | x0), training targets, and the conversions samplers need.

Timestep ``t`` is an int64 in [0, T): ``alphas_cumprod[t]`` (abar_t) is the share of signal
variance left after step t, so x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. The model predicts
either eps or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho, 2022).

Buffers are float64 so that the products behind abar stay exact for long schedules; every
method gathers the entries for ``t`` and returns them in the dtype and on the device of its
image argument, wherever the buffers live.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from strata.models.diffusion.config import NoiseConfig

MAX_BETA = 0.999


def linear_betas(timesteps: int) -> Tensor:
    """DDPM's betas, 1e-4 to 0.02 over 1000 steps, scaled by 1000/T so abar_T stays about the same."""
    scale = 1000.0 / timesteps
    return torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64).clamp(max=MAX_BETA)


def cosine_betas(timesteps: int, *, offset: float = 0.008) -> Tensor:
    """Improved DDPM's betas from abar(s) = cos^2((s/T + offset)/(1 + offset) * pi/2), clipped at 0.999."""
    s = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)


class NoiseSchedule:
    """The betas of a NoiseConfig and what follows from them."""

    _BUFFERS = (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_abar",
        "sqrt_one_minus_abar",
        "posterior_x0_coef",
        "posterior_xt_coef",
        "posterior_variance",
    )

    def __init__(self, cfg: NoiseConfig) -> None:
        self.cfg = cfg
        self.timesteps = cfg.timesteps
        self.prediction = cfg.prediction
        self.betas = linear_betas(cfg.timesteps) if cfg.schedule == "linear" else cosine_betas(cfg.timesteps)
        """beta_t, float64 (T,)."""
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        """abar_t = prod_{s<=t} (1 - beta_s), float64 (T,), strictly decreasing in (0, 1)."""
        self.alphas_cumprod_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        """abar_{t-1}, with abar_{-1} = 1."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_abar = abar.sqrt()
        self.sqrt_one_minus_abar = (1 - abar).sqrt()
        self.posterior_x0_coef = abar_prev.sqrt() * self.betas / (1 - abar)
        self.posterior_xt_coef = (1 - self.betas).sqrt() * (1 - abar_prev) / (1 - abar)
        self.posterior_variance = self.betas * (1 - abar_prev) / (1 - abar)
        """Variance of q(x_{t-1} | x_t, x0) (beta tilde); 0 at t = 0."""

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move the buffers to ``device`` (optional: methods work wherever the buffers are)."""
        for name in self._BUFFERS:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def _signal_noise(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(abar_t) and sqrt(1 - abar_t), taken in float64 before the cast."""
        return self._at(self.sqrt_abar, t, like), self._at(self.sqrt_one_minus_abar, t, like)

    def _at(self, buffer: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``buffer[t]`` shaped to broadcast over ``like`` (N, ...), in its dtype and device."""
        values = buffer[t.to(buffer.device).long()]
        return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a, s = self._signal_noise(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the model should output for (x0, noise, t): the noise, or v."""
        if self.prediction == "eps":
            return noise
        a, s = self._signal_noise(t, x0)
        return a * noise - s * x0

    def predict_x0_and_eps(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The x0 and eps that a model output implies at (x_t, t)."""
        a, s = self._signal_noise(t, x_t)
        if self.prediction == "eps":
            return (x_t - s * model_out) / a, model_out
        return a * x_t - s * model_out, s * x_t + a * model_out

    def eps_from_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise that takes x0 to x_t at step t."""
        a, s = self._signal_noise(t, x_t)
        return (x_t - a * x0) / s

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0), the variance broadcastable over x_t; 0 at t = 0."""
        mean = self._at(self.posterior_x0_coef, t, x_t) * x0 + self._at(self.posterior_xt_coef, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t)

    def loss(self, model_out: Tensor, target: Tensor) -> Tensor:
        """Mean squared error over every element, computed in float32 or wider."""
        dtype = torch.promote_types(model_out.dtype, torch.float32)
        return F.mse_loss(model_out.to(dtype), target.to(dtype))
