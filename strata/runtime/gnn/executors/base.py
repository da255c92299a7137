"""What every executor offers the training loop, and the gradient sync they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
from torch import nn


@dataclass
class StepResult:
    loss: float
    """The step's training loss, the same on every rank (the global mean)."""
    samples: int
    """Seed nodes this rank trained on."""


class Executor(Protocol):
    """Runs the steps of a node-classification job; the loop around it is shared."""

    name: str
    model: nn.Module

    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start: int) -> Iterator[object]:
        """The batches of ``epoch`` from step ``start`` on; a pure function of (seed, epoch, step)."""
        ...

    def train_step(self, batch: object, optimizer: torch.optim.Optimizer) -> StepResult: ...

    def evaluate(self) -> dict[str, float]:
        """``<split>_loss`` and ``<split>_acc`` of every non-empty split, the same on every rank."""
        ...


