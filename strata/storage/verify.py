"""Checking a dataset store before anything computes on it.

A store may come from another person or an object store, so opening one trusts nothing but
what it can check cheaply, and checks the rest once per content:

- structure, at every open: the marker's counts agree with each other, every array it names
  has the shape, dtype and chunking it says, ends in zarr's ``crc32c`` codec (so each chunk is
  verified as it is decoded), and every chunk it implies exists as a file, none beyond;
- content, once per content: ``graph/indptr`` starts at 0, never decreases and ends at the
  edge count; ``graph/indices`` and the split ids are node ids; labels are -1 or a class id
  below ``num_classes``, and no training node is unlabelled. These are streamed chunk by
  chunk, O(edges), and the result is cached in ``_STRATA_CHECKED`` beside the marker, keyed by
  the listing of the chunk files checked (sizes, and times the writer cannot choose: a local
  file's inode change time, an object's upload time), so a changed, copied or unpacked
  store is checked again.

Anything amiss raises :class:`CorruptStore` naming the array and, where one is to blame, the
chunk: before any native kernel sees an index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from strata.errors import StoreError
from strata.storage import fs, layout

if TYPE_CHECKING:
    import zarr

    from strata.storage.store import DatasetMeta, DatasetStore

log = logging.getLogger(__name__)

CHECK_VERSION = 1
"""Bump when the content checks change, so older cached results are checked again."""

Listing = dict[str, dict[str, dict[str, Any]]]
"""Per array key: chunk file (relative to the array) -> what the filesystem says of it."""


class CorruptStore(StoreError):
    """A store whose arrays do not match its marker, lack a chunk, or hold values out of range."""


def _fail(url: str, what: str) -> CorruptStore:
    return CorruptStore(
        f"store '{url}' is corrupt: {what}. Nothing was read from it; re-ingest it "
        f"(strata ingest ... --out {url} --overwrite), or see 'strata info {url} --verify'"
    )


# -- structure -----------------------------------------------------------------------------


def refuse_old_schema(url: str, meta: DatasetMeta) -> None:
    if meta.schema_version < layout.FIRST_CHECKSUMMED_SCHEMA:
        raise StoreError(
            f"store '{url}' has schema version {meta.schema_version}, written by an older strata without per-chunk "
            "checksums, so what it holds cannot be verified as it is read. Re-ingest it with the same "
            f"'strata ingest' command and '--out {url} --overwrite' (then re-run its partition and pack commands)"
        )


def expected_rows(meta: DatasetMeta, key: str) -> int | None:
    """The row count the marker's counts imply for array ``key`` (None: any)."""
    if key == layout.INDPTR:
        return meta.num_nodes + 1
    if key == layout.INDICES or key.startswith("edge/"):
        return meta.num_edges
    if key in (layout.FEAT, layout.LABEL, layout.IMAGES, layout.IMAGE_LABEL):
        return meta.num_nodes
    return None


def check_structure(url: str, meta: DatasetMeta, group: zarr.Group) -> Listing:
    """Raise :class:`CorruptStore` unless every array matches the marker and has all its chunks;
    returns the chunk files found, per array."""
    if layout.FEAT in meta.arrays and meta.arrays[layout.FEAT]["shape"][1:] != [meta.feat_dim]:
        raise _fail(url, f"'{layout.FEAT}' is {meta.arrays[layout.FEAT]['shape']} in the marker, which says feat_dim {meta.feat_dim}")
    listing: Listing = {}
    for key, info in meta.arrays.items():
        rows = expected_rows(meta, key)
        if rows is not None and info["shape"][0] != rows:
            raise _fail(url, f"the marker gives '{key}' {info['shape'][0]} rows where its counts imply {rows}")
        array = _array(url, group, key)
        _check_metadata(url, key, info, array)
        listing[key] = _check_chunks(url, key, info, array)
    return listing


def _array(url: str, group: zarr.Group, key: str) -> zarr.Array:
    try:
        return group[key]
    except Exception as exc:  # zarr raises several types for a missing or broken zarr.json
        raise _fail(url, f"array '{key}' is missing or its metadata is unreadable ({type(exc).__name__}: {exc})") from exc


def _check_metadata(url: str, key: str, info: dict[str, Any], array: zarr.Array) -> None:
    from zarr.codecs import Crc32cCodec

    if list(array.shape) != list(info["shape"]):
        raise _fail(url, f"array '{key}' has shape {list(array.shape)} but the marker says {info['shape']}")
    if str(array.dtype) != info["dtype"]:
        raise _fail(url, f"array '{key}' has dtype {array.dtype} but the marker says {info['dtype']}")
    chunk_rows = info.get("chunk_rows")
    if chunk_rows is None or list(array.chunks) != [chunk_rows] + list(array.shape[1:]):
        raise _fail(url, f"array '{key}' is chunked {list(array.chunks)}, not by {chunk_rows} whole rows as the marker says")
    if not any(isinstance(codec, Crc32cCodec) for codec in getattr(array.metadata, "codecs", ())):
        raise _fail(url, f"array '{key}' has no crc32c codec, so its chunks cannot be verified as they are read")


def chunk_file(key: str, ndim: int, index: int) -> str:
    """The file of row chunk ``index`` of an array, relative to the array (zarr v3's default keys)."""
    return "c/" + "/".join([str(index)] + ["0"] * (ndim - 1))


def chunk_rows_range(info: dict[str, Any], index: int) -> str:
    first = index * info["chunk_rows"]
    return f"rows {first}..{min(first + info['chunk_rows'], info['shape'][0]) - 1}"


def _check_chunks(url: str, key: str, info: dict[str, Any], array: zarr.Array) -> dict[str, dict[str, Any]]:
    found = list_chunk_files(fs.join(url, key))
    count = math.ceil(info["shape"][0] / info["chunk_rows"]) if info["shape"][0] else 0
    expected = [chunk_file(key, array.ndim, i) for i in range(count)]
    for index, name in enumerate(expected):
        if name not in found:
            raise _fail(url, f"array '{key}' lacks chunk {index} ({chunk_rows_range(info, index)}, file {key}/{name})")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise _fail(url, f"array '{key}' holds chunk files beyond its {info['shape'][0]} rows ({key}/{extra[0]})")
    return found


def list_chunk_files(array_url: str) -> dict[str, dict[str, Any]]:
    fsys, path = fs.get_fs(fs.join(array_url, "c"))
    if not fsys.exists(path):
        return {}
    root = path.rstrip("/")[: -len("c")]
    return {name[len(root):]: info for name, info in fsys.find(path, detail=True).items()}


# -- reading -------------------------------------------------------------------------------


def name_bad_chunk(store: DatasetStore, key: str, start: int, stop: int, exc: Exception) -> CorruptStore:
    """The error for a failed read of rows [start, stop) of ``key``: the first chunk that does
    not decode (its crc32c, or its compression, is broken) is named."""
    array = store.group[key]
    info = store.meta.arrays[key]
    rows = array.chunks[0]
    for index in range(start // rows, max(start, stop - 1) // rows + 1):
        try:
            array[index * rows : (index + 1) * rows]
        except Exception as chunk_exc:  # noqa: BLE001 - any decode failure names the chunk
            return _fail(
                store.url,
                f"array '{key}' chunk {index} ({chunk_rows_range(info, index)}, file {key}/{chunk_file(key, array.ndim, index)}) "
                f"cannot be decoded, it is truncated or its bytes changed ({type(chunk_exc).__name__}: {chunk_exc})",
            )
    return _fail(store.url, f"array '{key}' rows [{start}, {stop}) cannot be decoded ({type(exc).__name__}: {exc})")


# -- content -------------------------------------------------------------------------------

CHECKED_KEYS = (layout.INDPTR, layout.INDICES, layout.LABEL, layout.IMAGE_LABEL) + tuple(
    layout.split_key(s) for s in layout.SPLITS
)


def content_key(meta: DatasetMeta, listing: Listing) -> str:
    """What the cached content check is valid for: the marker's counts and the checked arrays'
    entries, and every chunk file's listing (sizes, change or upload times, ids)."""
    keys = [key for key in CHECKED_KEYS if key in meta.arrays]
    files = {
        key: sorted((name, sorted((k, str(v)) for k, v in info.items() if k != "name")) for name, info in listing[key].items())
        for key in keys
    }
    what = {
        "version": CHECK_VERSION,
        "counts": [meta.num_nodes, meta.num_edges, meta.num_classes],
        "arrays": {key: meta.arrays[key] for key in keys},
        "files": files,
    }
    return hashlib.blake2b(json.dumps(what, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def check_content(store: DatasetStore, listing: Listing, *, cache: bool = True) -> bool:
    """Bounds-check the store's index arrays unless the cache beside the marker vouches for
    exactly these chunk files; True when the checks ran (False: the cache held)."""
    key = content_key(store.meta, listing)
    cache_url = fs.join(store.url, layout.CHECKED)
    if cache and _cached_key(cache_url) == key:
        return False
    started = time.perf_counter()
    if store.meta.num_edges > 50_000_000:
        log.info("checking the index arrays of %s (%s edges), once for this content", store.url, f"{store.meta.num_edges:,}")
    _check_graph(store)
    _check_labels_and_splits(store)
    seconds = time.perf_counter() - started
    log.log(logging.INFO if seconds > 2 else logging.DEBUG, "checked the index arrays of %s in %.1f s", store.url, seconds)
    if cache:
        record = {"key": key, "checked": time.time(), "seconds": round(seconds, 3), "arrays": list(listing)}
        try:
            fs.write_atomically(cache_url, json.dumps(record, indent=1, sort_keys=True))
        except (OSError, NotImplementedError, ValueError) as exc:  # a read-only store: check again next time
            log.debug("cannot cache the content check of %s: %s", store.url, exc)
    return True


def _cached_key(url: str) -> str:
    try:
        return str(json.loads(fs.read_text(url)).get("key", "")) if fs.exists(url) else ""
    except (OSError, ValueError, AttributeError):
        return ""


def _blocks(store: DatasetStore, key: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """(chunk index, first row, block) of ``key``, one chunk at a time."""
    rows = store.meta.arrays[key]["chunk_rows"]
    for start, block in store.iter_blocks(key, rows):
        yield start // rows, start, block


def _where(store: DatasetStore, key: str, chunk: int, row: int) -> str:
    return f"array '{key}' chunk {chunk} ({chunk_rows_range(store.meta.arrays[key], chunk)}), row {row}"


def _check_graph(store: DatasetStore) -> None:
    meta = store.meta
    if layout.INDPTR not in meta.arrays:
        return
    previous = 0
    for chunk, start, block in _blocks(store, layout.INDPTR):
        if start == 0 and len(block) and block[0] != 0:
            raise _fail(store.url, f"{_where(store, layout.INDPTR, chunk, 0)} is {block[0]}; a CSC row pointer starts at 0")
        steps = np.diff(block, prepend=previous)
        if np.any(steps < 0):
            row = start + int(np.argmax(steps < 0))
            raise _fail(store.url, f"{_where(store, layout.INDPTR, chunk, row)} decreases (a CSC row pointer never does)")
        previous = int(block[-1]) if len(block) else previous
    if previous != meta.num_edges:
        raise _fail(store.url, f"array '{layout.INDPTR}' ends at {previous} but the store has {meta.num_edges} edges")
    _check_ids(store, layout.INDICES, meta.num_nodes)


def _check_ids(store: DatasetStore, key: str, num_nodes: int, also: Callable[[np.ndarray, int, int], None] | None = None) -> None:
    if key not in store.meta.arrays:
        return
    for chunk, start, block in _blocks(store, key):
        bad = (block < 0) | (block >= num_nodes)
        if np.any(bad):
            at = int(np.argmax(bad))
            raise _fail(
                store.url,
                f"{_where(store, key, chunk, start + at)} holds node id {int(block[at])}, out of range for "
                f"{num_nodes} nodes (0..{num_nodes - 1})",
            )
        if also is not None:
            also(block, chunk, start)


def _check_labels_and_splits(store: DatasetStore) -> None:
    meta = store.meta
    labelled = None
    for key in (layout.LABEL, layout.IMAGE_LABEL):
        if key not in meta.arrays:
            continue
        lowest = -1 if key == layout.LABEL else 0
        labelled = np.zeros(meta.num_nodes, dtype=bool)
        for chunk, start, block in _blocks(store, key):
            bad = (block < lowest) | (block >= meta.num_classes)
            if np.any(bad):
                at = int(np.argmax(bad))
                raise _fail(
                    store.url,
                    f"{_where(store, key, chunk, start + at)} holds label {int(block[at])}; labels are "
                    f"{'-1 (unknown) or ' if lowest < 0 else ''}class ids 0..{meta.num_classes - 1}",
                )
            labelled[start : start + len(block)] = block >= 0

    def labelled_training(block: np.ndarray, chunk: int, start: int) -> None:
        if labelled is not None and not np.all(labelled[block]):
            at = int(np.argmin(labelled[block]))
            raise _fail(
                store.url,
                f"{_where(store, layout.split_key('train'), chunk, start + at)} is node {int(block[at])}, whose label is "
                "-1 (unknown): a training node needs a class",
            )

    for split in layout.SPLITS:
        key = layout.split_key(split)
        _check_ids(store, key, meta.num_nodes, labelled_training if split == "train" else None)
