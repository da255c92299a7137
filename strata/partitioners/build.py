"""``build``: turn an assignment into per-part local graphs with halos, and write them.

The build streams, like the assignment: it reads the store's CSC chunk by chunk
(:meth:`GraphSource.iter_chunks`), finds every part's halo in ``halo_hops`` passes
(:mod:`strata.partitioners.halo`), then cuts and writes one part at a time, its edges
appended to the part's files as they come (:mod:`strata.partitioners.local_graph`,
:mod:`strata.partitioners.part_files`). Peak memory is :func:`build_memory_bytes`: per-node
arrays and one chunk, never the edges of the graph or of a part.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from strata.errors import PartitionError
from strata.partitioners.assign import assign_with
from strata.partitioners.config import PartitionConfig
from strata.partitioners.format import PartitionInfo, PartitionWriter, check_free, graph_checksum
from strata.partitioners.graph import StoreGraph
from strata.partitioners.halo import MASK_BYTES, Halos, stream_halos
from strata.partitioners.local_graph import count_local_in_edges, local_edges_of_run, local_map
from strata.partitioners.part_files import write_part
from strata.partitioners.report import Balance, PartitionReport, peak_rss_bytes
from strata.storage import fs
from strata.storage.store import DatasetStore

log = logging.getLogger(__name__)


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
    chunk_edges: int = 0,
    mask_bytes: int = MASK_BYTES,
) -> PartitionReport:
    """Write partition ``name`` of ``store`` from ``assignment`` and return its quality report.

    ``num_parts`` defaults to ``assignment.max() + 1``; pass it when a part may be empty.
    ``chunk_edges`` (default :data:`BUILD_CHUNK_EDGES`) in-edges are read at once, and the
    halo marks of parts take at most ``mask_bytes`` (one part's at least).
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

    chunk_edges = int(chunk_edges) or BUILD_CHUNK_EDGES
    passes = _passes(n, k, int(halo_hops), mask_bytes)
    with tqdm(total=passes * graph.num_edges, desc="build: halos", unit="edge", unit_scale=True, disable=not progress) as bar:
        halos = stream_halos(graph, assignment, k, int(halo_hops), chunk_edges=chunk_edges, mask_bytes=mask_bytes, bar=bar)
        sizes = np.bincount(assignment, minlength=k)
        budget = build_memory_bytes(n, k, halo_volume=sum(halos.size(p) for p in range(k)), chunk_edges=chunk_edges,
                                    mask_bytes=mask_bytes, largest_local=max(int(sizes[p]) + halos.size(p) for p in range(k)))
        log.info("partition build: at most %.2f GiB over the process's base (%d passes over %s edges)",
                 budget / 2**30, passes, f"{graph.num_edges:,}")
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
        with PartitionWriter(store, info, overwrite) as writer:
            for p in range(k):
                bar.set_description(f"build: part {p + 1}/{k}")
                _write_part(writer, graph, p, np.flatnonzero(assignment == p), halos, chunk_edges, bar)
            report = _report(graph, info, assignment, halos)
            report.assign_seconds = float(assign_seconds)
            report.build_seconds = time.perf_counter() - started
            report.peak_rss_bytes = peak_rss_bytes()
            writer.commit(assignment, report.to_json())
    return report


BUILD_CHUNK_EDGES = 1 << 22
"""In-edges read from the store at once while building (a chunk's temporaries: ~40 bytes an edge)."""


def build_memory_bytes(num_nodes: int, num_parts: int, *, halo_volume: int, largest_local: int,
                       chunk_edges: int = BUILD_CHUNK_EDGES, mask_bytes: int = MASK_BYTES) -> int:
    """What the build holds at once, beyond the process before it, in bytes:

    * 13 bytes a node: the row pointer (8), the assignment (4), the in-some-halo flags (1);
    * the halo marks of a group of parts, one byte a node each (at most ``mask_bytes``);
    * the rings found, 8 bytes a halo node of every part (``halo_volume``);
    * one part's local id map (4 bytes a node of the graph) and its local rows: ids, row
      pointer and edge counts, 24 bytes a local node (``largest_local``: owned + halo);
    * one chunk: ~80 bytes an edge (its sources, read and carried over, and the masks and
      gathers of one pass), 320 MiB at the default 4M edges.

    Never a per-edge array of the graph or of a part. At 64M nodes, 514M edges and 4 parts
    (replication 1.81) that is about 2.6 GiB: the per-node arrays dominate.
    """
    n = int(num_nodes)
    marks = min(int(num_parts), max(1, int(mask_bytes) // max(n, 1))) * n
    return 17 * n + marks + 8 * int(halo_volume) + 24 * int(largest_local) + 80 * int(chunk_edges)


def _passes(n: int, k: int, hops: int, mask_bytes: int) -> int:
    """Passes over the edges the build makes: ``hops`` per group of parts for the halos, then
    per part one to count its local edges and one per run of local ids (owned, each hop)."""
    groups = -(-k // max(1, min(k, mask_bytes // max(n, 1))))
    return groups * hops + k * (hops + 2)


def _write_part(writer: PartitionWriter, graph: StoreGraph, p: int, owned: np.ndarray, halos: Halos, chunk_edges: int,
                bar: tqdm) -> None:
    """Cut part ``p``'s local graph from the store's chunks and write it as it streams in."""
    rings = halos.rings[p]
    local_to_global = np.concatenate([owned, *rings]).astype(np.int64)
    g2l = local_map(graph.num_nodes, local_to_global)
    indptr = count_local_in_edges(graph, g2l, len(local_to_global), chunk_edges=chunk_edges, bar=bar)
    runs = np.cumsum([0, len(owned), *(len(ring) for ring in rings)])  # local ids of owned, then of each hop

    def edges() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo, hi in zip(runs[:-1].tolist(), runs[1:].tolist()):
            yield from local_edges_of_run(graph, g2l, lo, hi, chunk_edges=chunk_edges, bar=bar)

    write_part(fs.join(writer.tmp, f"part-{p}"), num_owned=len(owned), halo_per_hop=[len(ring) for ring in rings],
               local_to_global=local_to_global, indptr=indptr, boundary=halos.needed[owned], edges=edges())


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


def _report(graph: StoreGraph, info: PartitionInfo, assignment: np.ndarray, halos: Halos) -> PartitionReport:
    k, n, m = info.num_parts, info.num_nodes, info.num_edges
    degree = np.diff(graph.indptr())
    volume = sum(halos.size(p) for p in range(k))
    train = graph.train_ids()
    return PartitionReport(
        name=info.name,
        method=info.method,
        num_parts=k,
        halo_hops=info.halo_hops,
        num_nodes=n,
        num_edges=m,
        edge_cut=halos.edge_cut,
        edge_cut_fraction=halos.edge_cut / m if m else 0.0,
        communication_volume=volume,
        replication_factor=(n + volume) / n,
        nodes=Balance.of(np.bincount(assignment, minlength=k)),
        edges=Balance.of(np.bincount(assignment, weights=degree, minlength=k).astype(np.int64)),
        train_nodes=Balance.of(np.bincount(assignment[train], minlength=k)),
        halo=[halos.size(p) for p in range(k)],
    )


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
