"""The on-disk pack format, version 1: offline-sampled batches with their features contiguous.

A pack serves ``epochs`` epochs of one run. Its steps are cut into groups of ``group_size``
consecutive steps of one epoch; the packer writes a group at a time and the trainer reads
its steps in order, so every read is sequential::

    PACK/                            any fsspec URL; default STORE/packs/<fingerprint[:16]>
      manifest.json                  written first: format version, fingerprint and the fields it
                                     hashes (store checksums, sampler, seed, epochs, partition),
                                     steps per epoch, group size, feature width and dtype, and the
                                     host-cache budget the hot set was sized for
      hot/ids.bin                    int64 (H,)    hot node ids, hottest first
      hot/feat.bin                   (H, F) dtype  their feature rows, same order
      hot/_COMPLETE                  JSON: H, share of accesses they serve, CRC32 per 8 MiB piece
      groups/e0000-g00000/           epoch 0, steps [0, G); then e0000-g00001, ...
        blocks.bin                   one record per step, back to back:
                                       'SBLK' u32 layers, u64 input rows,
                                       per layer: u64 num_src, u64 num_dst, u64 num_edges
                                       int64 input node ids (input rows)
                                       per layer: int32 indptr (num_dst + 1), int32 indices (num_edges)
        _BLOCKS_COMPLETE             JSON: per step offset, length and CRC32 of its record
        feat.bin                     one segment per step, back to back, in training order:
                                       64-byte header 'SSEG' u32 epoch, u32 step, u64 rows,
                                       u64 payload bytes, u32 CRC32 of the payload, u64 input
                                       rows, zero padding
                                       payload: int32 hot rank of each input node (its place in
                                       hot/ids.bin; -1 = packed here; none at all, input rows 0,
                                       when no input is hot), then rows x F values: the input
                                       nodes that are not hot, in input-node order
        _FEAT_COMPLETE               JSON: per step offset, length, rows and CRC32 of its segment
      _PACK_COMPLETE                 JSON written last: largest batch, totals, timings

Each marker is written after the data it describes, so a marker means the data before it
is whole; the packer resumes by skipping groups that have theirs, and the reader refuses a
pack without ``_PACK_COMPLETE``. The hot ranks let training place every row of a batch with
integer arithmetic alone: rank < D from the device cache, < D + H from the host cache, else
from the store; -1 from the segment. A segment whose length, header or checksum does not match its
marker raises :class:`~strata.errors.PackError` before any of its rows are used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strata.errors import PackError
from strata.storage import layout
from strata.storage.featstore.sampling import (
    SAMPLER_VERSION,
    BlockCSC,
    SampledBatch,
    SamplerConfig,
    train_ids_checksum,
)
from strata.storage.markers import marker_fields, marker_json
from strata.storage.store import DatasetStore

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PACK_MARKER = "_PACK_COMPLETE"
HOT_IDS, HOT_FEAT, HOT_MARKER = "hot/ids.bin", "hot/feat.bin", "hot/_COMPLETE"
BLOCKS, BLOCKS_MARKER = "blocks.bin", "_BLOCKS_COMPLETE"
FEAT, FEAT_MARKER = "feat.bin", "_FEAT_COMPLETE"
HOT_PIECE_BYTES = 8 << 20

SEGMENT_HEADER = struct.Struct("<4sIIQQIQ24x")
SEGMENT_MAGIC = b"SSEG"
_RECORD_HEAD = struct.Struct("<4sIQ")
_RECORD_LAYER = struct.Struct("<QQQ")
RECORD_MAGIC = b"SBLK"


def as_bytes(array: np.ndarray) -> memoryview:
    """The bytes of an array (C order), without a copy when it is contiguous."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def crc32(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    return zlib.crc32(as_bytes(data) if isinstance(data, np.ndarray) else data) & 0xFFFFFFFF


def group_name(epoch: int, group: int) -> str:
    return f"groups/e{epoch:04d}-g{group:05d}"


# -- fingerprint -----------------------------------------------------------------------------

FIELD_NAMES = {
    "feat_checksum": "the store's node/feat",
    "indptr_checksum": "the store's graph/indptr",
    "indices_checksum": "the store's graph/indices",
    "train_ids": "the training seed nodes (train split, partition)",
    "num_nodes": "number of nodes",
    "sampler": "sampling algorithm",
    "fanouts": "fanouts",
    "batch_size": "batch size",
    "self_loops": "self loops",
    "seed": "seed",
    "epochs": "epochs",
    "partition": "partition",
    "part": "part",
}


def fingerprint_fields(
    store: DatasetStore, sampler: SamplerConfig, epochs: int, train_ids: np.ndarray, partition: str = "", part: int = -1
) -> dict[str, Any]:
    """Everything that decides what a pack holds; two runs with equal fields train on equal bytes."""
    arrays = store.meta.arrays
    for key in (layout.FEAT, layout.INDPTR, layout.INDICES):
        if key not in arrays:
            raise PackError(f"store '{store.url}' has no '{key}': it cannot be packed (it needs a graph and node features)")
    return {
        "feat_checksum": arrays[layout.FEAT]["checksum"],
        "indptr_checksum": arrays[layout.INDPTR]["checksum"],
        "indices_checksum": arrays[layout.INDICES]["checksum"],
        "train_ids": train_ids_checksum(train_ids),
        "num_nodes": int(store.meta.num_nodes),
        "sampler": SAMPLER_VERSION,
        "fanouts": list(sampler.fanouts),
        "batch_size": int(sampler.batch_size),
        "self_loops": bool(sampler.self_loops),
        "seed": int(sampler.seed),
        "epochs": int(epochs),
        "partition": partition,
        "part": int(part),
    }


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=16).hexdigest()


def differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Human-readable differences between the fingerprint fields of a pack and of a run."""
    out = []
    for key in sorted(set(found) | set(expected)):
        if found.get(key) != expected.get(key):
            name = FIELD_NAMES.get(key, key)
            if key.endswith("checksum") or key == "train_ids":
                out.append(f"{name} differ (checksum {str(found.get(key))[:12]} in the pack, {str(expected.get(key))[:12]} here)")
            else:
                out.append(f"{name}: {found.get(key)!r} in the pack, {expected.get(key)!r} here")
    return out


# -- manifest and markers --------------------------------------------------------------------


@dataclass
class PackManifest:
    """manifest.json: what a pack is for and how it is laid out."""

    fingerprint: str
    fields: dict[str, Any]
    epochs: int
    steps_per_epoch: int
    group_size: int
    num_nodes: int
    feat_dim: int
    dtype: str
    host_cache_bytes: int
    """The host budget the hot set was sized for (with the default prefetch and workers)."""
    store: str = ""
    """Where the store was when the pack was made (informational: the fingerprint decides)."""
    format_version: int = FORMAT_VERSION
    created: float = 0.0

    @property
    def row_bytes(self) -> int:
        return self.feat_dim * np.dtype(self.dtype).itemsize

    def groups_per_epoch(self) -> int:
        return -(-self.steps_per_epoch // self.group_size)

    def group_of(self, step: int) -> tuple[int, int]:
        """(group, position in group) of ``step``."""
        return divmod(step, self.group_size)

    def group_steps(self, group: int) -> range:
        return range(group * self.group_size, min((group + 1) * self.group_size, self.steps_per_epoch))

    def to_json(self) -> str:
        return marker_json(self)

    @classmethod
    def from_json(cls, text: str, where: str) -> PackManifest:
        manifest = marker_fields(
            cls, text, lambda exc: PackError(f"pack '{where}': manifest.json is not a valid pack manifest ({exc}); re-run 'strata pack'")
        )
        if manifest.format_version > FORMAT_VERSION:
            raise PackError(
                f"pack '{where}' has format version {manifest.format_version}; this strata reads up to {FORMAT_VERSION}: upgrade strata"
            )
        return manifest


@dataclass
class PackSummary:
    """_PACK_COMPLETE: what the whole pass found and cost."""

    max_input_rows: int
    max_segment_rows: int
    hot_rows: int
    hot_access_share: float
    """Share of all row accesses of all epochs that the hot set serves."""
    total_input_rows: int
    packed_rows: int
    bytes_written: int
    bytes_read: int
    """Bytes of the store's feature array read while packing."""
    sample_seconds: float
    pack_seconds: float

    def to_json(self) -> str:
        return marker_json(self)

    @classmethod
    def from_json(cls, text: str, where: str) -> PackSummary:
        try:
            raw = json.loads(text)
            return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})
        except (ValueError, TypeError, KeyError) as exc:
            raise PackError(f"pack '{where}': {PACK_MARKER} is corrupt ({exc}); re-run 'strata pack --overwrite'") from exc


@dataclass
class Entry:
    """Where one step's record or segment lies in its group file."""

    offset: int
    length: int
    crc: int
    rows: int = 0


@dataclass
class GroupIndex:
    """The entries of one group file, by position in the group."""

    entries: list[Entry] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"entries": [dataclasses.astuple(e) for e in self.entries]})

    @classmethod
    def from_json(cls, text: str, where: str) -> GroupIndex:
        try:
            return cls([Entry(*map(int, e)) for e in json.loads(text)["entries"]])
        except (ValueError, TypeError, KeyError) as exc:
            raise PackError(f"pack group marker '{where}' is corrupt ({exc}); re-run 'strata pack' to rewrite the group") from exc

    def file_bytes(self) -> int:
        return max((e.offset + e.length for e in self.entries), default=0)


# -- block records ---------------------------------------------------------------------------


def encode_record(batch: SampledBatch) -> bytes:
    parts = [_RECORD_HEAD.pack(RECORD_MAGIC, len(batch.layers), len(batch.input_nodes))]
    for layer in batch.layers:
        parts.append(_RECORD_LAYER.pack(layer.num_src, layer.num_dst, len(layer.indices)))
    parts.append(np.ascontiguousarray(batch.input_nodes, dtype="<i8").tobytes())
    for layer in batch.layers:
        parts.append(np.ascontiguousarray(layer.indptr, dtype="<i4").tobytes())
        parts.append(np.ascontiguousarray(layer.indices, dtype="<i4").tobytes())
    return b"".join(parts)


def decode_record(buf: bytes | bytearray | memoryview, where: str) -> SampledBatch:
    try:
        magic, num_layers, n_input = _RECORD_HEAD.unpack_from(buf, 0)
        if magic != RECORD_MAGIC:
            raise ValueError(f"bad magic {magic!r}")
        pos = _RECORD_HEAD.size
        shapes = []
        for _ in range(num_layers):
            shapes.append(_RECORD_LAYER.unpack_from(buf, pos))
            pos += _RECORD_LAYER.size
        input_nodes = np.frombuffer(buf, dtype="<i8", count=n_input, offset=pos).astype(np.int64)
        pos += 8 * n_input
        layers = []
        for num_src, num_dst, num_edges in shapes:
            indptr = np.frombuffer(buf, dtype="<i4", count=num_dst + 1, offset=pos).astype(np.int64)
            pos += 4 * (num_dst + 1)
            indices = np.frombuffer(buf, dtype="<i4", count=num_edges, offset=pos).astype(np.int64)
            pos += 4 * num_edges
            layers.append(BlockCSC(int(num_src), int(num_dst), indptr, indices))
        if pos != len(buf):
            raise ValueError(f"{len(buf) - pos} bytes left over")
    except (struct.error, ValueError) as exc:
        raise PackError(f"{where}: the block record is malformed ({exc}); re-run 'strata pack --overwrite'") from exc
    return SampledBatch(input_nodes=input_nodes, layers=layers)


# -- feature segments ------------------------------------------------------------------------


def encode_segment(epoch: int, step: int, hot_rank: np.ndarray, rows: np.ndarray) -> tuple[list[memoryview | bytes], int, int]:
    """(pieces to write in order, their total length, CRC32 of the payload) of one segment."""
    if (hot_rank < 0).all():
        hot_rank = hot_rank[:0]  # nothing hot: every input row is packed, no ranks needed
    ranks = as_bytes(np.ascontiguousarray(hot_rank, dtype="<i4"))
    payload = as_bytes(rows)
    crc = zlib.crc32(payload, zlib.crc32(ranks)) & 0xFFFFFFFF
    nbytes = ranks.nbytes + payload.nbytes
    header = SEGMENT_HEADER.pack(SEGMENT_MAGIC, epoch, step, len(rows), nbytes, crc, len(hot_rank))
    return [header, ranks, payload], len(header) + nbytes, crc


def check_segment(
    buf: bytes | bytearray, entry: Entry, epoch: int, step: int, feat_dim: int, dtype: np.dtype, verify: bool, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(hot rank per input node, packed rows) of one segment as read; the ranks are empty when
    no input is hot. Any mismatch with its marker entry is a PackError."""
    if len(buf) != entry.length:
        raise PackError(
            f"{where}: segment of epoch {epoch} step {step} is truncated: {len(buf)} of {entry.length} bytes read; "
            "the pack file was cut short; re-run 'strata pack --overwrite'"
        )
    magic, h_epoch, h_step, rows, nbytes, crc, inputs = SEGMENT_HEADER.unpack_from(buf, 0)
    expected = 4 * inputs + entry.rows * feat_dim * dtype.itemsize
    header_ok = magic == SEGMENT_MAGIC and (h_epoch, h_step, rows) == (epoch, step, entry.rows)
    if not header_ok or nbytes != expected or nbytes + SEGMENT_HEADER.size != entry.length:
        raise PackError(
            f"{where}: segment header of epoch {epoch} step {step} does not match its marker "
            f"(found epoch {h_epoch} step {h_step} rows {rows}); the pack is corrupt; re-run 'strata pack --overwrite'"
        )
    payload = memoryview(buf)[SEGMENT_HEADER.size :]
    if verify and (crc != entry.crc or crc32(payload) != entry.crc):
        raise PackError(
            f"{where}: segment of epoch {epoch} step {step} fails its checksum; the pack is corrupt; "
            "re-run 'strata pack --overwrite'"
        )
    ranks = np.frombuffer(payload, dtype="<i4", count=inputs)
    values = np.frombuffer(payload, dtype=dtype, offset=4 * inputs).reshape(entry.rows, feat_dim)
    return ranks, values
