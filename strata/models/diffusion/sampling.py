"""Ancestral DDPM and deterministic-or-not DDIM sampling, with classifier-free guidance.

The model may be any callable ``model(x_t, t, y) -> output`` with the signature of
:class:`LayeredDiffusion` (a single denoiser, or later a mixture of experts behind a router),
provided it has:

- ``image_shape``: (C, H, W) of the images to draw;
- ``null_label``: the "no class" label, needed only for guidance (guidance_scale != 1 with y);
- it accepts ``y=None`` (unconditional).

An ``nn.Module`` is put in eval mode for sampling and each of its submodules gets its mode
back afterwards; its device is that of its first parameter or buffer (otherwise
``model.device``, else CPU). Noise comes from ``generator`` on the generator's device, so a
seeded CPU generator gives the same samples on any device up to arithmetic.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from strata.models.diffusion.schedule import NoiseSchedule

Denoiser = Callable[..., Tensor]


def guided_prediction(model: Denoiser, x_t: Tensor, t: Tensor, y: Tensor | None, guidance_scale: float) -> Tensor:
    """The model output at (x_t, t, y), with classifier-free guidance when it applies.

    With labels and a scale s != 1: uncond + s * (cond - uncond), the conditional and the
    null-label passes run as one batch of 2N. Without labels, or at s = 1, one plain pass.
    """
    if y is None or guidance_scale == 1.0:
        return model(x_t, t, y).float()
    null = torch.full_like(y, int(model.null_label))  # type: ignore[attr-defined]
    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).float()
    cond, uncond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@contextmanager
def _sampling_mode(model: Denoiser) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _device(model: Denoiser) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device(getattr(model, "device", "cpu"))


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def _check(model: Denoiser, n: int, y: Tensor | None, device: torch.device) -> tuple[tuple[int, ...], Tensor | None]:
    shape = getattr(model, "image_shape", None)
    if shape is None:
        raise TypeError(
            f"the model to sample from needs an image_shape attribute (C, H, W); {type(model).__name__} has none"
        )
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if y is not None:
        y = torch.as_tensor(y, device=device).long()
        if y.shape != (n,):
            raise ValueError(f"y must hold one label per sample, shape ({n},), got {tuple(y.shape)}")
    return (n, *shape), y


def ddpm_sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    n: int,
    *,
    y: Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """``n`` images in [-1, 1] by ancestral sampling through all T steps (Ho et al., 2020).

    Each step predicts x0, clips it to [-1, 1] and draws x_{t-1} from q(x_{t-1} | x_t, x0)
    with the posterior variance (beta tilde); the last step adds no noise.
    """
    device = _device(model)
    shape, y = _check(model, n, y, device)
    with _sampling_mode(model):
        x = _randn(shape, generator, device)
        for i in tqdm(range(schedule.timesteps - 1, -1, -1), desc="ddpm", disable=not progress):
            t = torch.full((n,), i, dtype=torch.long, device=device)
            x0, _ = schedule.predict_x0_and_eps(guided_prediction(model, x, t, y, guidance_scale), x, t)
            mean, variance = schedule.posterior(x0.clamp(-1, 1), x, t)
            x = mean + variance.sqrt() * _randn(shape, generator, device) if i > 0 else mean
    return x.clamp(-1, 1)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps from T-1 down to 0, evenly spaced (rounded)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"DDIM steps must be between 1 and the schedule's {timesteps} timesteps, got {steps}")
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def ddim_sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    n: int,
    *,
    steps: int = 50,
    eta: float = 0.0,
    y: Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """``n`` images in [-1, 1] with DDIM (Song et al., 2021) over ``steps`` of the T timesteps.

    eta = 0 is deterministic: the only random draw is the initial noise. eta = 1 matches
    DDPM's posterior noise level on the chosen steps.
    """
    if eta < 0:
        raise ValueError(f"eta must be 0 or more, got {eta}")
    device = _device(model)
    shape, y = _check(model, n, y, device)
    abars = schedule.alphas_cumprod.double().cpu()
    ts = ddim_timesteps(schedule.timesteps, steps)
    with _sampling_mode(model):
        x = _randn(shape, generator, device)
        for k, i in enumerate(tqdm(ts, desc="ddim", disable=not progress)):
            t = torch.full((n,), i, dtype=torch.long, device=device)
            x0, _ = schedule.predict_x0_and_eps(guided_prediction(model, x, t, y, guidance_scale), x, t)
            x0 = x0.clamp(-1, 1)
            if k == len(ts) - 1:
                x = x0
                break
            eps = schedule.eps_from_x0(x0, x, t)
            abar, abar_prev = float(abars[i]), float(abars[ts[k + 1]])
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
            x = abar_prev**0.5 * x0 + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * eps
            if sigma > 0:
                x = x + sigma * _randn(shape, generator, device)
    return x.clamp(-1, 1)
