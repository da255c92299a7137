"""One part's files (the layout of :mod:`strata.partitioners.format`) written as its edges stream in.

The per-node arrays of a part (ids, row pointer, boundary flags) are small and saved whole;
the per-edge arrays (``indices.npy``, ``edge_ids.npy``) are appended piece by piece behind a
header written first, so a part's edges are never all in memory. The files are the ones
:class:`strata.partitioners.format.PartitionWriter` writes, byte for byte, and
:class:`strata.partitioners.format.PartitionSet` reads them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from strata.errors import PartitionError
from strata.storage import fs


class NpyAppender:
    """A 1-D ``.npy`` file of ``length`` values written piece by piece, in order."""

    def __init__(self, url: str, dtype: Any, length: int) -> None:
        filesystem, path = fs.get_fs(url)
        self.url, self.dtype, self.length, self.written = url, np.dtype(dtype), int(length), 0
        self.file = filesystem.open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.length,)}
        np.lib.format.write_array_header_1_0(self.file, header)

    def append(self, values: np.ndarray) -> None:
        if self.written + len(values) > self.length:
            raise PartitionError(f"'{self.url}': more than the {self.length} values its header announced were written")
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.written += len(values)

    def close(self) -> None:
        self.file.close()
        if self.written != self.length:
            raise PartitionError(f"'{self.url}': {self.written} values written, its header announced {self.length}")


def save_npy(url: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    fs.write_bytes(url, buffer.getvalue())


def write_part(root: str, *, num_owned: int, halo_per_hop: list[int], local_to_global: np.ndarray, indptr: np.ndarray,
               boundary: np.ndarray, edges: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Write part folder ``root``: ``edges`` yields (local sources, global edge ids) in local
    CSC order, ``indptr[-1]`` of them in all."""
    fs.makedirs(root)
    num_edges = int(indptr[-1])
    fs.write_text(fs.join(root, "meta.json"), json.dumps(
        {"num_owned": int(num_owned), "halo_per_hop": [int(x) for x in halo_per_hop], "num_edges": num_edges}))
    save_npy(fs.join(root, "local_to_global.npy"), local_to_global.astype(np.int64, copy=False))
    save_npy(fs.join(root, "indptr.npy"), indptr.astype(np.int64, copy=False))
    save_npy(fs.join(root, "boundary.npy"), boundary.astype(bool, copy=False))
    indices = NpyAppender(fs.join(root, "indices.npy"), np.int64, num_edges)
    edge_ids = NpyAppender(fs.join(root, "edge_ids.npy"), np.int64, num_edges)
    try:
        for sources, eids in edges:
            indices.append(sources)
            edge_ids.append(eids)
    finally:
        indices.file.close()
        edge_ids.file.close()
    for appender in (indices, edge_ids):
        appender.close()
