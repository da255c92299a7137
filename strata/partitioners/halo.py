"""The halo of one part, computed from the global CSC held in memory.

Message passing into a node reads its in-neighbours, so the halo of a part is upstream:
the nodes owned elsewhere from which an owned node can be reached in at most h edges. With
that halo, h layers of message passing on the part's local graph (the subgraph induced by its
owned and halo nodes, :func:`strata.graph.csc.induced_subgraph`) compute for owned nodes
exactly what they compute on the whole graph.
"""

from __future__ import annotations

import numpy as np

from strata.graph.csc import edge_ranges
from strata.storage.sorted_unique import sorted_unique


def upstream_halo(indptr: np.ndarray, indices: np.ndarray, owned: np.ndarray, hops: int, scratch: np.ndarray) -> list[np.ndarray]:
    """Per hop 1..h, the sorted nodes first reached at that hop going upstream from ``owned``.

    ``scratch`` is a bool array of N entries, all False; it is returned all False.
    """
    scratch[owned] = True
    frontier = owned
    rings = []
    for _ in range(hops):
        sources = indices[edge_ranges(indptr, frontier)[1]]
        ring = sorted_unique(sources[~scratch[sources]])
        scratch[ring] = True
        rings.append(ring)
        frontier = ring
    scratch[owned] = False
    for ring in rings:
        scratch[ring] = False
    return rings
