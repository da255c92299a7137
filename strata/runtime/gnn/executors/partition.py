"""One rank's piece of the graph for graph-parallel training.

Two sources give the same :class:`LocalPartition`: :func:`local_partition` derives it in
memory from the whole CSC graph and a part id per node (every rank can compute every
rank's halo, so no communication); :func:`from_stored_part` reads one part written by
``strata partition`` (``partitions/<name>/part-<k>/``) and learns, with one id exchange,
which of its owned nodes the other ranks hold as halo.
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
import torch

from strata.errors import PartitionError
from strata.graph.csc import edge_dst, edge_ranges, with_self_loops
from strata.partitioners.format import Partition
from strata.runtime.dist.comm import Comm


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
    src_part, dst_part = assignment[indices], assignment[edge_dst(indptr)]
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

    local_indptr, edge_ids = edge_ranges(indptr, owned)
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


def from_stored_part(part: Partition, assignment: np.ndarray, comm: Comm, *, self_loops: bool) -> LocalPartition:
    """The :class:`LocalPartition` of a part built by the partitioners, for rank ``comm.rank``.

    Stored parts hold the store's graph, which has no self loops; ``self_loops`` adds one per
    owned node (replacing any already there), as :func:`strata.runtime.gnn.data.to_dgl` does for
    the whole graph. Every rank must call this: it exchanges the halo ids with their owners.
    """
    num_owned = part.num_owned
    owned = part.owned
    hop1 = part.local_to_global[num_owned : num_owned + (part.halo_per_hop[0] if part.halo_per_hop else 0)]
    owner = assignment[hop1]
    if (owner == comm.rank).any() or not np.array_equal(assignment[owned], np.full(num_owned, comm.rank)):
        raise PartitionError(f"part {part.part_id} does not match the partition's assignment for rank {comm.rank}")
    order = np.lexsort((hop1, owner))
    halo = hop1[order]
    # Stored local ids -> ours: owned keep theirs, hop-1 halo nodes are regrouped by owner.
    renumber = np.full(part.num_local, -1, dtype=np.int64)
    renumber[:num_owned] = np.arange(num_owned)
    renumber[num_owned + order] = num_owned + np.arange(len(halo))
    indptr = part.indptr[: num_owned + 1].astype(np.int64)
    indices = renumber[part.indices[: indptr[-1]]]
    if (indices < 0).any():
        raise PartitionError(f"part {part.part_id}: an owned node has an in-neighbour outside its 1-hop halo")
    if self_loops:
        indptr, indices = with_self_loops(indptr, indices)

    recv_counts = np.bincount(owner, minlength=comm.world_size)
    ones = [1] * comm.world_size
    send_counts = comm.all_to_all_single(torch.from_numpy(recv_counts.astype(np.int64)), ones, ones).numpy()
    requested = comm.all_to_all_single(torch.from_numpy(halo.astype(np.int64)), recv_counts.tolist(), send_counts.tolist())
    requested = requested.numpy()
    send_index = np.searchsorted(owned, requested)
    if len(requested) and (send_index.max() >= len(owned) or not np.array_equal(owned[send_index], requested)):
        raise PartitionError(f"rank {comm.rank} was asked for nodes it does not own: the parts disagree; rebuild the partition")
    return LocalPartition(
        rank=comm.rank,
        num_parts=comm.world_size,
        owned=owned,
        halo=halo,
        indptr=indptr,
        indices=indices,
        send_index=send_index.astype(np.int64),
        send_counts=tuple(int(c) for c in send_counts),
        recv_counts=tuple(int(c) for c in recv_counts),
    )
