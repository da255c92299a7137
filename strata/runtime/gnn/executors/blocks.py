"""The Blocks executors hand their models: the whole graph of a data set, a partition or
pipeline chunk with the global degrees, and the full L-hop neighbourhood of some seeds.

Everything here is CSC arithmetic (numpy and torch); no DGL type leaves this module. A data
set's graph or a loader's sampled blocks that arrive as DGL objects are converted here, the one
place the executors meet them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from strata.graph.block import Block
from strata.graph.csc import edge_ranges
from strata.storage.sorted_unique import sorted_unique


def graph_block(graph: object) -> Block:
    """``NodeData.graph`` as a Block: itself where it is one, else a DGLGraph's in-edges
    converted (build it once per executor: kernels cache what they derive on the Block)."""
    return graph if isinstance(graph, Block) else Block.from_dgl(graph)


def as_blocks(blocks: list[object]) -> list[Block]:
    """Sampled blocks as Blocks: DGL blocks (from a feature loader that still makes them) converted."""
    return [block if isinstance(block, Block) else Block.from_dgl(block) for block in blocks]


def graph_arrays(block: Block) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` of a Block in host memory, as numpy (shared where it is on CPU)."""
    return block.indptr.cpu().numpy(), block.indices.cpu().numpy()


def degrees(block: Block) -> tuple[np.ndarray, np.ndarray]:
    """(out-degree of every src node, in-degree of every dst node) of a whole-graph Block, as
    numpy: the global degrees that partitions and chunks carry."""
    return block.src_degrees().cpu().numpy(), block.dst_degrees().cpu().numpy()


def csc_block(indptr: np.ndarray, indices: np.ndarray, src_out_deg: np.ndarray, dst_in_deg: np.ndarray) -> Block:
    """A Block over the local CSC ``(indptr, indices)`` (dst nodes first among the src nodes)
    carrying the global out-degree of every src node and in-degree of every dst node."""
    return Block.from_csc(
        indptr, indices, num_src=len(src_out_deg), out_deg=np.asarray(src_out_deg, dtype=np.int64),
        in_deg=np.asarray(dst_in_deg, dtype=np.int64), check=False,
    )


def full_neighbourhood_blocks(graph: Block, seeds: Tensor, num_layers: int) -> tuple[Tensor, list[Block]]:
    """The Blocks of every in-edge within ``num_layers`` hops of ``seeds``, input layer first,
    carrying the graph's degrees, so a model on them computes the seeds' full-graph outputs.
    Returns the global ids of the first Block's src nodes (its features' rows) and the Blocks.

    Each layer's src nodes are its dst nodes followed by their other in-neighbours, ascending.
    """
    indptr, indices = graph_arrays(graph)
    out_deg, in_deg = graph.src_degrees(), graph.dst_degrees()
    local = np.full(len(indptr) - 1, -1, dtype=np.int64)  # global -> local id, -1 outside the layer
    dst = np.asarray(seeds.cpu().numpy(), dtype=np.int64)
    blocks: list[Block] = []
    for _ in range(num_layers):
        offsets, edge_ids = edge_ranges(indptr, dst)
        sources = indices[edge_ids]  # (E,) global src ids
        local[dst] = np.arange(len(dst))
        new = sorted_unique(sources[local[sources] < 0])
        local[new] = len(dst) + np.arange(len(new))
        src = np.concatenate([dst, new])
        src_t, dst_t = torch.from_numpy(src), torch.from_numpy(dst)
        blocks.append(Block.from_csc(offsets, local[sources], num_src=len(src), src_ids=src_t, dst_ids=dst_t,
                                     out_deg=out_deg[src_t], in_deg=in_deg[dst_t], check=False))
        local[src] = -1
        dst = src
    blocks.reverse()
    return torch.from_numpy(dst), blocks
