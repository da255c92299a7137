"""CSC helpers: the in-edges of a set of nodes, induced subgraphs, self loops.

A graph in CSC form is ``(indptr, indices)``, both int64: the in-edges of node v are
``indices[indptr[v]:indptr[v + 1]]`` (their source ids), so an edge's id is its position in
``indices``. Everything here is numpy arithmetic on those two arrays; nothing reads files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def edge_dst(indptr: np.ndarray) -> np.ndarray:
    """The destination of every edge.  (E,) int64"""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def edge_ranges(indptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The in-edges of ``nodes``, grouped by node in the given order: ``(offsets, edge_ids)``.

    ``edge_ids`` are positions in ``indices``; node ``nodes[i]``'s in-edges are
    ``edge_ids[offsets[i]:offsets[i + 1]]``, so ``offsets`` is the CSC of the rows of ``nodes``.
    """
    starts = indptr[nodes]
    counts = indptr[nodes + 1] - starts
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)  # (len(nodes) + 1,)
    np.cumsum(counts, out=offsets[1:])
    # arange(total) shifted, per node, from its first output slot to its first edge.
    edge_ids = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1], dtype=np.int64)
    return offsets, edge_ids


@dataclass
class Subgraph:
    """The CSC of the subgraph induced by some nodes, renumbered by their position."""

    indptr: np.ndarray  # (n_sub + 1,) int64
    indices: np.ndarray  # (E_sub,) int64 local source ids
    edge_ids: np.ndarray  # (E_sub,) int64 position of each edge in the whole graph's indices


def induced_subgraph(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, scratch: np.ndarray | None = None) -> Subgraph:
    """Every edge whose destination and source are both in ``nodes``, in the whole graph's CSC
    order; node ``nodes[i]`` becomes local node i (``nodes`` need not be sorted).

    Only the in-edges of ``nodes`` are read. ``scratch``, for callers that cut many subgraphs
    of one large graph, is an int64 array of N entries, all -1; it is returned all -1.
    """
    g2l = np.full(len(indptr) - 1, -1, dtype=np.int64) if scratch is None else scratch
    n_sub = len(nodes)
    g2l[nodes] = np.arange(n_sub, dtype=np.int64)
    try:
        offsets, eids = edge_ranges(indptr, nodes)
        sources = g2l[indices[eids]]
        keep = sources >= 0
        counts = np.bincount(edge_dst(offsets)[keep], minlength=n_sub)
        sub_indptr = np.zeros(n_sub + 1, dtype=np.int64)
        np.cumsum(counts, out=sub_indptr[1:])
        return Subgraph(sub_indptr, sources[keep], eids[keep])
    finally:
        g2l[nodes] = -1


def with_self_loops(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSC with exactly one self loop per node: every existing self loop dropped, the other
    in-edges in their order, and each node's own loop last in its row.

    This is the CSC of ``dgl.add_self_loop(dgl.remove_self_loop(g))`` (a test holds the two
    equal), so training on the DGL graph and on these arrays walks the same edges.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices)
    if indices.dtype != np.int32:  # int32 src ids (a compact graph) stay int32
        indices = indices.astype(np.int64, copy=False)
    n = len(indptr) - 1
    dst = edge_dst(indptr)
    keep = indices != dst
    counts = np.bincount(dst[keep], minlength=n) + 1
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    new_indices = np.empty(new_indptr[-1], dtype=indices.dtype)
    loop_at = new_indptr[1:] - 1
    is_loop = np.zeros(len(new_indices), dtype=bool)
    is_loop[loop_at] = True
    new_indices[loop_at] = np.arange(n, dtype=indices.dtype)
    new_indices[~is_loop] = indices[keep]
    return new_indptr, new_indices


def graph_csc(graph: object) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` of a whole-graph Block or a DGLGraph's in-edges, as the model sees
    them (self loops included where the graph has them), sharing the graph's memory."""
    if hasattr(graph, "adj_tensors"):
        indptr, indices, _ = graph.adj_tensors("csc")  # type: ignore[attr-defined]
    else:
        indptr, indices = graph.indptr, graph.indices  # type: ignore[attr-defined]
    return indptr.cpu().numpy(), indices.cpu().numpy()
