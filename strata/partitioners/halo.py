"""The halos of all parts, found by streaming the graph's in-edges from the store.

Message passing into a node reads its in-neighbours, so the halo of a part is upstream:
the nodes owned elsewhere from which an owned node can be reached in at most h edges. With
that halo, h layers of message passing on the part's local graph (the subgraph induced by its
owned and halo nodes, :func:`strata.graph.csc.induced_subgraph`) compute for owned nodes
exactly what they compute on the whole graph.

The edges are never held whole: hop t of every part is one pass over the CSC chunks, marking
the sources of in-edges into the part's ring t - 1 (its owned nodes for t = 1). A part's marks
are one byte a node; parts are taken ``mask_bytes`` worth at a time (all of them in one group
at the usual sizes: 4 parts of 64M nodes are 256 MiB of marks), each group h passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from strata.partitioners.graph import GraphSource

OWNED = 1
"""Mark of an owned node; ring t (hop t of the halo) is marked OWNED + t, 0 is neither."""
MASK_BYTES = 1 << 30
"""Bytes of per-node marks held at once: parts are grouped so their marks fit."""


@dataclass
class Halos:
    """What one scan of the graph finds: every part's rings, which nodes are in some halo, and the edge cut."""

    rings: list[list[np.ndarray]]
    """Per part, per hop 1..h, the sorted nodes first reached at that hop going upstream from the owned nodes."""
    needed: np.ndarray
    """(N,) bool: in some part's halo, hence owned elsewhere and sent there."""
    edge_cut: int
    """Stored edges whose source and destination are in different parts."""

    def size(self, part: int) -> int:
        return sum(len(ring) for ring in self.rings[part])


def stream_halos(graph: GraphSource, assignment: np.ndarray, num_parts: int, hops: int, *, chunk_edges: int,
                 mask_bytes: int = MASK_BYTES, bar: tqdm | None = None) -> Halos:
    """The ``hops``-hop upstream halos of all ``num_parts`` parts of ``assignment``, streamed
    ``chunk_edges`` at a time; memory: ``mask_bytes`` of marks, the rings found, one chunk."""
    n = graph.num_nodes
    per_group = max(1, min(num_parts, int(mask_bytes) // max(n, 1)))
    rings: list[list[np.ndarray]] = []
    needed = np.zeros(n, dtype=bool)
    cut = 0
    for first in range(0, num_parts, per_group):
        group = range(first, min(first + per_group, num_parts))
        marks = [(assignment == p).astype(np.int8) for p in group]  # (N,) each: OWNED where owned
        for hop in range(1, hops + 1):
            for chunk in graph.iter_chunks(chunk_edges):
                cut += _mark_hop(chunk.start, chunk.stop, chunk.indptr, chunk.indices, assignment, group, marks, hop,
                                 count_cut=hop == 1 and first == 0)
                if bar is not None:
                    bar.update(len(chunk.indices))
        for mark in marks:
            part_rings = [np.flatnonzero(mark == OWNED + t).astype(np.int64) for t in range(1, hops + 1)]
            needed |= mark > OWNED
            rings.append(part_rings)
        del marks
    return Halos(rings, needed, cut)


def _mark_hop(start: int, stop: int, indptr: np.ndarray, sources: np.ndarray, assignment: np.ndarray, group: range,
              marks: list[np.ndarray], hop: int, *, count_cut: bool) -> int:
    """Mark ring ``hop`` of every part of ``group`` among the sources of one chunk's in-edges
    (destinations ``start..stop-1``); returns the chunk's cut edges when ``count_cut``."""
    degree = np.diff(indptr)
    if hop == 1:  # ring 1 of part p: sources owned elsewhere of in-edges into p's owned nodes
        dst_part = np.repeat(assignment[start:stop], degree)
        crossing = assignment[sources] != dst_part
        cut_sources, cut_dst_part = sources[crossing], dst_part[crossing]
        for p, mark in zip(group, marks):
            mark[cut_sources[cut_dst_part == p]] = OWNED + 1
        return int(np.count_nonzero(crossing)) if count_cut else 0
    for mark in marks:
        into_frontier = np.repeat(mark[start:stop] == OWNED + hop - 1, degree)
        found = sources[into_frontier]
        mark[found[mark[found] == 0]] = OWNED + hop
    return 0
