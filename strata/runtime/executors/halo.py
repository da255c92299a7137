"""The halo exchange of graph-parallel training as an autograd Function.

Forward: each rank sends the rows of its owned nodes that other ranks hold as halo and
receives its own halo rows, one all_to_all.  Backward: the gradients that arrived at halo
rows go back to their owners, who add them to the gradients of the owned rows, a second
all_to_all with the counts swapped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from strata.runtime.comm import Comm
from strata.runtime.executors.partition import LocalPartition


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, owned: Tensor, send_index: Tensor, part: LocalPartition, comm: Comm) -> Tensor:
        ctx.part, ctx.comm = part, comm
        ctx.save_for_backward(send_index)
        halo = comm.all_to_all_single(owned[send_index], part.send_counts, part.recv_counts)  # (num_halo, dim)
        return torch.cat([owned, halo])  # (num_owned + num_halo, dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        (send_index,) = ctx.saved_tensors
        part: LocalPartition = ctx.part
        grad_owned = grad[: part.num_owned].clone()
        returned = ctx.comm.all_to_all_single(grad[part.num_owned :], part.recv_counts, part.send_counts)
        grad_owned.index_add_(0, send_index, returned)
        return grad_owned, None, None, None


def exchange_halo(owned: Tensor, send_index: Tensor, part: LocalPartition, comm: Comm) -> Tensor:
    """``owned`` rows followed by the halo rows from their owners.  (num_owned + num_halo, dim)"""
    return _HaloExchange.apply(owned, send_index, part, comm)
