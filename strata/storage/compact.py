"""Reading a store's integer arrays into the smallest type that holds them.

The store keeps node ids and labels as int64 (:mod:`strata.storage.layout`). In memory a graph
under 2**31 nodes needs only int32 ids, and labels of a few hundred classes int8 or int16: at
64M nodes and 514M edges that is 2 GiB less for the CSC's src ids and 0.4 GiB less for the labels.
The arrays are read chunk by chunk into a preallocated array of the small type, so the int64
array is never held whole (one read's block at a time, a few tens of MiB).
"""

from __future__ import annotations

import numpy as np

from strata.errors import StoreError
from strata.storage import layout
from strata.storage.store import DatasetStore

SMALL_INTS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))


def smallest_int(low: int, high: int) -> np.dtype:
    """The smallest signed integer type that holds every value in [low, high]."""
    for dtype in SMALL_INTS:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    raise ValueError(f"no integer type holds [{low}, {high}]")


def id_dtype(num_nodes: int) -> np.dtype:
    """int32 for the ids of a graph under 2**31 nodes, else int64 (never narrower: torch
    indexes with int32 and int64 only)."""
    return np.dtype(np.int32) if num_nodes <= 2**31 else np.dtype(np.int64)


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest signed type for class ids 0 .. num_classes - 1 and -1 (unknown)."""
    return smallest_int(-1, max(num_classes - 1, 0))


def read_as(store: DatasetStore, key: str, dtype: np.dtype | type) -> np.ndarray:
    """Array ``key`` of ``store`` as ``dtype``, read chunk by chunk into one preallocated array.
    A value the type cannot hold raises a StoreError naming it (the store's own checks bound
    ids by the node count and labels by the class count, so the types above always hold them)."""
    dtype = np.dtype(dtype)
    array = store.array(key)
    out = np.empty(array.shape, dtype=dtype)
    info = np.iinfo(dtype)
    for start, block in store.iter_blocks(key):
        if len(block) and (int(block.min()) < info.min or int(block.max()) > info.max):
            raise StoreError(f"store '{store.url}': '{key}' holds values outside {dtype} ({int(block.min())} .. "
                             f"{int(block.max())} in rows {start} ..), beyond what its marker's counts allow: re-ingest it")
        out[start : start + len(block)] = block
    return out


def compact_csc(store: DatasetStore) -> tuple[np.ndarray, np.ndarray]:
    """The store's CSC with the src ids in :func:`id_dtype` (the row pointer stays int64)."""
    if not store.has(layout.INDPTR):
        raise StoreError(f"store '{store.url}' holds no graph (no graph/indptr); it is not a graph data set")
    return store.read(layout.INDPTR), read_as(store, layout.INDICES, id_dtype(store.meta.num_nodes))


def compact_labels(store: DatasetStore) -> np.ndarray:
    """The store's labels in :func:`label_dtype` of its class count."""
    return read_as(store, layout.LABEL, label_dtype(store.meta.num_classes))
