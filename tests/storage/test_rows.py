"""The one out-of-core row reader (features and images) and feature row normalisation."""

from __future__ import annotations

import numpy as np
import torch

from strata.storage import layout
from strata.storage.rows import ChunkedRows, normalize_rows
from strata.storage.store import DatasetStore, DatasetWriter


def _store(url: str, data: np.ndarray, chunk_rows: int) -> DatasetStore:
    with DatasetWriter(url, "rows", num_nodes=len(data)) as writer:
        writer.write(layout.IMAGES, data, chunk_rows=chunk_rows)
        writer.commit()
    return DatasetStore.open(url)


def test_rows_of_any_shape_with_and_without_a_chunk_cache(store_root: str) -> None:
    data = np.random.default_rng(0).standard_normal((101, 2, 3)).astype(np.float32)
    store = _store(f"{store_root}/rows", data, chunk_rows=8)
    plain = ChunkedRows(store, layout.IMAGES, max_read_bytes=3 * 8 * 24)
    cached = ChunkedRows(store, layout.IMAGES, cache_bytes=4 * 8 * 24)
    assert (len(plain), plain.row_shape, plain.dim, plain.row_bytes) == (101, (2, 3), 6, 24)
    ids = np.array([100, 3, 3, 40, 9, 0, 17])
    rows, read = plain.gather(ids)
    np.testing.assert_array_equal(rows, data[ids])
    # Chunks 0, 1, 2 (one read, at most three chunks), 5 and 12 (the last, 5 rows).
    assert plain.runs(np.unique(ids)) == [(0, 24), (40, 48), (96, 101)]
    assert read == (24 + 8 + 5) * 24 and plain.chunks_read == 5

    np.testing.assert_array_equal(cached.gather(ids)[0], data[ids])
    assert cached.chunks_read == 5
    again, read = cached.gather(np.array([1, 20]))  # chunks 0 and 2: the most recent four are 1, 2, 5, 12
    np.testing.assert_array_equal(again, data[[1, 20]])
    assert cached.chunks_read == 6 and read == 8 * 24


def test_normalize_rows_divides_each_row_by_its_sum() -> None:
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    torch.testing.assert_close(normalize_rows(x), torch.tensor([[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]]))
    torch.testing.assert_close(normalize_rows(x[1:]), normalize_rows(x)[1:], rtol=0, atol=0)
