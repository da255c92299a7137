"""Halo and local graph of one part, computed from the global CSC held in memory.

Message passing into a node reads its in-neighbours, so the halo of a part is upstream:
the nodes owned elsewhere from which an owned node can be reached in at most h edges. With
that halo, h layers of message passing on the local graph compute for owned nodes exactly
what they compute on the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def edge_ranges(indptr: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Positions in ``indices`` of the in-edges of ``nodes``, grouped by node in the given order."""
    starts = indptr[nodes]
    lengths = indptr[nodes + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    # arange(total) shifted, per node, from its first output slot to its first edge.
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def upstream_halo(indptr: np.ndarray, indices: np.ndarray, owned: np.ndarray, hops: int, scratch: np.ndarray) -> list[np.ndarray]:
    """Per hop 1..h, the sorted nodes first reached at that hop going upstream from ``owned``.

    ``scratch`` is a bool array of N entries, all False; it is returned all False.
    """
    scratch[owned] = True
    frontier = owned
    rings = []
    for _ in range(hops):
        sources = indices[edge_ranges(indptr, frontier)]
        ring = np.unique(sources[~scratch[sources]])
        scratch[ring] = True
        rings.append(ring)
        frontier = ring
    scratch[owned] = False
    for ring in rings:
        scratch[ring] = False
    return rings


@dataclass
class LocalGraph:
    """The CSC of the subgraph induced by one part's local nodes (owned, then halo)."""

    indptr: np.ndarray  # (n_local + 1,) int64
    indices: np.ndarray  # (E_local,) int64 local source ids
    edge_ids: np.ndarray  # (E_local,) int64 position of each edge in the global graph/indices


def local_graph(indptr: np.ndarray, indices: np.ndarray, local_to_global: np.ndarray, g2l: np.ndarray) -> LocalGraph:
    """Every edge whose destination and source are both local, in global CSC order.

    ``g2l`` is an int64 array of N entries, all -1; it is returned all -1.
    """
    n_local = len(local_to_global)
    g2l[local_to_global] = np.arange(n_local, dtype=np.int64)
    try:
        eids = edge_ranges(indptr, local_to_global)
        sources = g2l[indices[eids]]
        keep = sources >= 0
        dst = np.repeat(np.arange(n_local, dtype=np.int64), np.diff(indptr)[local_to_global])
        counts = np.bincount(dst[keep], minlength=n_local)
        local_indptr = np.zeros(n_local + 1, dtype=np.int64)
        np.cumsum(counts, out=local_indptr[1:])
        return LocalGraph(local_indptr, sources[keep], eids[keep])
    finally:
        g2l[local_to_global] = -1
