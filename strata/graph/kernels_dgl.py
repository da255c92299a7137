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


def dgl_block(block: Block, *, csc_only: bool = False) -> Any:
    """The DGL block over ``block``'s CSC (edge id = position in ``indices``), cached on the Block.

    ``csc_only`` allows DGL no other format: the copy and mean sums, forward and backward, run
    on the CSC alone, where a block that may also hold a CSR built one for every backward pass
    (0.5 ms for two sampled layers of 40k edges). Edge-wise ops (SDDMM, the edge softmax and
    the gradient of edge weights) need DGL's CSR or COO and take the block that allows them.
    """
    key = "dgl_block_csc" if csc_only else "dgl_block"
    return block.cached(key, lambda: _build(block, ["csc"] if csc_only else ["csc", "csr", "coo"]))


def _build(block: Block, formats: list[str]) -> Any:
    from strata._dgl import DGLBlock, dgl

    if block.device.type != "cpu":
        raise ValueError(f"DGL's kernels run on CPU only (the PyPI build has no CUDA); this Block is on {block.device}")
    # DGL's graph index straight from the CSC, edge id = CSC position (DGL's libxsmm sum needs
    # the ids spelled out): ``dgl.create_block`` took 10x longer (0.26 ms a sampled block of 40k edges).
    edge_ids = torch.arange(block.num_edges, dtype=torch.int64)
    index = dgl.heterograph_index.create_unitgraph_from_csr(
        2, block.num_src, block.num_dst, block.indptr, block.indices, edge_ids, formats, transpose=True,
    )
    return DGLBlock(index, (["_N"], ["_N"]), ["_E"])


def _ops() -> Any:
    from strata._dgl import dgl

    return dgl.ops


def copy_sum(block: Block, h: Tensor) -> Tensor:
    """h (num_src, F) -> (num_dst, F)"""
    return _ops().copy_u_sum(dgl_block(block, csc_only=True), h)


def mean(block: Block, h: Tensor) -> Tensor:
    """h (num_src, F) -> (num_dst, F); 0 where a dst node has no in-edges."""
    return _ops().copy_u_mean(dgl_block(block, csc_only=True), h)


def weighted_sum(block: Block, h: Tensor, weights: Tensor) -> Tensor:
    """h (num_src, H, D), weights (E, H) -> (num_dst, H, D)"""
    return _ops().u_mul_e_sum(dgl_block(block), h, weights.unsqueeze(-1))


def edge_softmax(block: Block, scores: Tensor) -> Tensor:
    """scores (E, F) -> (E, F), normalised over each dst node's in-edges."""
    return _ops().edge_softmax(dgl_block(block), scores)


def u_add_v(block: Block, src_values: Tensor, dst_values: Tensor) -> Tensor:
    """(num_src, F), (num_dst, F) -> (E, F)"""
    return _ops().u_add_v(dgl_block(block), src_values, dst_values)
