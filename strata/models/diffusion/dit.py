"""The diffusion transformer (Peebles & Xie, 2023) as ordered layers.

``[DiTEmbed, DiTBlock x depth, DiTFinal]``: the embed layer turns ``(x_t, t, y)`` into
``(tokens, c)`` (tokens (N, T, hidden) with T = (H/p)*(W/p) patches, c (N, hidden) the sum
of the timestep and class embeddings); each block maps ``(tokens, c) -> (tokens, c)``; the
final layer maps them to ``(prediction,)``. Blocks are adaLN-Zero: their LayerNorm scale,
shift and residual gates come from ``c`` through a linear map that starts at zero, so every
block is the identity at initialisation, and the final projection starts at zero too, so
the untrained model predicts zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.models.diffusion.layered import (
    LabelEmbedding,
    State,
    TimestepEmbedding,
    sincos,
)


def grid_position_embedding(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos embedding of a grid x grid patch layout, row-major: (grid*grid, dim).

    Half the features encode the row, the other half the column.
    """
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    half = dim // 2
    return torch.cat([sincos(rows.flatten(), half), sincos(cols.flatten(), dim - half)], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _zero(linear: nn.Linear) -> nn.Linear:
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class DiTEmbed(nn.Module):
    """Patchify + fixed positional embedding; timestep + class embedding as the condition c."""

    def __init__(self, *, channels: int, image_size: int, patch_size: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(channels, hidden, kernel_size=patch_size, stride=patch_size)
        nn.init.xavier_uniform_(self.patch.weight.view(hidden, -1))
        nn.init.zeros_(self.patch.bias)
        self.register_buffer("pos", grid_position_embedding(image_size // patch_size, hidden).unsqueeze(0), persistent=False)
        self.time = TimestepEmbedding(hidden)
        for layer in (self.time.mlp[0], self.time.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        self.label = LabelEmbedding(num_classes, hidden)

    def forward(self, state: State) -> State:
        x_t, t, y = state
        tokens = self.patch(x_t).flatten(2).transpose(1, 2) + self.pos  # (N, T, hidden)
        c = self.time(t) + self.label(y)  # (N, hidden)
        return tokens, c


class DiTBlock(nn.Module):
    """Pre-norm self-attention and MLP, each modulated and gated by c (adaLN-Zero)."""

    def __init__(self, *, hidden: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = max(1, int(hidden * mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(inner, hidden)
        )
        self.dropout = nn.Dropout(dropout)
        for layer in (self.qkv, self.proj, self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.modulation = nn.Sequential(nn.SiLU(), _zero(nn.Linear(hidden, 6 * hidden)))

    def _attention(self, x: Tensor) -> Tensor:
        n, T, d = x.shape
        q, k, v = self.qkv(x).view(n, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # each (N, heads, T, d_head)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, T, d))

    def forward(self, state: State) -> State:
        tokens, c = state
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)  # each (N, hidden)
        tokens = tokens + gate1.unsqueeze(1) * self.dropout(self._attention(_modulate(self.norm1(tokens), shift1, scale1)))
        tokens = tokens + gate2.unsqueeze(1) * self.dropout(self.mlp(_modulate(self.norm2(tokens), shift2, scale2)))
        return tokens, c


class DiTFinal(nn.Module):
    """Modulated LayerNorm, a zero-initialised projection to patch pixels, and unpatchify."""

    def __init__(self, *, channels: int, image_size: int, patch_size: int, hidden: int) -> None:
        super().__init__()
        self.channels, self.patch_size, self.grid = channels, patch_size, image_size // patch_size
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), _zero(nn.Linear(hidden, 2 * hidden)))
        self.out = _zero(nn.Linear(hidden, patch_size * patch_size * channels))

    def forward(self, state: State) -> State:
        tokens, c = state
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        patches = self.out(_modulate(self.norm(tokens), shift, scale))  # (N, T, p*p*C)
        n, g, p, C = patches.shape[0], self.grid, self.patch_size, self.channels
        image = patches.view(n, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(n, C, g * p, g * p)
        return (image,)


def dit_layers(
    *,
    channels: int,
    image_size: int,
    patch_size: int,
    hidden: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    dropout: float,
    num_classes: int,
) -> list[nn.Module]:
    """The DiT's layers in order: embed, ``depth`` blocks, final."""
    shape = {"channels": channels, "image_size": image_size, "patch_size": patch_size, "hidden": hidden}
    layers: list[nn.Module] = [DiTEmbed(**shape, num_classes=num_classes)]
    layers += [DiTBlock(hidden=hidden, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)]
    layers.append(DiTFinal(**shape))
    return layers
