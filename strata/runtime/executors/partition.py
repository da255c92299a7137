"""One rank's piece of the graph for graph-parallel training, built in memory.

A stand-in until the partitioners' ``build`` output (``partitions/<name>/part-<k>/``) is
read instead: from a whole CSC graph and a part id per node it derives what one rank needs.
Local node ids put the owned nodes first (sorted by global id), then the 1-hop halo grouped
by owning rank (sorted by global id within each owner)::

    local id   0 .. num_owned-1          num_owned .. num_owned+num_halo-1
               owned nodes (dst and src)  halo nodes (src only), owner 0's, owner 1's, ...

The local CSC holds every in-edge of every owned node, so a graph layer on it computes the
owned nodes' outputs exactly, given the halo nodes' current inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LocalPartition:
    rank: int
    num_parts: int
    owned: np.ndarray
    """Global ids of the owned nodes, sorted.  (num_owned,)"""
    halo: np.ndarray
    """Global ids of the halo nodes, grouped by owner.  (num_halo,)"""
    indptr: np.ndarray
    """Local CSC offsets over the owned nodes.  (num_owned + 1,)"""
    indices: np.ndarray
    """Local source id of every in-edge of the owned nodes.  (num_local_edges,)"""
    send_index: np.ndarray
    """Local ids of owned nodes other ranks keep in their halo, grouped by that rank."""
    send_counts: tuple[int, ...]
    """Rows sent to each rank (0 to self)."""
    recv_counts: tuple[int, ...]
    """Halo rows received from each rank (0 from self)."""

    @property
    def num_owned(self) -> int:
        return len(self.owned)

    @property
    def num_halo(self) -> int:
        return len(self.halo)


def local_partition(
    indptr: np.ndarray, indices: np.ndarray, assignment: np.ndarray, rank: int, *, num_parts: int | None = None
) -> LocalPartition:
    """The piece of the CSC graph ``(indptr, indices)`` that part ``rank`` of ``assignment`` owns."""
    num_nodes = len(indptr) - 1
    num_parts = num_parts or (int(assignment.max()) + 1 if num_nodes else 1)
    dst = np.repeat(np.arange(num_nodes), np.diff(indptr))
    src_part, dst_part = assignment[indices], assignment[dst]
    cut = src_part != dst_part
    # Pairs (needing part, needed node); unique sorts them by part, then node id.
    needs = np.unique(np.stack([dst_part[cut], indices[cut]]), axis=1) if cut.any() else np.zeros((2, 0), np.int64)
    wanted_by, wanted = needs[0], needs[1]
    owner = assignment[wanted]

    owned = np.flatnonzero(assignment == rank)
    mine = wanted_by == rank
    halo = wanted[mine][np.lexsort((wanted[mine], owner[mine]))]
    to_local = np.full(num_nodes, -1, dtype=np.int64)
    to_local[owned] = np.arange(len(owned))
    to_local[halo] = len(owned) + np.arange(len(halo))

    starts, counts = indptr[owned], indptr[owned + 1] - indptr[owned]
    local_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    edge_ids = np.repeat(starts - local_indptr[:-1], counts) + np.arange(local_indptr[-1])
    local_indices = to_local[indices[edge_ids]]

    outgoing = owner == rank  # already sorted by needing part, then node id
    send_index = to_local[wanted[outgoing]]
    send_counts = np.bincount(wanted_by[outgoing], minlength=num_parts)
    recv_counts = np.bincount(owner[mine], minlength=num_parts)
    return LocalPartition(
        rank=rank,
        num_parts=num_parts,
        owned=owned,
        halo=halo,
        indptr=local_indptr,
        indices=local_indices,
        send_index=send_index,
        send_counts=tuple(int(c) for c in send_counts),
        recv_counts=tuple(int(c) for c in recv_counts),
    )
