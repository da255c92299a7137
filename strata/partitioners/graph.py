"""What partitioners read: a graph in CSC form, held in memory or streamed from a store.

Both kinds give the same view: ``num_nodes``, ``num_edges``, the row pointer (O(N) memory,
always held whole), the training node ids, and ``iter_chunks``, which walks the in-edges in
node order a bounded number of edges at a time. Streaming partitioners use only that walk,
so a store whose ``graph/indices`` does not fit in memory can still be partitioned.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from strata.errors import PartitionError
from strata.storage import layout
from strata.storage.store import DatasetStore

DEFAULT_CHUNK_EDGES = 1 << 20


@dataclass(frozen=True)
class Chunk:
    """The in-edges of destinations ``start .. stop-1``.

    In-edges of node ``start + i`` are ``indices[indptr[i]:indptr[i + 1]]`` (global source ids).
    """

    start: int
    stop: int
    indptr: np.ndarray  # (stop - start + 1,) int64, starts at 0
    indices: np.ndarray  # (indptr[-1],) int64


class GraphSource(abc.ABC):
    """A directed graph in CSC form; edges point from ``indices`` (source) to the column (destination)."""

    @property
    @abc.abstractmethod
    def num_nodes(self) -> int: ...

    @property
    @abc.abstractmethod
    def num_edges(self) -> int: ...

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """A name for messages."""

    @abc.abstractmethod
    def indptr(self) -> np.ndarray:
        """The whole CSC row pointer, (N + 1,) int64."""

    @abc.abstractmethod
    def train_ids(self) -> np.ndarray:
        """Training node ids (empty when the graph has no training split)."""

    @abc.abstractmethod
    def _edge_blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first edge id, sources) over ``indices`` in edge order."""

    def csc(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole graph as (indptr, indices); 8 bytes an edge, filled block by block (never
        two copies of the edges at once)."""
        indices = np.empty(self.num_edges, dtype=np.int64)
        for first, block in self._edge_blocks(DEFAULT_CHUNK_EDGES * 8):
            indices[first : first + len(block)] = block
        return self.indptr(), indices

    def iter_chunks(self, chunk_edges: int = DEFAULT_CHUNK_EDGES) -> Iterator[Chunk]:
        """Chunks of whole destinations in node order, each about ``chunk_edges`` edges.

        Memory is O(N + chunk_edges + the largest in-degree): a destination's in-edges are
        never split between chunks.
        """
        indptr = self.indptr()
        n = self.num_nodes
        node = 0
        carry = np.empty(0, np.int64)
        for first, block in self._edge_blocks(max(int(chunk_edges), 1)):
            edges = np.concatenate([carry, block]) if len(carry) else block
            base = first - len(carry)
            end = first + len(block)
            # Nodes node..stop-1 have all their in-edges at positions < end.
            stop = int(np.searchsorted(indptr, end, side="right")) - 1
            stop = min(stop, n)
            if stop > node:
                lo, hi = int(indptr[node]), int(indptr[stop])
                yield Chunk(node, stop, indptr[node : stop + 1] - lo, edges[lo - base : hi - base])
                carry = edges[hi - base :]
                node = stop
            else:
                carry = edges
        if node < n:
            yield Chunk(node, n, indptr[node:] - indptr[node], carry)


class CSCGraph(GraphSource):
    """A graph held in memory (tests, small graphs, graphs built in code)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, train_ids: np.ndarray | None = None, name: str = "graph") -> None:
        self._indptr = np.asarray(indptr, dtype=np.int64)
        self._indices = np.asarray(indices, dtype=np.int64)
        self._train = np.asarray(train_ids if train_ids is not None else np.empty(0), dtype=np.int64)
        self._name = name
        n = len(self._indptr) - 1
        if n < 0 or (len(self._indptr) and self._indptr[0] != 0) or self._indptr[-1] != len(self._indices):
            raise PartitionError(
                f"{name}: indptr must start at 0 and end at len(indices)={len(self._indices)}, "
                f"got {len(self._indptr)} entries ending at {self._indptr[-1] if len(self._indptr) else 'nothing'}"
            )
        if len(self._indices) and (self._indices.min() < 0 or self._indices.max() >= n):
            raise PartitionError(f"{name}: edge sources must be node ids in 0..{n - 1}")

    @property
    def num_nodes(self) -> int:
        return len(self._indptr) - 1

    @property
    def num_edges(self) -> int:
        return len(self._indices)

    @property
    def where(self) -> str:
        return self._name

    def indptr(self) -> np.ndarray:
        return self._indptr

    def train_ids(self) -> np.ndarray:
        return self._train

    def csc(self) -> tuple[np.ndarray, np.ndarray]:
        return self._indptr, self._indices

    def _edge_blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self._indices), rows):
            yield start, self._indices[start : start + rows]


class StoreGraph(GraphSource):
    """The graph of a dataset store, read through :meth:`DatasetStore.iter_blocks`."""

    def __init__(self, store: DatasetStore) -> None:
        if not store.has(layout.INDPTR) or not store.has(layout.INDICES):
            raise PartitionError(
                f"store '{store.url}' holds no graph (no {layout.INDPTR} / {layout.INDICES}); "
                "partitioning needs a graph data set: ingest one with 'strata ingest'"
            )
        self.store = store
        self._indptr: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.store.meta.num_nodes)

    @property
    def num_edges(self) -> int:
        return int(self.store.meta.arrays[layout.INDICES]["shape"][0])

    @property
    def where(self) -> str:
        return f"store '{self.store.url}'"

    def indptr(self) -> np.ndarray:
        if self._indptr is None:
            self._indptr = self.store.read(layout.INDPTR).astype(np.int64, copy=False)
        return self._indptr

    def train_ids(self) -> np.ndarray:
        return self.store.split("train")

    def _edge_blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start, block in self.store.iter_blocks(layout.INDICES, rows):
            yield start, block.astype(np.int64, copy=False)


GraphLike = GraphSource | DatasetStore | str | tuple


def as_graph(graph: GraphLike) -> GraphSource:
    """A GraphSource from a GraphSource, a DatasetStore, a store URL or an (indptr, indices) pair."""
    if isinstance(graph, GraphSource):
        return graph
    if isinstance(graph, DatasetStore):
        return StoreGraph(graph)
    if isinstance(graph, str):
        return StoreGraph(DatasetStore.open(graph))
    if isinstance(graph, tuple) and len(graph) in (2, 3):
        return CSCGraph(*graph)
    raise PartitionError(
        f"expected a dataset store, a store URL, a GraphSource or an (indptr, indices) pair, got {type(graph).__name__}"
    )
