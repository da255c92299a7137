"""Rows of a store array read out of core, and feature rows normalised.

:class:`ChunkedRows` is the one reader of rows of a row-chunked store array (node features,
images): the ids wanted are sorted and de-duplicated, mapped to the zarr chunks that hold
them, and runs of neighbouring chunks are read in one call each (at most ``max_read_bytes``)
before the wanted rows are picked out. A row is never read on its own: a chunk is the unit of
storage, so one row costs a whole chunk anyway, and one read per run of chunks lets the store
stream. With ``cache_bytes`` it keeps the most recently used decoded chunks within that
budget (a chunk larger than the budget is read and dropped), for readers that come back to
the same rows, such as the batches of a diffusion job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
from torch import Tensor

from strata.storage import layout
from strata.storage.sorted_unique import sorted_unique
from strata.storage.store import DatasetStore


def normalize_rows(x: Tensor) -> Tensor:
    """Each row divided by its sum (rows that sum to 0 stay 0): ``data.normalize_features``.

    Per row, so a whole matrix, a block of it and one batch's rows normalise to equal values.
    """
    return x / x.sum(1, keepdim=True).clamp(min=1e-12)


class ChunkedRows:
    """Rows of one store array of shape (N, ...), gathered chunk-run by chunk-run."""

    def __init__(
        self, store: DatasetStore, key: str = layout.FEAT, max_read_bytes: int = 32 << 20, *, cache_bytes: int = 0
    ) -> None:
        self.store = store
        self.key = key
        array = store.array(key)
        self.shape = tuple(int(s) for s in array.shape)
        self.num_rows, self.row_shape = self.shape[0], self.shape[1:]
        self.dim = int(np.prod(self.row_shape, dtype=np.int64))
        """Values per row (the feature width of a 2-D array)."""
        self.dtype = np.dtype(array.dtype)
        self.row_bytes = self.dim * self.dtype.itemsize
        self.chunk_rows = int(array.chunks[0])
        self.max_chunks = max(1, max_read_bytes // max(1, self.chunk_rows * self.row_bytes))
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # chunk -> its decoded rows
        self._cached_bytes = 0
        self.chunks_read = 0
        """Chunks read from the store so far (with a cache: its misses), for tests and benchmarks."""

    def __len__(self) -> int:
        return self.num_rows

    def _chunk_runs(self, chunks: np.ndarray) -> list[tuple[int, int]]:
        """[first, stop) chunk ranges covering sorted, unique ``chunks``: neighbours merged,
        at most ``max_chunks`` a range."""
        out = []
        for run in np.split(chunks, np.flatnonzero(np.diff(chunks) != 1) + 1) if len(chunks) else []:
            for i in range(0, len(run), self.max_chunks):
                out.append((int(run[i]), int(run[min(i + self.max_chunks, len(run)) - 1]) + 1))
        return out

    def _read(self, first: int, stop: int) -> np.ndarray:
        """The rows of chunks [first, stop), in one read."""
        self.chunks_read += stop - first
        return self.store.read(self.key, first * self.chunk_rows, min(stop * self.chunk_rows, self.num_rows))

    def runs(self, sorted_ids: np.ndarray) -> list[tuple[int, int]]:
        """[start, stop) row ranges that cover ``sorted_ids``: neighbouring chunks merged."""
        chunks = sorted_unique(np.asarray(sorted_ids, dtype=np.int64) // self.chunk_rows)
        return [(first * self.chunk_rows, min(stop * self.chunk_rows, self.num_rows)) for first, stop in self._chunk_runs(chunks)]

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """(rows of ``ids`` in the order given, bytes read from storage)."""
        ids = np.asarray(ids, dtype=np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        rows, read = self._gather_sorted(unique)
        return (rows if len(unique) == len(ids) and np.array_equal(unique, ids) else rows[inverse]), read

    def gather_sorted(self, unique: np.ndarray) -> np.ndarray:
        """Rows of sorted, unique ``unique``."""
        return self._gather_sorted(unique)[0]

    def _gather_sorted(self, unique: np.ndarray) -> tuple[np.ndarray, int]:
        """(rows of sorted, unique ``unique``, bytes read from storage for them)."""
        out = np.empty((len(unique), *self.row_shape), dtype=self.dtype)
        chunks = sorted_unique(unique // self.chunk_rows)
        read = 0
        for first, stop, block, nbytes in self._blocks(chunks):
            start = first * self.chunk_rows
            lo, hi = np.searchsorted(unique, [start, stop * self.chunk_rows])
            out[lo:hi] = block[unique[lo:hi] - start]
            read += nbytes
        return out, read

    def _blocks(self, chunks: np.ndarray) -> Iterator[tuple[int, int, np.ndarray, int]]:
        """(first, stop, rows of chunks [first, stop), bytes read for them) covering sorted
        ``chunks``, one at a time so a caller holds one read at once.

        Without a cache (thread-safe): each run of neighbouring chunks in one read. With one
        (not thread-safe): hits from the cache, misses read run by run and remembered chunk by
        chunk, the least recently used chunks evicted beyond ``cache_bytes``.
        """
        if not self.cache_bytes:
            for first, stop in self._chunk_runs(chunks):
                block = self._read(first, stop)
                yield first, stop, block, len(block) * self.row_bytes
            return
        missing = []
        for chunk in chunks.tolist():
            if chunk in self._cache:
                self._cache.move_to_end(chunk)
                yield chunk, chunk + 1, self._cache[chunk], 0
            else:
                missing.append(chunk)
        for first, stop in self._chunk_runs(np.array(missing, dtype=np.int64)):
            block = self._read(first, stop)
            for chunk in range(first, stop):
                offset = (chunk - first) * self.chunk_rows
                rows = block[offset : offset + self.chunk_rows].copy()  # a copy: the run's block is freed
                self._remember(chunk, rows)
                yield chunk, chunk + 1, rows, len(rows) * self.row_bytes

    def _remember(self, chunk: int, rows: np.ndarray) -> None:
        if rows.nbytes > self.cache_bytes:
            return  # larger than the whole budget: read and dropped
        self._cache[chunk] = rows
        self._cached_bytes += rows.nbytes
        while self._cached_bytes > self.cache_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes
