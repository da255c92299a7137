"""One rank's share of a node-classification data set, for graph-parallel training.

A graph_parallel rank computes only its owned nodes, so it needs their features and labels,
the global degrees of its owned and halo nodes (the GCN normalisation reads them), and which
of its nodes belong to each split. :func:`load_part` reads exactly that from the store and a
stored partition: the features of the owned nodes are gathered chunk-run by chunk-run, and the
edges are walked in bounded chunks to count degrees. A rank's memory is O(N) for labels and
degrees plus its own part, never the whole feature matrix or edge list, so a graph whose
features outgrow one machine trains once it is cut into enough parts.

:func:`part_data_in_memory` cuts the same share out of a :class:`NodeData` already in memory
(small graphs, and parts assigned in memory rather than stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strata.errors import ConfigError
from strata.graph.block import Block
from strata.graph.csc import edge_dst
from strata.partitioners.format import open_partition
from strata.partitioners.graph import StoreGraph
from strata.runtime.config import DataConfig
from strata.runtime.dist.comm import Comm
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.executors.blocks import degrees, graph_block
from strata.runtime.gnn.executors.partition import LocalPartition, from_stored_part
from strata.storage import layout
from strata.storage.rows import ChunkedRows, normalize_rows
from strata.storage.store import DatasetStore

SPLITS = ("train", "valid", "test")


@dataclass
class PartData:
    """What one graph-parallel rank trains on: its owned nodes' share of the data set."""

    feat: Tensor
    """Features of the owned nodes, in the order of ``LocalPartition.owned``.  (num_owned, feat_dim)"""
    label: Tensor
    """Labels of the owned nodes.  (num_owned,)"""
    splits: dict[str, Tensor]
    """Owned members of each split, as positions among the owned nodes."""
    split_sizes: dict[str, int]
    """Size of each split over the whole graph (a loss is a sum over parts / this)."""
    in_deg: np.ndarray
    """In-degree of each owned node in the graph the model sees (self loops included).  (num_owned,)"""
    out_deg: np.ndarray
    """Out-degree of each owned, then halo node, likewise.  (num_owned + num_halo,)"""
    num_nodes: int


def _positions(owned: np.ndarray, members: np.ndarray) -> Tensor:
    """Positions in sorted ``owned`` of the ``members`` that are owned."""
    members = np.asarray(members, dtype=np.int64)
    if not len(owned):
        return torch.empty(0, dtype=torch.int64)
    pos = np.minimum(np.searchsorted(owned, members), len(owned) - 1)
    return torch.from_numpy(pos[owned[pos] == members].astype(np.int64))


def part_data_in_memory(data: NodeData, part: LocalPartition, graph: Block | None = None) -> PartData:
    """The share of ``part`` cut from a data set held whole in memory; ``graph`` is its graph
    as a Block where the caller has it already."""
    owned = torch.from_numpy(part.owned)
    out_deg, in_deg = degrees(graph_block(data.graph) if graph is None else graph)
    return PartData(
        feat=data.feat[owned],
        label=data.label[owned],
        splits={name: _positions(part.owned, ids.numpy()) for name, ids in data.splits.items()},
        split_sizes={name: len(ids) for name, ids in data.splits.items()},
        in_deg=in_deg[part.owned],
        out_deg=out_deg[np.concatenate([part.owned, part.halo])],
        num_nodes=int(data.feat.shape[0]),
    )


def graph_degrees(store: DatasetStore, *, self_loops: bool, chunk_edges: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """(in-degrees, out-degrees) of every node of the store's graph as the model sees it: with
    ``self_loops``, existing self loops dropped and one added per node (as
    :func:`strata.runtime.gnn.data.to_dgl` builds it). Walks the edges ``chunk_edges`` at a time."""
    graph = StoreGraph(store)
    n = graph.num_nodes
    in_deg = np.diff(graph.indptr()).astype(np.int64)
    out_deg = np.zeros(n, dtype=np.int64)
    for chunk in graph.iter_chunks(chunk_edges):
        sources = chunk.indices
        if self_loops:
            dst = chunk.start + edge_dst(chunk.indptr)
            loop = sources == dst
            in_deg[chunk.start : chunk.stop] -= np.bincount(dst[loop] - chunk.start, minlength=chunk.stop - chunk.start)
            sources = sources[~loop]
        out_deg += np.bincount(sources, minlength=n)
    if self_loops:
        in_deg += 1
        out_deg += 1
    return in_deg, out_deg


def load_part(
    data_cfg: DataConfig, partition: str, comm: Comm, *, self_loops: bool, read_bytes: int = 8 << 20
) -> tuple[LocalPartition, PartData]:
    """This rank's part of the stored partition ``partition`` and its share of the data set,
    read without loading the whole graph or feature matrix. ``read_bytes`` bounds each read of
    feature chunks. Every rank must call this: the ranks exchange their halo ids."""
    store = DatasetStore.open(data_cfg.store)
    parts = open_partition(store, partition)
    if parts.num_parts != comm.world_size:
        raise ConfigError(
            f"train.partition '{partition}' has {parts.num_parts} parts but this job has {comm.world_size} "
            f"processes; start {parts.num_parts} processes, or build a partition with "
            f"'strata partition {data_cfg.store} --parts {comm.world_size} --name NAME'"
        )
    part = from_stored_part(parts.part(comm.rank), parts.assignment(), comm, self_loops=self_loops)
    # Owned ids are sorted: only the chunks that hold them are read.
    feat = torch.from_numpy(ChunkedRows(store, layout.FEAT, max_read_bytes=read_bytes).gather_sorted(part.owned))
    if data_cfg.normalize_features:
        feat = normalize_rows(feat)
    in_deg, out_deg = graph_degrees(store, self_loops=self_loops)
    splits = {name: store.split(name) for name in SPLITS}
    return part, PartData(
        feat=feat,
        label=torch.from_numpy(store.labels()[part.owned]),
        splits={name: _positions(part.owned, ids) for name, ids in splits.items()},
        split_sizes={name: len(ids) for name, ids in splits.items()},
        in_deg=in_deg[part.owned],
        out_deg=out_deg[np.concatenate([part.owned, part.halo])],
        num_nodes=store.meta.num_nodes,
    )
