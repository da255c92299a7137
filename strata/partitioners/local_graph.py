"""A part's local graph cut from the store's CSC chunks, streamed: never the whole graph.

The local graph of a part is the subgraph induced by its local nodes (owned, then halo hop by
hop, each run ascending; see :mod:`strata.partitioners.format`). Its CSC is built in passes
over the store's chunks with one map ``g2l`` (global id -> local id, -1 elsewhere) of the part:

1. :func:`count_local_in_edges`: each local node's in-edges from local sources -> the local
   row pointer, and so the number of edges before any is written;
2. :func:`local_edges_of_run`, once per run of local ids (the owned nodes, each halo hop):
   the in-edges of that run's nodes in order of local id. A run's local ids follow global
   order, and chunks come in global order, so its edges come out in final order, ready to be
   appended to the part's files (:mod:`strata.partitioners.part_files`) as they arrive.

Memory: ``g2l`` (N entries), the local row pointer (local nodes + 1) and one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

from strata.partitioners.graph import GraphSource


def local_map(num_nodes: int, local_to_global: np.ndarray) -> np.ndarray:
    """``g2l``: local id of every global node, -1 where not local.  (N,) int32, or int64 past 2^31 nodes."""
    dtype = np.int32 if num_nodes < np.iinfo(np.int32).max else np.int64
    g2l = np.full(num_nodes, -1, dtype=dtype)
    g2l[local_to_global] = np.arange(len(local_to_global), dtype=dtype)
    return g2l


def count_local_in_edges(graph: GraphSource, g2l: np.ndarray, num_local: int, *, chunk_edges: int,
                         bar: tqdm | None = None) -> np.ndarray:
    """The local CSC row pointer: in-edges of each local node whose source is local.  (num_local + 1,) int64"""
    counts = np.zeros(num_local, dtype=np.int64)
    for chunk in graph.iter_chunks(chunk_edges):
        dst_local = g2l[chunk.start : chunk.stop]
        local = dst_local >= 0
        if local.any():
            kept = np.zeros(len(chunk.indices) + 1, dtype=np.int64)  # kept[i]: local-source edges among the first i
            np.cumsum(g2l[chunk.indices] >= 0, out=kept[1:])
            per_node = kept[chunk.indptr[1:]] - kept[chunk.indptr[:-1]]  # (stop - start,)
            counts[dst_local[local]] = per_node[local]
        if bar is not None:
            bar.update(len(chunk.indices))
    indptr = np.zeros(num_local + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def local_edges_of_run(graph: GraphSource, g2l: np.ndarray, lo: int, hi: int, *, chunk_edges: int,
                       bar: tqdm | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(local sources, global edge ids) of the in-edges from local sources into local nodes
    ``lo..hi-1``, chunk by chunk, in order of local destination, each destination's edges in
    CSC order: the edges of rows lo..hi-1 of the local CSC."""
    global_indptr = graph.indptr()
    for chunk in graph.iter_chunks(chunk_edges):
        dst_local = g2l[chunk.start : chunk.stop]
        in_run = (dst_local >= lo) & (dst_local < hi)
        if in_run.any():
            edges = np.flatnonzero(np.repeat(in_run, np.diff(chunk.indptr)))
            sources = g2l[chunk.indices[edges]]
            keep = sources >= 0
            yield sources[keep].astype(np.int64), edges[keep] + int(global_indptr[chunk.start])
        if bar is not None:
            bar.update(len(chunk.indices))
