"""Writing and reading dataset stores (format in :mod:`strata.storage.layout`).

A store is written into a hidden sibling of its final URL and moved into place only after
every array is written, its index arrays are checked and the completion marker is in; a crash
leaves the final URL either absent or holding the previous complete store. One writer at a
time holds the store's lock (:mod:`strata.storage.locks`). Opening a store checks it first
(:mod:`strata.storage.verify`), and every chunk is verified by its crc32c as it is decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from strata.errors import StoreError
from strata.storage import fs, layout, locks, verify
from strata.storage.markers import StagedDir, marker_fields, marker_json, read_marker, seal

log = logging.getLogger(__name__)
_INDEX_DTYPE = np.dtype("int64")
_FEAT_DTYPE = np.dtype("float32")


@dataclass
class DatasetMeta:
    """What the completion marker records about a store."""

    name: str
    num_nodes: int = 0
    num_edges: int = 0
    feat_dim: int = 0
    num_classes: int = 0
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per array: shape, dtype and checksum."""
    source: str = ""
    created: float = 0.0
    schema_version: int = layout.SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return marker_json(self)

    @classmethod
    def from_json(cls, text: str, where: str) -> DatasetMeta:
        return marker_fields(cls, text, lambda exc: StoreError(f"store '{where}': its completion marker is not valid JSON ({exc})"))


class _Checksum:
    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def update(self, block: np.ndarray) -> None:
        self._h.update(np.ascontiguousarray(block).astype(block.dtype.newbyteorder("<"), copy=False).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class ArrayAppender:
    """Appends rows to one zarr array, hashing them on the way, so arrays larger than
    memory are written chunk by chunk."""

    def __init__(self, array: zarr.Array, key: str, check: Any = None) -> None:
        self.array = array
        self.key = key
        self.rows = 0
        self._check = check
        self._checksum = _Checksum()

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        if block.dtype != self.array.dtype:
            raise StoreError(
                f"'{self.key}' is {self.array.dtype}, but a block of dtype {block.dtype} was appended"
            )
        if block.shape[1:] != self.array.shape[1:]:
            raise StoreError(
                f"'{self.key}' has rows of shape {self.array.shape[1:]}, got a block of shape {block.shape}"
            )
        if self._check is not None:
            self._check(block, self.rows)
        start, stop = self.rows, self.rows + len(block)
        self.array.resize((stop,) + self.array.shape[1:])
        if len(block):
            self.array[start:stop] = block
        self._checksum.update(block)
        self.rows = stop

    def summary(self) -> dict[str, Any]:
        return {
            "shape": list(self.array.shape),
            "dtype": str(self.array.dtype),
            "chunk_rows": int(self.array.chunks[0]),
            "checksum": self._checksum.hexdigest(),
        }


class DatasetWriter(StagedDir):
    """Builds a store in a hidden sibling of ``url`` and moves it into place on ``commit``.

    Use as a context manager: leaving the block with an exception removes the partial store
    and leaves whatever was at ``url`` untouched. The store's writer lock is held from here to
    the commit or the abort; a second writer is refused, naming this one.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        num_nodes: int,
        overwrite: bool = False,
        allow_nan: bool = False,
        source: str = "",
    ) -> None:
        if num_nodes < 1:
            raise StoreError(f"a dataset needs at least one node, got num_nodes={num_nodes}")
        super().__init__(url, lock="strata ingest")
        if fs.exists(self.url) and not overwrite:
            self.abort()
            raise StoreError(f"'{self.url}' already exists; pass --overwrite to replace it")
        if overwrite:
            try:
                with locks.refuse_if_read(self.url):
                    pass  # refused before the work rather than at the end
            except StoreError:
                self.abort()
                raise
        self.meta = DatasetMeta(name=name, num_nodes=int(num_nodes), source=source)
        self.allow_nan = allow_nan
        self.group = zarr.open_group(fs.zarr_store(self.tmp, "w"), mode="w")
        self._appenders: dict[str, ArrayAppender] = {}
        self._last_indptr: int | None = None

    # -- arrays ----------------------------------------------------------------------------

    def appender(
        self, key: str, dtype: np.dtype | str, row_shape: tuple[int, ...] = (), chunk_rows: int | None = None
    ) -> ArrayAppender:
        """An empty array ``key`` that grows as blocks are appended."""
        if key in self._appenders:
            raise StoreError(f"'{key}' was already written to this store")
        dtype = np.dtype(dtype)
        row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        rows = chunk_rows or layout.default_chunk_rows(row_bytes)
        array = self.group.create_array(
            key, shape=(0,) + tuple(row_shape), chunks=(rows,) + tuple(row_shape), dtype=dtype,
            compressors=_chunk_codecs(), config={"write_empty_chunks": True},  # every chunk exists, each with its crc32c
        )
        appender = ArrayAppender(array, key, self._checker(key))
        self._appenders[key] = appender
        return appender

    def write(self, key: str, data: np.ndarray, chunk_rows: int | None = None) -> None:
        """Write a whole in-memory array, in chunk-sized blocks."""
        data = np.asarray(data)
        app = self.appender(key, data.dtype, data.shape[1:], chunk_rows)
        step = app.array.chunks[0] * 16
        for start in range(0, max(len(data), 1), step):
            app.append(data[start : start + step])

    def write_graph(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        self.write(layout.INDPTR, _as_index(indptr, layout.INDPTR))
        self.write(layout.INDICES, _as_index(indices, layout.INDICES))

    def write_node_data(self, feat: np.ndarray, label: np.ndarray, splits: dict[str, np.ndarray]) -> None:
        self.write(layout.FEAT, as_features(feat))
        self.write(layout.LABEL, _as_index(label, layout.LABEL))
        for split in layout.SPLITS:
            self.write(layout.split_key(split), _as_index(splits.get(split, np.empty(0, np.int64)), split))

    def _checker(self, key: str) -> Any:
        n = self.meta.num_nodes
        if key == layout.INDICES:
            return lambda block, _: _check_ids(block, n, key)
        if key.startswith("node/split/"):
            return lambda block, _: _check_ids(block, n, key)
        if key == layout.INDPTR:
            return self._check_indptr
        if key == layout.FEAT and not self.allow_nan:
            return _check_finite
        if key == layout.LABEL:
            return lambda block, _: _check_labels(block)
        return None

    def _check_indptr(self, block: np.ndarray, offset: int) -> None:
        if not len(block):
            return
        if offset == 0 and block[0] != 0:
            raise StoreError(f"graph/indptr must start at 0, starts at {block[0]}")
        prev = self._last_indptr if self._last_indptr is not None else block[0]
        if block[0] < prev or np.any(np.diff(block) < 0):
            raise StoreError("graph/indptr must be non-decreasing (it is a CSC row pointer)")
        self._last_indptr = int(block[-1])

    # -- commit ----------------------------------------------------------------------------

    def commit(self, **extra: Any) -> DatasetMeta:
        """Check the arrays agree with each other, write the marker and move the store into place."""
        with self:  # a failure removes the partial store
            self._validate_shapes()
            meta = self.meta
            meta.arrays = {key: app.summary() for key, app in sorted(self._appenders.items())}
            if layout.INDICES in self._appenders:
                meta.num_edges = self._appenders[layout.INDICES].rows
            if layout.FEAT in self._appenders:
                meta.feat_dim = int(self._appenders[layout.FEAT].array.shape[1])
            if layout.LABEL in self._appenders and "num_classes" not in extra:
                meta.num_classes = _count_classes(self._appenders[layout.LABEL].array)
            for key, value in extra.items():
                if hasattr(meta, key):
                    setattr(meta, key, value)
                else:
                    meta.extra[key] = value
            meta.created = time.time()
            self.group.attrs["strata"] = json.loads(meta.to_json())
            staged = DatasetStore(self.tmp, meta, zarr.open_group(fs.zarr_store(self.tmp, "r"), mode="r"))
            verify.check_content(staged, verify.check_structure(self.tmp, meta, staged.group))
            with locks.refuse_if_read(self.url):
                seal(self.tmp, self.url, layout.MARKER, meta.to_json())
            return meta

    def _validate_shapes(self) -> None:
        n = self.meta.num_nodes
        apps = self._appenders
        if layout.INDPTR in apps:
            if apps[layout.INDPTR].rows != n + 1:
                raise StoreError(f"graph/indptr must have num_nodes+1 = {n + 1} entries, has {apps[layout.INDPTR].rows}")
            num_edges = apps[layout.INDICES].rows if layout.INDICES in apps else 0
            if self._last_indptr != num_edges:
                raise StoreError(
                    f"graph/indptr ends at {self._last_indptr} but graph/indices holds {num_edges} edges"
                )
        for key in (layout.FEAT, layout.LABEL):
            if key in apps and apps[key].rows != n:
                raise StoreError(f"'{key}' has {apps[key].rows} rows but the graph has {n} nodes")


class DatasetStore:
    """A complete dataset store opened for reading."""

    def __init__(self, url: str, meta: DatasetMeta, group: zarr.Group) -> None:
        self.url = url
        self.meta = meta
        self.group = group

    @classmethod
    def open(cls, url: str, *, check: bool = True) -> DatasetStore:
        """The complete store at ``url``, checked (see :mod:`strata.storage.verify`): a store
        that does not match its marker, lacks a chunk or holds an index out of range raises
        :class:`~strata.storage.verify.CorruptStore`. ``check=False`` only for tools that report
        damage themselves (``strata info --verify``)."""
        url = str(url).rstrip("/")
        moved_aside = fs.swapped_out(url)  # its writer died between the two moves of a swap
        if moved_aside is not None:
            log.warning("'%s' is absent while its writer's swap is unfinished: reading the complete copy %s", url, moved_aside)
            url = moved_aside
        if not fs.exists(url):
            raise StoreError(f"no dataset store at '{url}': the path does not exist; create one with 'strata ingest'")
        text = read_marker(fs.join(url, layout.MARKER))
        if text is None:
            raise StoreError(
                f"store '{url}' has no completion marker: it was not fully written; re-run 'strata ingest'"
            )
        meta = DatasetMeta.from_json(text, url)
        if meta.schema_version > layout.SCHEMA_VERSION:
            raise StoreError(
                f"store '{url}' has schema version {meta.schema_version}; this strata reads up to "
                f"{layout.SCHEMA_VERSION}: upgrade strata"
            )
        verify.refuse_old_schema(url, meta)
        try:
            group = zarr.open_group(fs.zarr_store(url, "r"), mode="r")
        except Exception as exc:  # zarr raises several types for a broken zarr.json
            raise StoreError(f"store '{url}': its zarr metadata cannot be read ({exc})") from exc
        store = cls(url, meta, group)
        if check:
            verify.check_content(store, verify.check_structure(url, meta, group))
        return store

    def has(self, key: str) -> bool:
        return key in self.meta.arrays

    def array(self, key: str) -> zarr.Array:
        if key not in self.meta.arrays:
            raise StoreError(f"store '{self.url}' has no '{key}' (it holds: {', '.join(self.meta.arrays) or 'nothing'})")
        try:
            return self.group[key]
        except Exception as exc:
            raise StoreError(f"store '{self.url}': array '{key}' is missing or its metadata is corrupt ({exc})") from exc

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of array ``key``; a corrupt chunk raises a StoreError naming it."""
        array = self.array(key)
        try:
            return np.asarray(array[slice(start, stop)])
        except StoreError:
            raise
        except Exception as exc:  # a crc32c mismatch, a truncated or undecodable chunk
            first, last = start or 0, array.shape[0] if stop is None else min(stop, array.shape[0])
            raise verify.name_bad_chunk(self, key, first, last, exc) from exc

    def iter_blocks(self, key: str, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, block) over array ``key`` in row order, one or more chunks at a time."""
        array = self.array(key)
        step = rows or array.chunks[0] * 8
        for start in range(0, array.shape[0], step):
            yield start, self.read(key, start, start + step)

    # -- convenience readers ---------------------------------------------------------------

    def csc(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole graph as (indptr, indices)."""
        if not self.has(layout.INDPTR):
            raise StoreError(f"store '{self.url}' holds no graph (no graph/indptr); it is not a graph data set")
        return self.read(layout.INDPTR), self.read(layout.INDICES)

    def features(self) -> np.ndarray:
        return self.read(layout.FEAT)

    def labels(self) -> np.ndarray:
        return self.read(layout.LABEL)

    def split(self, name: str) -> np.ndarray:
        if name not in layout.SPLITS:
            raise StoreError(f"unknown split '{name}'; expected one of {', '.join(layout.SPLITS)}")
        key = layout.split_key(name)
        return self.read(key) if self.has(key) else np.empty(0, dtype=np.int64)

    # -- verification ----------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Re-hash every array and compare with the marker; returns a list of problems."""
        problems = []
        for key, info in self.meta.arrays.items():
            try:
                array = self.array(key)
                if list(array.shape) != list(info["shape"]) or str(array.dtype) != info["dtype"]:
                    problems.append(
                        f"'{key}' is {array.dtype} {list(array.shape)}, the marker says {info['dtype']} {info['shape']}"
                    )
                    continue
                checksum = _Checksum()
                for _, block in self.iter_blocks(key):
                    checksum.update(block)
                if checksum.hexdigest() != info["checksum"]:
                    problems.append(f"'{key}' checksum mismatch: content changed since it was written")
            except StoreError as exc:
                problems.append(str(exc))
        return problems


# -- validation helpers ------------------------------------------------------------------


def _chunk_codecs() -> list:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0, checksum=False), Crc32cCodec()]


def as_features(feat: Any, key: str = layout.FEAT) -> np.ndarray:
    """Features as a float32 (N, F) array; non-numeric input is refused."""
    feat = np.asarray(feat)
    if feat.dtype.kind not in "fiub":
        raise StoreError(f"'{key}' must be numeric (float, int or bool), got dtype {feat.dtype}")
    if feat.ndim == 1:
        feat = feat[:, None]
    if feat.ndim != 2:
        raise StoreError(f"'{key}' must be a 2-D (num_nodes, feat_dim) array, got shape {feat.shape}")
    return feat.astype(_FEAT_DTYPE, copy=False)


def _as_index(values: Any, key: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "f" and values.size and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    if values.size == 0:
        values = values.astype(np.int64).reshape(0)
    if values.dtype.kind not in "iu":
        raise StoreError(f"'{key}' must hold integers, got dtype {values.dtype}")
    if values.ndim != 1:
        raise StoreError(f"'{key}' must be 1-D, got shape {values.shape}")
    return values.astype(_INDEX_DTYPE, copy=False)


def _check_ids(block: np.ndarray, num_nodes: int, key: str) -> None:
    if not len(block):
        return
    lo, hi = int(block.min()), int(block.max())
    if lo < 0 or hi >= num_nodes:
        bad = lo if lo < 0 else hi
        raise StoreError(f"'{key}' holds node id {bad}, out of range for a graph of {num_nodes} nodes (0..{num_nodes - 1})")


def _check_finite(block: np.ndarray, offset: int) -> None:
    if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
        row = offset + int(np.argwhere(~np.isfinite(block))[0][0])
        raise StoreError(
            f"node/feat holds NaN or infinite values (first at node {row}); clean the input or pass --allow-nan"
        )


def _check_labels(block: np.ndarray) -> None:
    if len(block) and int(block.min()) < -1:
        raise StoreError(f"node/label must be class ids >= 0 (or -1 for unknown), found {int(block.min())}")


def _count_classes(label: zarr.Array) -> int:
    top = -1
    step = max(label.chunks[0] * 8, 1)
    for start in range(0, label.shape[0], step):
        block = label[start : start + step]
        if len(block):
            top = max(top, int(block.max()))
    return top + 1
