"""DGL's kernels behind graph.ops: its fused CPU message passing (gSpMM, gSDDMM, edge softmax),
with DGL's own backward passes.

The PyPI DGL is a CPU-only build, so these run on CPU tensors only. Each Block gets one DGL
block over its CSC, built on first use and cached on the Block, with edge ids equal to CSC
positions, so per-edge tensors are in the same order for both kernels; DGL builds the
transposed CSR of its backward passes once on that graph. Every function takes the same
2-D (or, for weighted_sum, 3-D) tensors as :mod:`strata.graph.kernels_torch`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from strata.graph.block import Block


def dgl_block(block: Block) -> Any:
    """The DGL block over ``block``'s CSC (edge id = position in ``indices``), cached on the Block."""
    return block.cached("dgl_block", lambda: _build(block))


def _build(block: Block) -> Any:
    from strata._dgl import dgl

    if block.device.type != "cpu":
        raise ValueError(f"DGL's kernels run on CPU only (the PyPI build has no CUDA); this Block is on {block.device}")
    edge_ids = torch.arange(block.num_edges, dtype=torch.int64)
    return dgl.create_block(
        ("csc", (block.indptr, block.indices, edge_ids)), num_src_nodes=block.num_src, num_dst_nodes=block.num_dst,
    )


def _ops() -> Any:
    from strata._dgl import dgl

    return dgl.ops


def copy_sum(block: Block, h: Tensor) -> Tensor:
    """h (num_src, F) -> (num_dst, F)"""
    return _ops().copy_u_sum(dgl_block(block), h)


def mean(block: Block, h: Tensor) -> Tensor:
    """h (num_src, F) -> (num_dst, F); 0 where a dst node has no in-edges."""
    return _ops().copy_u_mean(dgl_block(block), h)


def weighted_sum(block: Block, h: Tensor, weights: Tensor) -> Tensor:
    """h (num_src, H, D), weights (E, H) -> (num_dst, H, D)"""
    return _ops().u_mul_e_sum(dgl_block(block), h, weights.unsqueeze(-1))


def edge_softmax(block: Block, scores: Tensor) -> Tensor:
    """scores (E, F) -> (E, F), normalised over each dst node's in-edges."""
    return _ops().edge_softmax(dgl_block(block), scores)


def u_add_v(block: Block, src_values: Tensor, dst_values: Tensor) -> Tensor:
    """(num_src, F), (num_dst, F) -> (E, F)"""
    return _ops().u_add_v(dgl_block(block), src_values, dst_values)
