"""What every executor offers the training loop, and the gradient sync they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import torch
from torch import nn

from strata.runtime.comm import Comm


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


def broadcast_parameters(model: nn.Module, comm: Comm, src: int = 0) -> None:
    """Give every rank ``src``'s parameters and buffers, so replicas start identical."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        with torch.no_grad():
            comm.broadcast(tensor.data, src)


def all_reduce_gradients(params: Iterable[nn.Parameter], comm: Comm, *, average: bool) -> None:
    """Sum (or average) the gradients of ``params`` over all ranks, as one flat buffer."""
    if comm.world_size == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    comm.all_reduce(flat)
    if average:
        flat /= comm.world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
