"""Diffusion models as ordered lists of layers, and the embeddings their layers share.

Every layer maps a tuple of tensors to a tuple of tensors. The first layer receives
``(x_t, t, y)``: noisy images (N, C, H, W), int64 timesteps (N,) and int64 labels (N,), where
the label ``null_label`` means "no class". The last layer returns ``(prediction,)`` with the
shape of ``x_t``. What flows in between is the architecture's business (the DiT passes
``(tokens, c)``, the U-Net adds its skip tensors), but it is always a flat tuple of tensors,
so an executor can cut ``layers`` anywhere, run each piece on its own stage and send the
tuple across.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]


def sincos(positions: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of ``positions`` (any shape, float or int): shape (*positions.shape, dim).

    The first ceil(dim/2) features are sines and the rest cosines, at geometrically spaced
    frequencies from 1 down to 1/max_period, so any ``dim`` works (odd ones too).
    """
    n_sin, n_cos = (dim + 1) // 2, dim // 2
    steps = torch.arange(n_sin, dtype=torch.float64, device=positions.device) / max(n_sin, 1)
    freqs = torch.exp(-math.log(max_period) * steps)
    angles = positions.to(torch.float64).unsqueeze(-1) * freqs  # (..., n_sin)
    return torch.cat([angles.sin(), angles[..., :n_cos].cos()], dim=-1).float()


class LabelEmbedding(nn.Module):
    """A table with one row per class plus one for "no class" (``null_label == num_classes``).

    The extra row is what classifier-free guidance learns as the unconditional embedding;
    an unconditional model (``num_classes == 0``) has only that row.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, y: Tensor) -> Tensor:
        return self.table(y)  # (N, dim)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of the integer timestep followed by a two-layer SiLU MLP."""

    def __init__(self, dim: int, *, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sincos(t, self.freq_dim).to(self.mlp[0].weight.dtype))  # (N, dim)


def run_layers(layers: Sequence[nn.Module], state: State) -> State:
    """Apply ``layers`` in order to a state tuple; what one pipeline stage does with its share."""
    for layer in layers:
        state = layer(state)
    return state


class LayeredDiffusion(nn.Module):
    """A denoiser that is nothing but its ordered layers, plus what samplers need to know.

    ``forward(x_t, t, y)`` returns the model output (epsilon or v, as the noise schedule's
    ``prediction`` says) with the shape of ``x_t``. It draws no random numbers except in
    ``nn.Dropout``: label dropout for classifier-free guidance is the trainer's job (it
    replaces labels with ``null_label``), so a step is reproducible from (x0, t, noise, y).
    """

    def __init__(self, layers: Sequence[nn.Module], *, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_classes = num_classes
        self.null_label = num_classes
        """The label meaning "no class": the unconditional branch of guidance, and every label of an unconditional model."""
        self.image_shape = tuple(image_shape)
        """(C, H, W) of the images this model denoises."""

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        n = x_t.shape[0]
        if tuple(x_t.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            raise ValueError(f"expected images of shape (N, {expected}), got {tuple(x_t.shape)}")
        t = torch.as_tensor(t, device=x_t.device).long()
        if t.dim() == 0:
            t = t.expand(n)
        if y is None:
            y = torch.full((n,), self.null_label, dtype=torch.long, device=x_t.device)
        (out,) = run_layers(self.layers, (x_t, t, y.long()))
        return out
