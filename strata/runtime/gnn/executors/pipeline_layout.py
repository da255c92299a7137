"""Where each rank of a layer pipeline sits, and which rows of the graph it computes and sends.

A job of ``world = stages x groups`` processes runs ``stages`` pipeline stages; each stage
runs its layers graph-parallel over ``groups`` ranks (G), one part of the graph each. Ranks
are stage-major, so a stage's ranks are neighbours::

    rank = stage * G + part          stage 0: ranks 0..G-1, stage 1: ranks G..2G-1, ...

G = 1 is the plain layer pipeline (every stage holds the whole graph); stages = 1 is plain
graph parallelism. Every stage cuts the graph into the same G parts, and every part into the
same C chunks, so a unit of work, (chunk c of part g), has the same nodes at every stage:
rank (s, g) sends its unit's rows to rank (s + 1, g) and nowhere else across the boundary.

Rows of a stage's history tables, for rank (s, g): the nodes of part g, then its 1-hop halo
grouped by owner (the layout of :class:`LocalPartition`, so a sync pass is exactly
graph-parallel training over the stage's G ranks). A unit's block has these source nodes::

    dst     the unit's own nodes: computed here, fresh, carry gradient
    recv    halo nodes of part g in chunk c of their own part: computed at the same time by
            the other ranks of the stage and received fresh (all_to_all), carry gradient
    stale   every other in-neighbour: read from the history table (no gradient)

Over the C chunks of a pass, ``recv`` covers part g's halo exactly once, so the stage's
within-group traffic per pass is the graph-parallel halo, however many chunks there are.

Everything here is numpy arithmetic, checked by tests without processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from strata.errors import ConfigError
from strata.graph.csc import edge_ranges, induced_subgraph
from strata.runtime.gnn.executors.partition import LocalPartition, local_partition
from strata.storage.sorted_unique import sorted_unique


@dataclass(frozen=True)
class PipelineLayout:
    """``stages`` x ``groups`` ranks: the pipeline's shape, computed once from the config."""

    stages: int
    groups: int
    """Ranks per stage (G), each computing one part of the graph."""

    @classmethod
    def of(cls, stages: int, world_size: int) -> PipelineLayout:
        """The layout of ``world_size`` processes in ``stages`` stages (0 = one stage per process)."""
        stages = stages or world_size
        if stages < 1 or world_size % stages:
            fits = [d for d in range(1, world_size + 1) if world_size % d == 0]
            raise ConfigError(
                f"pipeline.stages is {stages} but the job has {world_size} processes: each stage runs "
                f"graph-parallel over processes / stages ranks, so the number of processes must be a multiple "
                f"of pipeline.stages; use pipeline.stages in {fits} (0 = {world_size}), or start a multiple of {stages} processes"
            )
        return cls(stages=stages, groups=world_size // stages)

    @property
    def world_size(self) -> int:
        return self.stages * self.groups

    def stage_of(self, rank: int) -> int:
        return rank // self.groups

    def part_of(self, rank: int) -> int:
        return rank % self.groups

    def rank_of(self, stage: int, part: int) -> int:
        return stage * self.groups + part

    def stage_ranks(self) -> list[list[int]]:
        """The ranks of each stage's graph-parallel group, stage by stage."""
        return [[self.rank_of(s, g) for g in range(self.groups)] for s in range(self.stages)]


@dataclass(frozen=True)
class UnitPlan:
    """One rank's share of one unit (a chunk, or the whole part): what to compute, exchange and read."""

    dst: np.ndarray
    """Global ids of the nodes computed, sorted.  (num_dst,)"""
    dst_rows: np.ndarray
    """Their rows in the history tables.  (num_dst,)"""
    recv_rows: np.ndarray
    """Table rows of the halo nodes received fresh from the group, grouped by owner.  (num_recv,)"""
    stale_rows: np.ndarray
    """Table rows read from history.  (num_stale,)"""
    send_pos: np.ndarray
    """Positions in ``dst`` of the rows sent to the group, grouped by destination part."""
    send_counts: tuple[int, ...]
    recv_counts: tuple[int, ...]
    indptr: np.ndarray
    """Block CSC over the dst nodes.  (num_dst + 1,)"""
    indices: np.ndarray
    """Block source of every in-edge: dst, then recv, then stale positions."""
    src: np.ndarray
    """Global ids of the block's source nodes: dst, recv, stale."""


def plan_units(
    indptr: np.ndarray, indices: np.ndarray, part_of: np.ndarray, chunk_of: np.ndarray, part: int, num_parts: int
) -> tuple[LocalPartition, UnitPlan, list[UnitPlan]]:
    """Part ``part``'s tables (as a :class:`LocalPartition` of the G-part cut), its whole-part
    unit, and one unit per chunk. ``chunk_of`` numbers chunks within each part."""
    gp = local_partition(indptr, indices, part_of.astype(np.int64), part, num_parts=num_parts)
    table_ids = np.concatenate([gp.owned, gp.halo])
    num_chunks = int(chunk_of.max()) + 1 if len(chunk_of) else 1
    dest = np.repeat(np.arange(num_parts), gp.send_counts)  # destination part of each send_index entry
    whole = _unit(gp, table_ids, part_of, dest, None, chunk_of)
    return gp, whole, [_unit(gp, table_ids, part_of, dest, c, chunk_of) for c in range(num_chunks)]


def _unit(
    gp: LocalPartition, table_ids: np.ndarray, part_of: np.ndarray, dest: np.ndarray, chunk: int | None, chunk_of: np.ndarray
) -> UnitPlan:
    num_owned, num_parts = gp.num_owned, gp.num_parts

    def member(ids: np.ndarray) -> np.ndarray:
        return np.ones(len(ids), dtype=bool) if chunk is None else chunk_of[ids] == chunk

    dst_rows = np.flatnonzero(member(gp.owned))
    in_recv = member(gp.halo)
    recv_rows = num_owned + np.flatnonzero(in_recv)
    recv_counts = np.bincount(part_of[gp.halo[in_recv]], minlength=num_parts)
    position = np.full(num_owned, -1, dtype=np.int64)
    position[dst_rows] = np.arange(len(dst_rows))
    sending = position[gp.send_index] >= 0
    send_pos = position[gp.send_index[sending]]
    send_counts = np.bincount(dest[sending], minlength=num_parts)

    # In-edges of the dst nodes, their sources as table rows, then as block positions.
    indptr, edge_ids = edge_ranges(gp.indptr, dst_rows)
    sources = gp.indices[edge_ids]
    block_pos = np.full(len(table_ids), -1, dtype=np.int64)
    block_pos[dst_rows] = np.arange(len(dst_rows))
    block_pos[recv_rows] = len(dst_rows) + np.arange(len(recv_rows))
    stale_rows = sorted_unique(sources[block_pos[sources] < 0])
    block_pos[stale_rows] = len(dst_rows) + len(recv_rows) + np.arange(len(stale_rows))
    return UnitPlan(
        dst=gp.owned[dst_rows],
        dst_rows=dst_rows,
        recv_rows=recv_rows,
        stale_rows=stale_rows,
        send_pos=send_pos,
        send_counts=tuple(int(c) for c in send_counts),
        recv_counts=tuple(int(c) for c in recv_counts),
        indptr=indptr,
        indices=block_pos[sources],
        src=table_ids[np.concatenate([dst_rows, recv_rows, stale_rows])],
    )


def chunks_within_parts(
    indptr: np.ndarray,
    indices: np.ndarray,
    part_of: np.ndarray,
    num_chunks: int,
    cut: Callable[[tuple[np.ndarray, np.ndarray], int], np.ndarray],
) -> np.ndarray:
    """Chunk id (0..num_chunks-1, within its part) of every node: each part's induced subgraph
    cut by ``cut(csc, k)`` into ``num_chunks`` pieces (fewer when the part has fewer nodes),
    so that the ranks of a stage get chunks of similar size at the same time."""
    chunk_of = np.zeros(len(indptr) - 1, dtype=np.int64)
    for g in range(int(part_of.max()) + 1 if len(part_of) else 0):
        nodes = np.flatnonzero(part_of == g)
        k = min(num_chunks, len(nodes))
        if k > 1:
            sub = induced_subgraph(indptr, indices, nodes)
            chunk_of[nodes] = cut((sub.indptr, sub.indices), k)
    return chunk_of
