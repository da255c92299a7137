"""Exponential moving average of a model's weights, the copy diffusion models sample with.

The average lives beside the trained model as plain tensors (float32, on the model's device)
and travels in checkpoints, so a resumed run continues the same average. With data
parallelism every replica holds identical weights and so an identical average; with a
pipeline each stage averages only the layers it owns.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step, with the
    usual warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` so early averages are not
    dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def averaged(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (in eval mode) carrying the averaged weights."""
        out = copy.deepcopy(model).eval()
        self.copy_to(out)
        return out

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        if not isinstance(shadow, dict) or set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(shadow or {}))[:3]
            raise KeyError(f"EMA weights do not match the model's parameters (missing e.g. {missing})")
        for name, tensor in shadow.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(f"EMA weight '{name}' has shape {tuple(tensor.shape)}, the model's {tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(tensor)
        self.updates = int(state["updates"])  # type: ignore[arg-type]
