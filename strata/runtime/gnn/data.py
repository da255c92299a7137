"""Loading a graph data set from a store into memory for training."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from strata.graph.block import Block
from strata.graph.csc import with_self_loops
from strata.runtime.config import DataConfig
from strata.storage import layout
from strata.storage.compact import compact_csc, compact_labels
from strata.storage.rows import normalize_rows
from strata.storage.store import DatasetStore


@dataclass
class NodeData:
    """A whole node-classification data set in memory."""

    graph: object
    """A :class:`strata.graph.Block` of the whole graph (tests may still hand a DGLGraph)."""
    feat: Tensor
    label: Tensor
    """(N,) class ids: int64, or a smaller integer type for runs that only sample (see
    :func:`load_node_data`'s ``compact``): cast to int64 where a loss or comparison takes them."""
    splits: dict[str, Tensor] = field(default_factory=dict)
    num_classes: int = 0


def to_block(indptr: np.ndarray, indices: np.ndarray, *, self_loops: bool) -> Block:
    """The whole graph as a Block over its CSC (in-edges grouped by destination); with
    ``self_loops`` exactly one per node, last in its row (the CSC :func:`to_dgl` gives). The
    arrays were bounds-checked when the store was opened. int32 ``indices`` stay int32: a
    compact Block, for samplers only (:attr:`strata.graph.block.Block.indices`)."""
    compact = indices.dtype == np.int32
    if self_loops:
        indptr, indices = with_self_loops(indptr, indices)  # keeps int32 ids int32
    return Block.from_csc(indptr, indices, check=False, compact=compact)


def to_dgl(indptr: np.ndarray, indices: np.ndarray, num_nodes: int, *, self_loops: bool) -> object:
    """A DGLGraph from CSC arrays (in-edges grouped by destination), for tests and tools that
    want DGL's graph; training uses :func:`to_block` and runs without DGL."""
    from strata._dgl import dgl

    graph = dgl.graph(
        ("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), torch.empty(0, dtype=torch.int64))),
        num_nodes=num_nodes,
    )
    if self_loops:
        graph = dgl.add_self_loop(dgl.remove_self_loop(graph))
    return graph


def load_node_data(cfg: DataConfig, *, self_loops: bool, load_features: bool = True, spill: bool = True,
                   compact: bool | None = None) -> NodeData:
    """The data set in memory; with ``load_features=False`` the features stay out of memory,
    for training whose batches read them from the store: spilled to a memory-mapped file (see
    :func:`spilled_features`) for a full-graph evaluation, or with ``spill=False`` not at all
    (``feat`` is then (N, 0): a sampled evaluation reads its rows from the store too).

    ``compact`` (default: ``not spill``, the runs that evaluate on sampled neighbourhoods, where
    nothing computes over the whole graph) loads the graph's src ids as int32 below 2**31 nodes
    (a compact Block that samplers walk; kernels take :meth:`Block.with_int64_indices`) and the
    labels in the smallest integer type that holds the classes (cast to int64 per batch), each
    read chunk by chunk from the store (:mod:`strata.storage.compact`): 4 bytes an edge and
    up to 7 a node less than int64."""
    store = DatasetStore.open(cfg.store)
    compact = not spill if compact is None else compact
    indptr, indices = compact_csc(store) if compact else store.csc()
    if load_features:
        feat = torch.from_numpy(store.features())
        if cfg.normalize_features:
            feat = normalize_rows(feat)
    elif spill:
        feat = spilled_features(store, normalize=cfg.normalize_features)
    else:
        feat = torch.empty((store.meta.num_nodes, 0), dtype=torch.float32)
    return NodeData(
        graph=to_block(indptr, indices, self_loops=self_loops),
        feat=feat,
        label=torch.from_numpy(compact_labels(store) if compact else store.labels()),
        splits={name: torch.from_numpy(store.split(name)) for name in ("train", "valid", "test")},
        num_classes=store.meta.num_classes,
    )


def spilled_features(store: DatasetStore, *, normalize: bool = False) -> Tensor:
    """The feature matrix as a tensor over a memory-mapped local file, not held in memory.

    The store's feature array is streamed chunk by chunk into an unnamed temporary file
    (deleted once mapped; the mapping keeps it until the tensor is freed), so only pages that
    are touched (full-graph evaluation) are read back, by the page cache, on demand.
    """
    import tempfile

    rows, dim = store.meta.num_nodes, store.meta.feat_dim
    with tempfile.NamedTemporaryFile(prefix="strata-feat-", suffix=".f32") as spill:
        # Plain writes, not through the mapping: written pages never count as this process's memory.
        for _, block in store.iter_blocks(layout.FEAT):
            block = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            if normalize:
                block = normalize_rows(block)
            spill.write(block.numpy().tobytes())
        spill.flush()
        feat = np.memmap(spill.name, dtype=np.float32, mode="c", shape=(rows, dim))
    return torch.from_numpy(feat)
