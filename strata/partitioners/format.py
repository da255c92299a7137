"""The on-disk partition format, version 1, and its one reader and one writer.

Partitions live inside the dataset store they cut::

    STORE/partitions/<name>/
      _STRATA_COMPLETE        JSON written last: format version, name, method, num_parts,
                              halo_hops, num_nodes, num_edges and the checksum of the store's
                              graph/indices. A partition without it is never read.
      assignment.npy          int32 (N,)        part id of every node
      report.json             the quality report (strata.partitioners.report.PartitionReport)
      part-<k>/               k = 0 .. num_parts - 1
        meta.json             {"num_owned": n_o, "halo_per_hop": [n_1, ..., n_h], "num_edges": E_k}
        local_to_global.npy   int64 (n_local,)     local id -> global id: the n_o owned nodes
                                                   ascending, then the halo, hop 1 first, each
                                                   hop ascending (n_local = n_o + sum n_i)
        indptr.npy            int64 (n_local + 1,) local CSC: in-edges of local node v are
        indices.npy           int64 (E_k,)         indices[indptr[v]:indptr[v + 1]] (local ids);
                                                   every edge with both ends local, so owned
                                                   nodes have all their in-edges
        edge_ids.npy          int64 (E_k,)         each local edge's position in graph/indices
                                                   (for edge/* arrays)
        boundary.npy          bool (n_o,)          owned node is in some other part's halo

The halo is upstream: non-owned nodes with a path of at most h edges into an owned node.
Arrays are .npy files (no pickle) read and written through :mod:`strata.storage.fs`, so any
fsspec URL works. A partition is written into a hidden sibling ``partitions/.<name>.partial-*``
and moved into place complete; the hidden names are never listed or read.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strata.errors import PartitionError
from strata.partitioners.report import PartitionReport
from strata.storage import fs, layout
from strata.storage.markers import StagedDir, marker_fields, marker_json, read_marker, seal
from strata.storage.store import DatasetStore

FORMAT_VERSION = 1
MARKER = layout.MARKER
PARTITIONS = "partitions"


def partition_url(store_url: str, name: str) -> str:
    return fs.join(str(store_url).rstrip("/"), PARTITIONS, name)


def list_partitions(store_url: str) -> list[str]:
    """Names of the complete partitions of a store."""
    root = fs.join(str(store_url).rstrip("/"), PARTITIONS)
    return [name for name in fs.listdir(root) if not name.startswith(".") and fs.exists(fs.join(root, name, MARKER))]


def _save(url: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    fs.write_bytes(url, buffer.getvalue())


def _load(url: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(fs.read_bytes(url)), allow_pickle=False)
    except FileNotFoundError as exc:
        raise PartitionError(f"partition file '{url}' is missing; rebuild the partition with --overwrite") from exc
    except ValueError as exc:
        raise PartitionError(f"partition file '{url}' is corrupt ({exc}); rebuild the partition with --overwrite") from exc


@dataclass
class PartitionInfo:
    """The completion marker of a partition."""

    name: str
    method: str
    num_parts: int
    halo_hops: int
    num_nodes: int
    num_edges: int
    graph_checksum: str = ""
    format_version: int = FORMAT_VERSION
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return marker_json(self)


@dataclass
class Partition:
    """One part as loaded from disk; see the module docstring for what each array means."""

    part_id: int
    num_owned: int
    halo_per_hop: list[int]
    local_to_global: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    edge_ids: np.ndarray
    boundary: np.ndarray
    _lookup: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_local(self) -> int:
        return len(self.local_to_global)

    @property
    def owned(self) -> np.ndarray:
        return self.local_to_global[: self.num_owned]

    @property
    def halo(self) -> np.ndarray:
        return self.local_to_global[self.num_owned :]

    def global_to_local(self, ids: np.ndarray) -> np.ndarray:
        """Local id of each global id, -1 where the node is not local to this part."""
        if self._lookup is None:
            order = np.argsort(self.local_to_global, kind="stable")
            self._lookup = (self.local_to_global[order], order)
        keys, order = self._lookup
        ids = np.asarray(ids, dtype=np.int64)
        if not len(keys):
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        return np.where(keys[pos] == ids, order[pos], -1)


class PartitionWriter(StagedDir):
    """Writes a partition into a hidden sibling and moves it into place on ``commit``."""

    def __init__(self, store: DatasetStore, info: PartitionInfo, overwrite: bool) -> None:
        super().__init__(partition_url(store.url, info.name), lock="strata partition")
        check_free(store.url, info.name, overwrite)
        self.info = info
        fs.makedirs(self.tmp)

    def write_part(self, part: Partition) -> None:
        root = fs.join(self.tmp, f"part-{part.part_id}")
        meta = {"num_owned": int(part.num_owned), "halo_per_hop": [int(x) for x in part.halo_per_hop], "num_edges": int(len(part.indices))}
        fs.write_text(fs.join(root, "meta.json"), json.dumps(meta))
        _save(fs.join(root, "local_to_global.npy"), part.local_to_global.astype(np.int64, copy=False))
        _save(fs.join(root, "indptr.npy"), part.indptr.astype(np.int64, copy=False))
        _save(fs.join(root, "indices.npy"), part.indices.astype(np.int64, copy=False))
        _save(fs.join(root, "edge_ids.npy"), part.edge_ids.astype(np.int64, copy=False))
        _save(fs.join(root, "boundary.npy"), part.boundary.astype(bool, copy=False))

    def commit(self, assignment: np.ndarray, report_json: str) -> None:
        with self:  # a failure removes the partial partition
            _save(fs.join(self.tmp, "assignment.npy"), assignment.astype(np.int32, copy=False))
            fs.write_text(fs.join(self.tmp, "report.json"), report_json)
            seal(self.tmp, self.url, MARKER, self.info.to_json())


def check_free(store_url: str, name: str, overwrite: bool) -> None:
    """Refuse to replace an existing partition unless asked to."""
    url = partition_url(store_url, name)
    if fs.exists(url) and not overwrite:
        raise PartitionError(
            f"partition '{name}' already exists in store '{store_url}'; pass --overwrite to replace it or choose another --name"
        )


class PartitionSet:
    """A complete partition opened for reading; parts are loaded one at a time with :meth:`part`."""

    def __init__(self, url: str, info: PartitionInfo) -> None:
        self.url = url
        self.info = info

    @property
    def num_parts(self) -> int:
        return self.info.num_parts

    def assignment(self) -> np.ndarray:
        return _load(fs.join(self.url, "assignment.npy"))

    def report(self) -> PartitionReport:
        return PartitionReport.from_json(fs.read_text(fs.join(self.url, "report.json")))

    def part(self, k: int) -> Partition:
        if not 0 <= k < self.num_parts:
            raise PartitionError(f"partition '{self.info.name}' has parts 0..{self.num_parts - 1}, asked for part {k}")
        root = fs.join(self.url, f"part-{k}")
        try:
            meta = json.loads(fs.read_text(fs.join(root, "meta.json")))
        except FileNotFoundError as exc:
            raise PartitionError(f"partition '{self.info.name}': part {k} is missing ({root}); rebuild it with --overwrite") from exc
        return Partition(
            part_id=k,
            num_owned=int(meta["num_owned"]),
            halo_per_hop=[int(x) for x in meta["halo_per_hop"]],
            local_to_global=_load(fs.join(root, "local_to_global.npy")),
            indptr=_load(fs.join(root, "indptr.npy")),
            indices=_load(fs.join(root, "indices.npy")),
            edge_ids=_load(fs.join(root, "edge_ids.npy")),
            boundary=_load(fs.join(root, "boundary.npy")),
        )


def open_partition(store: DatasetStore | str, name: str) -> PartitionSet:
    """Open partition ``name`` of a store, refusing one that is incomplete or made for another graph."""
    store = store if isinstance(store, DatasetStore) else DatasetStore.open(store)
    url = partition_url(store.url, name)
    if not fs.exists(url):
        known = list_partitions(store.url)
        raise PartitionError(
            f"store '{store.url}' has no partition '{name}' (it has: {', '.join(known) or 'none'}); "
            f"create it with 'strata partition {store.url} --name {name}'"
        )
    text = read_marker(fs.join(url, MARKER))
    if text is None:
        raise PartitionError(
            f"partition '{name}' in store '{store.url}' has no completion marker: it was not fully written; "
            f"re-run 'strata partition {store.url} --name {name} --overwrite'"
        )
    info = marker_fields(
        PartitionInfo,
        text,
        lambda exc: PartitionError(f"partition '{name}' in store '{store.url}': its completion marker is not valid ({exc})"),
    )
    if info.format_version > FORMAT_VERSION:
        raise PartitionError(
            f"partition '{name}' has format version {info.format_version}; this strata reads up to {FORMAT_VERSION}: upgrade strata"
        )
    current = graph_checksum(store)
    if info.graph_checksum and current and info.graph_checksum != current:
        raise PartitionError(
            f"partition '{name}' was built for a different graph than store '{store.url}' now holds; "
            f"rebuild it with 'strata partition {store.url} --name {name} --overwrite'"
        )
    return PartitionSet(url, info)


def graph_checksum(store: DatasetStore) -> str:
    return str(store.meta.arrays.get(layout.INDICES, {}).get("checksum", ""))
