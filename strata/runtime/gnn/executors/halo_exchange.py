"""The halo exchange of graph-parallel training as an autograd Function.

Forward: each rank sends the rows of its owned nodes that other ranks hold as halo and
receives its own halo rows, one all_to_all.  Backward: the gradients that arrived at halo
rows go back to their owners, who add them to the gradients of the owned rows, a second
all_to_all with the counts swapped.

:func:`fetch_halo` takes the counts explicitly, so a caller can exchange any subset of the
rows (the layer pipeline's hybrid mode sends, per chunk, only the chunk's rows);
:func:`exchange_halo` is the whole halo of a :class:`LocalPartition`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from strata.runtime.dist.comm import Comm
from strata.runtime.gnn.executors.partition import LocalPartition


class _HaloFetch(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, owned: Tensor, send_index: Tensor, send_counts: Sequence[int], recv_counts: Sequence[int], comm: Comm) -> Tensor:
        ctx.comm, ctx.counts, ctx.num_owned = comm, (tuple(send_counts), tuple(recv_counts)), owned.shape[0]
        ctx.save_for_backward(send_index)
        return comm.all_to_all_single(owned[send_index], send_counts, recv_counts)  # (sum(recv_counts), dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (send_index,) = ctx.saved_tensors
        send_counts, recv_counts = ctx.counts
        returned = ctx.comm.all_to_all_single(grad, recv_counts, send_counts)  # (len(send_index), dim)
        grad_owned = grad.new_zeros((ctx.num_owned, *grad.shape[1:]))
        grad_owned.index_add_(0, send_index, returned)
        return grad_owned, None, None, None, None


def fetch_halo(owned: Tensor, send_index: Tensor, send_counts: Sequence[int], recv_counts: Sequence[int], comm: Comm) -> Tensor:
    """Send ``owned[send_index]`` (grouped by destination, ``send_counts`` rows each) and return
    the rows the other ranks sent here, grouped by source.  (sum(recv_counts), dim)"""
    return _HaloFetch.apply(owned, send_index, send_counts, recv_counts, comm)


def exchange_halo(owned: Tensor, send_index: Tensor, part: LocalPartition, comm: Comm) -> Tensor:
    """``owned`` rows followed by the halo rows from their owners.  (num_owned + num_halo, dim)"""
    return torch.cat([owned, fetch_halo(owned, send_index, part.send_counts, part.recv_counts, comm)])
