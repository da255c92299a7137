"""Gathering feature rows from the store's chunked feature array in large sequential reads.

The ids wanted are sorted and de-duplicated, mapped to the zarr chunks that hold them, and
runs of neighbouring chunks are read in one call each (at most ``max_read_bytes``) before
the wanted rows are picked out. A row is never read on its own: a chunk is the unit of
storage, so one row costs a whole chunk anyway, and one read per run of chunks lets the
store stream.
"""

from __future__ import annotations

import numpy as np

from strata.storage import layout
from strata.storage.store import DatasetStore


class ChunkedRows:
    """Rows of one 2-D store array, gathered chunk-run by chunk-run."""

    def __init__(self, store: DatasetStore, key: str = layout.FEAT, max_read_bytes: int = 32 << 20) -> None:
        self.store = store
        self.key = key
        array = store.array(key)
        self.num_rows, self.dim = int(array.shape[0]), int(array.shape[1])
        self.dtype = np.dtype(array.dtype)
        self.row_bytes = self.dim * self.dtype.itemsize
        self.chunk_rows = int(array.chunks[0])
        self.max_chunks = max(1, max_read_bytes // max(1, self.chunk_rows * self.row_bytes))

    def runs(self, sorted_ids: np.ndarray) -> list[tuple[int, int]]:
        """[start, stop) row ranges that cover ``sorted_ids``: neighbouring chunks merged."""
        if len(sorted_ids) == 0:
            return []
        chunks = np.unique(sorted_ids // self.chunk_rows)
        breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
        out = []
        for run in np.split(chunks, breaks):
            for i in range(0, len(run), self.max_chunks):
                first, last = int(run[i]), int(run[min(i + self.max_chunks, len(run)) - 1])
                out.append((first * self.chunk_rows, min((last + 1) * self.chunk_rows, self.num_rows)))
        return out

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """(rows of ``ids`` in the order given, bytes read from storage)."""
        ids = np.asarray(ids, dtype=np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        rows = self.gather_sorted(unique)
        read = sum(stop - start for start, stop in self.runs(unique)) * self.row_bytes
        return (rows if len(unique) == len(ids) and np.array_equal(unique, ids) else rows[inverse]), read

    def gather_sorted(self, unique: np.ndarray) -> np.ndarray:
        """Rows of sorted, unique ``unique``."""
        out = np.empty((len(unique), self.dim), dtype=self.dtype)
        for start, stop in self.runs(unique):
            lo, hi = np.searchsorted(unique, [start, stop])
            block = self.store.read(self.key, start, stop)
            out[lo:hi] = block[unique[lo:hi] - start]
        return out
