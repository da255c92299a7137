"""Keeping replicas identical: one broadcast of the parameters, gradients summed over ranks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from strata.runtime.dist.comm import Comm


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
