"""``build``: turn an assignment into per-part local graphs with halos, and write them.

Unlike the streaming assignment, building holds the store's CSC in memory (O(N + E)),
plus the halos of all parts, which decide the boundary flags before any part is written.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from strata.errors import PartitionError
from strata.graph.csc import Subgraph, edge_dst, edge_ranges
from strata.partitioners.assign import assign_with
from strata.partitioners.config import PartitionConfig
from strata.partitioners.format import (
    Partition,
    PartitionInfo,
    PartitionWriter,
    check_free,
    graph_checksum,
)
from strata.partitioners.graph import StoreGraph
from strata.partitioners.halo import upstream_halo
from strata.partitioners.report import Balance, PartitionReport, peak_rss_bytes
from strata.storage.store import DatasetStore


def build(
    store: DatasetStore | str,
    assignment: np.ndarray,
    name: str,
    halo_hops: int = 1,
    overwrite: bool = False,
    *,
    num_parts: int | None = None,
    method: str = "",
    assign_seconds: float = 0.0,
    config: dict[str, Any] | None = None,
    progress: bool = False,
) -> PartitionReport:
    """Write partition ``name`` of ``store`` from ``assignment`` and return its quality report.

    ``num_parts`` defaults to ``assignment.max() + 1``; pass it when a part may be empty.
    """
    store = store if isinstance(store, DatasetStore) else DatasetStore.open(store)
    graph = StoreGraph(store)
    n = graph.num_nodes
    assignment = _checked_assignment(assignment, n, num_parts, store.url)
    k = int(num_parts) if num_parts is not None else int(assignment.max()) + 1
    if int(halo_hops) < 1:
        raise PartitionError(f"halo_hops must be at least 1 (owned nodes need their in-neighbours), got {halo_hops}")
    check_free(store.url, name, overwrite)
    started = time.perf_counter()

    indptr, indices = graph.csc()
    order = np.argsort(assignment, kind="stable")
    owned = np.split(order, np.cumsum(np.bincount(assignment, minlength=k))[:-1])  # each ascending
    scratch = np.zeros(n, dtype=bool)
    rings = [
        upstream_halo(indptr, indices, owned[p], int(halo_hops), scratch)
        for p in tqdm(range(k), desc="halo", unit="part", disable=not progress)
    ]
    needed = np.zeros(n, dtype=bool)  # in some part's halo, hence owned elsewhere and sent there
    for part_rings in rings:
        for ring in part_rings:
            needed[ring] = True

    info = PartitionInfo(
        name=name,
        method=method,
        num_parts=k,
        halo_hops=int(halo_hops),
        num_nodes=n,
        num_edges=graph.num_edges,
        graph_checksum=graph_checksum(store),
        config=dict(config or {}),
    )
    g2l = np.full(n, -1, dtype=np.int64)
    with PartitionWriter(store, info, overwrite) as writer:
        for p in tqdm(range(k), desc="write", unit="part", disable=not progress):
            local_to_global = np.concatenate([owned[p], *rings[p]]).astype(np.int64)
            local = _local_graph(indptr, indices, local_to_global, g2l)
            writer.write_part(
                Partition(
                    part_id=p,
                    num_owned=len(owned[p]),
                    halo_per_hop=[len(ring) for ring in rings[p]],
                    local_to_global=local_to_global,
                    indptr=local.indptr,
                    indices=local.indices,
                    edge_ids=local.edge_ids,
                    boundary=needed[owned[p]],
                )
            )
        halo_sizes = [sum(len(ring) for ring in part_rings) for part_rings in rings]
        report = _report(graph, info, assignment, indptr, indices, halo_sizes)
        report.assign_seconds = float(assign_seconds)
        report.build_seconds = time.perf_counter() - started
        report.peak_rss_bytes = peak_rss_bytes()
        writer.commit(assignment, report.to_json())
    return report


PIECE_EDGES = 1 << 22
"""In-edges scanned at once while cutting a part's local graph."""


def _local_graph(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, g2l: np.ndarray) -> Subgraph:
    """:func:`strata.graph.csc.induced_subgraph` of ``nodes`` (same arrays), scanning their
    in-edges ``PIECE_EDGES`` at a time: with random ids a part's halo is most of the graph, and
    scanning all its in-edges at once held ~40 bytes per edge of the graph in temporaries.
    ``g2l`` is an int64 array of N entries, all -1; it is returned all -1."""
    n_sub = len(nodes)
    g2l[nodes] = np.arange(n_sub, dtype=np.int64)
    try:
        ends = np.cumsum(indptr[nodes + 1] - indptr[nodes])
        cuts = [0, *np.searchsorted(ends, np.arange(PIECE_EDGES, int(ends[-1]) if n_sub else 0, PIECE_EDGES)).tolist(), n_sub]
        counts, sources, edge_ids = [], [], []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            offsets, eids = edge_ranges(indptr, nodes[lo:hi])
            local = g2l[indices[eids]]
            keep = local >= 0
            counts.append(np.bincount(edge_dst(offsets)[keep], minlength=hi - lo))
            sources.append(local[keep])
            edge_ids.append(eids[keep])
        sub_indptr = np.zeros(n_sub + 1, dtype=np.int64)
        np.cumsum(np.concatenate(counts) if counts else np.zeros(0, np.int64), out=sub_indptr[1:])
        empty = np.empty(0, np.int64)
        return Subgraph(sub_indptr, np.concatenate(sources) if sources else empty, np.concatenate(edge_ids) if edge_ids else empty)
    finally:
        g2l[nodes] = -1


def _checked_assignment(assignment: Any, n: int, num_parts: int | None, where: str) -> np.ndarray:
    a = np.asarray(assignment)
    if a.shape != (n,):
        raise PartitionError(f"an assignment for store '{where}' needs one part id per node, shape ({n},); got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise PartitionError(f"an assignment must hold integer part ids, got dtype {a.dtype}")
    top = num_parts if num_parts is not None else (int(a.max()) + 1 if n else 0)
    if n and (int(a.min()) < 0 or int(a.max()) >= top):
        raise PartitionError(f"part ids must be in 0..{top - 1}, found {int(a.min())}..{int(a.max())}")
    return a.astype(np.int32, copy=False)


def _report(
    graph: StoreGraph, info: PartitionInfo, assignment: np.ndarray, indptr: np.ndarray, indices: np.ndarray, halo_sizes: list[int]
) -> PartitionReport:
    k, n, m = info.num_parts, info.num_nodes, info.num_edges
    degree = np.diff(indptr)
    cut = _edge_cut(assignment, indptr, indices)
    train = graph.train_ids()
    volume = int(sum(halo_sizes))
    return PartitionReport(
        name=info.name,
        method=info.method,
        num_parts=k,
        halo_hops=info.halo_hops,
        num_nodes=n,
        num_edges=m,
        edge_cut=cut,
        edge_cut_fraction=cut / m if m else 0.0,
        communication_volume=volume,
        replication_factor=(n + volume) / n,
        nodes=Balance.of(np.bincount(assignment, minlength=k)),
        edges=Balance.of(np.bincount(assignment, weights=degree, minlength=k).astype(np.int64)),
        train_nodes=Balance.of(np.bincount(assignment[train], minlength=k)),
        halo=[int(h) for h in halo_sizes],
    )


def _edge_cut(assignment: np.ndarray, indptr: np.ndarray, indices: np.ndarray, step: int = 1 << 20) -> int:
    """Edges whose source and destination are in different parts, counted ``step`` destinations
    at a time so the count needs no per-edge array of the whole graph."""
    cut = 0
    for lo in range(0, len(indptr) - 1, step):
        hi = min(lo + step, len(indptr) - 1)
        dst_parts = np.repeat(assignment[lo:hi], np.diff(indptr[lo : hi + 1]))
        cut += int(np.count_nonzero(assignment[indices[indptr[lo] : indptr[hi]]] != dst_parts))
    return cut


def partition_store(store: DatasetStore | str, cfg: PartitionConfig, progress: bool = False) -> PartitionReport:
    """Assign with ``cfg.method`` and build partition ``cfg.partition_name``: what ``strata partition`` runs."""
    store = store if isinstance(store, DatasetStore) else DatasetStore.open(store)
    graph = StoreGraph(store)
    check_free(store.url, cfg.partition_name, cfg.overwrite)  # before a long assignment, not after
    started = time.perf_counter()
    assignment = assign_with(graph, cfg, progress=progress)
    assign_seconds = time.perf_counter() - started
    return build(
        store,
        assignment,
        cfg.partition_name,
        cfg.halo_hops,
        cfg.overwrite,
        num_parts=cfg.num_parts,
        method=cfg.method,
        assign_seconds=assign_seconds,
        config=dataclasses.asdict(cfg),
        progress=progress,
    )
