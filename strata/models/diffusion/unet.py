"""A small DDPM U-Net (Ho et al., 2020) as ordered layers.

The state between layers is ``(h, emb, *skips)``: the feature map h (N, ch, H', W'), the
timestep+class embedding emb (N, 4*hidden), and the skip tensors the down path has pushed
and the up path has not yet consumed (oldest first). Layers in order:

- ``UNetEmbed``: 3x3 conv of x_t, embeddings of t and y; pushes its output as the first skip;
- per resolution level (``channel_mults``, highest resolution first): ``depth`` residual
  layers that push their output, then a stride-2 ``Downsample`` that pushes (not after the
  last level);
- middle: a residual layer with self-attention, then a plain residual layer;
- per level back up: ``depth + 1`` residual layers that each pop one skip and concatenate it,
  then an ``Upsample`` (not after the highest-resolution level);
- ``UNetOut``: GroupNorm, SiLU and a zero-initialised 3x3 conv to ``(prediction,)``.

Self-attention (optional) sits after every residual layer at the lowest resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.models.diffusion.layered import LabelEmbedding, State, TimestepEmbedding


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a zero-initialised residual."""

    def __init__(self, ch: int, *, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, ch, H, W = x.shape
        qkv = self.qkv(self.norm(x)).view(n, 3, self.heads, ch // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (N, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, d)
        return x + self.proj(out.transpose(-1, -2).reshape(n, ch, H, W))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added per channel in between; 1x1 conv on the skip when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, *, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNetEmbed(nn.Module):
    """x_t -> 3x3 conv (pushed as the first skip); t, y -> emb."""

    def __init__(self, *, channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time = TimestepEmbedding(4 * hidden, freq_dim=hidden)
        self.label = LabelEmbedding(num_classes, 4 * hidden)

    def forward(self, state: State) -> State:
        x_t, t, y = state
        h = self.conv(x_t)  # (N, hidden, H, W)
        return h, self.time(t) + self.label(y), h


class ResLayer(nn.Module):
    """One residual block (and attention), popping a skip before it and/or pushing its output."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        emb_dim: int,
        groups: int,
        dropout: float,
        heads: int,
        attention: bool,
        pop: bool,
        push: bool,
    ) -> None:
        super().__init__()
        self.block = ResBlock(in_ch, out_ch, emb_dim=emb_dim, groups=groups, dropout=dropout)
        self.attention = SelfAttention2d(out_ch, heads=heads, groups=groups) if attention else None
        self.pop, self.push = pop, push

    def forward(self, state: State) -> State:
        h, emb, *skips = state
        if self.pop:
            h = torch.cat([h, skips.pop()], dim=1)
        h = self.block(h, emb)
        if self.attention is not None:
            h = self.attention(h)
        if self.push:
            skips.append(h)
        return (h, emb, *skips)


class Downsample(nn.Module):
    """Stride-2 3x3 conv; pushes its output as a skip."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, state: State) -> State:
        h, emb, *skips = state
        h = self.conv(h)
        return (h, emb, *skips, h)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, state: State) -> State:
        h, emb, *skips = state
        return (self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest")), emb, *skips)


class UNetOut(nn.Module):
    """GroupNorm, SiLU, zero-initialised 3x3 conv back to image channels."""

    def __init__(self, ch: int, *, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.conv = _zero(nn.Conv2d(ch, channels, 3, padding=1))

    def forward(self, state: State) -> State:
        if len(state) != 2:
            raise ValueError(f"UNetOut expects (h, emb) with every skip consumed, got a state of {len(state)} tensors")
        return (self.conv(F.silu(self.norm(state[0]))),)


def unet_layers(
    *,
    channels: int,
    hidden: int,
    channel_mults: list[int],
    depth: int,
    heads: int,
    attention: bool,
    groups: int,
    dropout: float,
    num_classes: int,
) -> list[nn.Module]:
    """The U-Net's layers in order; ``depth`` residual layers per level on the way down."""
    emb_dim, last = 4 * hidden, len(channel_mults) - 1
    common = {"emb_dim": emb_dim, "groups": groups, "dropout": dropout, "heads": heads}
    layers: list[nn.Module] = [UNetEmbed(channels=channels, hidden=hidden, num_classes=num_classes)]
    ch, skip_chs = hidden, [hidden]
    for level, mult in enumerate(channel_mults):
        for _ in range(depth):
            layers.append(ResLayer(ch, hidden * mult, attention=attention and level == last, pop=False, push=True, **common))
            ch = hidden * mult
            skip_chs.append(ch)
        if level != last:
            layers.append(Downsample(ch))
            skip_chs.append(ch)
    layers.append(ResLayer(ch, ch, attention=attention, pop=False, push=False, **common))
    layers.append(ResLayer(ch, ch, attention=False, pop=False, push=False, **common))
    for level in reversed(range(len(channel_mults))):
        for _ in range(depth + 1):
            out = hidden * channel_mults[level]
            attend = attention and level == last
            layers.append(ResLayer(ch + skip_chs.pop(), out, attention=attend, pop=True, push=False, **common))
            ch = out
        if level != 0:
            layers.append(Upsample(ch))
    layers.append(UNetOut(ch, channels=channels, groups=groups))
    return layers
