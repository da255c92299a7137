"""The offline pass: sample every step of every epoch ahead of training, then pack features.

Three phases, each resumable (format in :mod:`strata.storage.featstore.format`):

1. sample: for each group of steps, sample its batches (the same code and seeds as online
   training) and write their block records; count how often each node is an input.
2. hot: the most-accessed nodes that fit the host-cache budget become the hot set; their
   rows are written once to ``hot/``.
3. pack: for each group, the ids its steps need that are not hot are sorted and read from
   the store's feature array in chunk runs (large sequential reads, never row by row), as
   many groups to one pass as the host budget holds, then each step's rows are written as
   one segment, in input-node order, in training order.

Memory: the graph (CSC), one int64 counter per node, the hot rows, then the rows of a window
of groups (up to the host budget).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from strata.errors import PackError
from strata.graph.csc import with_self_loops
from strata.storage import fs
from strata.storage.compact import compact_csc
from strata.storage.featstore import format as fmt
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.sampling import (
    EpochPlan,
    NeighbourSampler,
    SampledBatch,
    SamplerConfig,
    sample_step,
)
from strata.storage.locks import writer_lock
from strata.storage.markers import read_marker
from strata.storage.rows import ChunkedRows
from strata.storage.sorted_unique import sorted_unique
from strata.storage.store import DatasetStore

log = logging.getLogger(__name__)


def default_pack_dir(store_url: str, fingerprint: str) -> str:
    return fs.join(store_url, "packs", fingerprint[:16])


@dataclass
class PackResult:
    url: str
    manifest: fmt.PackManifest
    summary: fmt.PackSummary
    resumed_sampled: int = 0
    """Groups whose block records an earlier, interrupted run had written (not sampled again)."""
    resumed_packed: int = 0
    """Groups whose segments an earlier run had written (not packed again)."""


class Packer:
    """Writes one pack; see the module docstring for the phases."""

    def __init__(
        self,
        store_url: str,
        sampler: SamplerConfig,
        epochs: int,
        out: str = "",
        *,
        train_ids: np.ndarray | None = None,
        partition: str = "",
        part: int = -1,
        host_cache_bytes: int = FeaturesConfig.host_cache_bytes,
        group_size: int = 32,
        max_read_bytes: int = FeaturesConfig.max_read_bytes,
        window_bytes: int = 0,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        if epochs < 1:
            raise PackError(f"epochs must be at least 1, got {epochs}")
        if group_size < 1:
            raise PackError(f"group size must be at least 1, got {group_size}")
        if partition and (part < 0 or train_ids is None):
            raise PackError(f"packing part {part} of partition '{partition}' needs the part number (>= 0) and its training nodes")
        self.store = DatasetStore.open(store_url)
        self.sampler_cfg = sampler
        self.epochs = epochs
        self.budget = FeaturesConfig(host_cache_bytes=host_cache_bytes)
        self.rows = ChunkedRows(self.store, max_read_bytes=max_read_bytes)
        self.train = self.store.split("train") if train_ids is None else np.asarray(train_ids, dtype=np.int64)
        if len(self.train) == 0:
            raise PackError(f"store '{self.store.url}' has no training nodes{' in this part' if partition else ''}: nothing to pack")
        self.plan = EpochPlan(self.train, sampler.batch_size, sampler.seed)
        fields = fmt.fingerprint_fields(self.store, sampler, epochs, self.train, partition, part)
        fingerprint = fmt.fingerprint(fields)
        self.url = (out or default_pack_dir(self.store.url, fingerprint)).rstrip("/")
        self.manifest = fmt.PackManifest(
            fingerprint=fingerprint,
            fields=fields,
            epochs=epochs,
            steps_per_epoch=self.plan.steps_per_epoch(),
            group_size=group_size,
            num_nodes=int(self.store.meta.num_nodes),
            feat_dim=self.rows.dim,
            dtype=str(self.rows.dtype),
            host_cache_bytes=host_cache_bytes,
            store=self.store.url,
            created=time.time(),
        )
        self.window_bytes = window_bytes or host_cache_bytes
        """Rows of non-hot features read in one pass for several groups (default: the host budget)."""
        self.overwrite = overwrite
        self.progress = progress
        self.bytes_written = 0
        self.bytes_read = 0

    # -- driver ----------------------------------------------------------------------------

    def run(self) -> PackResult:
        """Pack, or finish an interrupted pack; one packer per pack at a time (a second one is
        refused, naming the first)."""
        with writer_lock(self.url, "strata pack"):
            return self._run()

    def _run(self) -> PackResult:
        self._start()
        done = read_marker(fs.join(self.url, fmt.PACK_MARKER))
        if done is not None:
            log.info("pack %s is already complete", self.url)
            groups = len(self._groups())
            return PackResult(self.url, self.manifest, fmt.PackSummary.from_json(done, self.url), groups, groups)
        t0 = time.perf_counter()
        counts, max_rows, total_rows = self._sample_all()
        t1 = time.perf_counter()
        hot = self._hot_set(counts, max_rows)
        packed_rows, max_segment, resumed_feat = self._pack_all(hot)
        t2 = time.perf_counter()
        accesses = int(counts.sum())
        summary = fmt.PackSummary(
            max_input_rows=max_rows,
            max_segment_rows=max_segment,
            hot_rows=len(hot),
            hot_access_share=float(counts[hot].sum() / accesses) if accesses else 0.0,
            total_input_rows=total_rows,
            packed_rows=packed_rows,
            bytes_written=self.bytes_written,
            bytes_read=self.bytes_read,
            sample_seconds=t1 - t0,
            pack_seconds=t2 - t1,
        )
        fs.write_text(fs.join(self.url, fmt.PACK_MARKER), summary.to_json())
        return PackResult(self.url, self.manifest, summary, self.resumed, resumed_feat)

    def _start(self) -> None:
        """Write the manifest, or check that an existing one is for this very pack."""
        path = fs.join(self.url, fmt.MANIFEST)
        if fs.exists(path) and self.overwrite:
            fs.remove(self.url)
        if fs.exists(path):
            old = fmt.PackManifest.from_json(fs.read_text(path), self.url)
            diff = fmt.differences(old.fields, self.manifest.fields)
            if old.group_size != self.manifest.group_size:
                diff.append(f"group size: {old.group_size} in the pack, {self.manifest.group_size} here")
            if old.host_cache_bytes != self.manifest.host_cache_bytes:
                diff.append(f"host cache bytes: {old.host_cache_bytes} in the pack, {self.manifest.host_cache_bytes} here")
            if diff:
                raise PackError(
                    f"'{self.url}' already holds a pack made with other settings ({'; '.join(diff)}); "
                    "pass --overwrite to replace it, or choose another --out"
                )
            log.info("resuming the pack at %s", self.url)
            return
        if fs.exists(self.url) and fs.listdir(self.url):
            if not self.overwrite:
                raise PackError(f"'{self.url}' exists and is not a pack; pass --overwrite to replace it, or choose another --out")
            fs.remove(self.url)
        fs.write_text(path, self.manifest.to_json())

    def _groups(self) -> list[tuple[int, int]]:
        return [(e, g) for e in range(self.epochs) for g in range(self.manifest.groups_per_epoch())]

    # -- phase 1: sample -------------------------------------------------------------------

    def _sample_all(self) -> tuple[np.ndarray, int, int]:
        indptr, indices = compact_csc(self.store)  # int32 src ids under 2**31 nodes: 4 bytes an edge less
        if self.sampler_cfg.self_loops:  # as online training's DGL graph has them
            indptr, indices = with_self_loops(indptr, indices)
        sampler = NeighbourSampler(indptr, indices, self.sampler_cfg.fanouts)
        del indptr, indices
        counts = np.zeros(self.manifest.num_nodes, dtype=np.int64)
        max_rows = total = 0
        order_epoch, order = -1, None
        self.resumed = 0
        for epoch, group in tqdm(self._groups(), desc="sample", unit="group", disable=not self.progress):
            records = self._read_records(epoch, group)
            if records is None:
                if order_epoch != epoch:
                    order, order_epoch = self.plan.order(epoch), epoch
                batches = [sample_step(sampler, self.plan, order, epoch, s) for s in self.manifest.group_steps(group)]
                self._write_records(epoch, group, batches)
                ids = [b.input_nodes for b in batches]
            else:
                self.resumed += 1
                ids = [b.input_nodes for b in records]
            counts += np.bincount(np.concatenate(ids), minlength=len(counts))
            max_rows = max(max_rows, max(len(i) for i in ids))
            total += sum(len(i) for i in ids)
        return counts, max_rows, total

    def _write_records(self, epoch: int, group: int, batches: list[SampledBatch]) -> None:
        gdir = fs.join(self.url, fmt.group_name(epoch, group))
        index = fmt.GroupIndex()
        blobs = [fmt.encode_record(b) for b in batches]
        offset = 0
        for blob, batch in zip(blobs, batches):
            index.entries.append(fmt.Entry(offset, len(blob), fmt.crc32(blob), len(batch.input_nodes)))
            offset += len(blob)
        fs.write_bytes(fs.join(gdir, fmt.BLOCKS), b"".join(blobs))
        fs.write_text(fs.join(gdir, fmt.BLOCKS_MARKER), index.to_json())
        self.bytes_written += offset

    def _read_records(self, epoch: int, group: int) -> list[SampledBatch] | None:
        """The block records of a finished group; None when the group must be (re)sampled."""
        gdir = fs.join(self.url, fmt.group_name(epoch, group))
        text = read_marker(fs.join(gdir, fmt.BLOCKS_MARKER))
        if text is None:
            return None
        index = fmt.GroupIndex.from_json(text, gdir)
        data = fs.read_bytes(fs.join(gdir, fmt.BLOCKS)) if fs.exists(fs.join(gdir, fmt.BLOCKS)) else b""
        if len(data) != index.file_bytes():
            log.warning("group %s: block records are %d bytes, marker says %d: sampling it again", gdir, len(data), index.file_bytes())
            return None
        out = []
        for pos, entry in enumerate(index.entries):
            blob = data[entry.offset : entry.offset + entry.length]
            if fmt.crc32(blob) != entry.crc:
                log.warning("group %s: block record %d fails its checksum: sampling the group again", gdir, pos)
                return None
            out.append(fmt.decode_record(blob, gdir))
        return out

    # -- phase 2: hot set ------------------------------------------------------------------

    def _hot_set(self, counts: np.ndarray, max_rows: int) -> np.ndarray:
        """Hot node ids, hottest first (ties: lower id first); their rows written to hot/."""
        self.budget.fit_in_flight(self.rows.row_bytes, max_rows)
        capacity = self.budget.cache_rows(self.rows.row_bytes, max_rows)
        touched = np.flatnonzero(counts)
        ranked = touched[np.lexsort((touched, -counts[touched]))]
        hot = ranked[:capacity].astype(np.int64)
        marker = fs.join(self.url, fmt.HOT_MARKER)
        text = read_marker(marker)
        if text is not None:
            if json.loads(text).get("ids_crc") != fmt.crc32(hot.astype("<i8").tobytes()):
                raise PackError(
                    f"pack '{self.url}': its hot set does not match the access counts of its own batches; "
                    "the pack is inconsistent; re-run 'strata pack --overwrite'"
                )
            return hot
        order = np.argsort(hot, kind="stable")
        rows_sorted, nbytes = self.rows.gather(hot[order])
        self.bytes_read += nbytes
        rows = np.empty_like(rows_sorted)
        rows[order] = rows_sorted
        payload = fmt.as_bytes(rows)
        pieces = [fmt.crc32(payload[i : i + fmt.HOT_PIECE_BYTES]) for i in range(0, payload.nbytes, fmt.HOT_PIECE_BYTES)]
        ids = hot.astype("<i8").tobytes()
        fs.write_bytes(fs.join(self.url, fmt.HOT_IDS), ids)
        fs.write_bytes(fs.join(self.url, fmt.HOT_FEAT), payload)
        self.bytes_written += len(ids) + payload.nbytes
        fs.write_text(marker, json.dumps({"rows": len(hot), "ids_crc": fmt.crc32(ids), "feat_crc_pieces": pieces}))
        return hot

    # -- phase 3: pack ---------------------------------------------------------------------

    def _pack_all(self, hot: np.ndarray) -> tuple[int, int, int]:
        """Pack every group not packed yet, several groups to one pass over the feature array.

        A group's rows are scattered over the whole array, so reading them costs a pass over
        nearly every chunk: at 64M nodes a pass per group read 427 GiB to pack 6 GiB. Groups are
        therefore gathered together while their rows fit the host budget (free once the hot rows
        are written), and each window of groups reads its chunks once.
        """
        order = np.argsort(hot, kind="stable")
        hot_sorted = hot[order]
        window_rows = max(1, self.window_bytes // self.rows.row_bytes)
        indices: list[fmt.GroupIndex] = []
        resumed = 0
        window: list[_PendingGroup] = []
        with tqdm(total=len(self._groups()), desc="pack", unit="group", disable=not self.progress) as bar:
            for epoch, group in self._groups():
                gdir = fs.join(self.url, fmt.group_name(epoch, group))
                index = self._packed_index(gdir)
                if index is None:
                    records = self._read_records(epoch, group)
                    if records is None:
                        raise PackError(f"group {gdir} lost its block records during packing; re-run 'strata pack --overwrite'")
                    pending = _PendingGroup.of(epoch, group, gdir, records, hot_sorted, order)
                    if window and sum(len(w.union) for w in window) + len(pending.union) > window_rows:
                        indices += self._write_window(window, bar)
                        window = []
                    window.append(pending)
                    continue
                resumed += 1
                indices.append(index)
                bar.update()
            indices += self._write_window(window, bar)
        segments = [e.rows for index in indices for e in index.entries]
        return sum(segments), max(segments, default=0), resumed

    def _packed_index(self, gdir: str) -> fmt.GroupIndex | None:
        """The index of a group an earlier run packed completely, else None."""
        done = read_marker(fs.join(gdir, fmt.FEAT_MARKER))
        if done is None:
            return None
        index = fmt.GroupIndex.from_json(done, gdir)
        fsys, path = fs.get_fs(fs.join(gdir, fmt.FEAT))
        return index if fsys.exists(path) and fsys.size(path) == index.file_bytes() else None

    def _write_window(self, window: list[_PendingGroup], bar: tqdm) -> list[fmt.GroupIndex]:
        """Read the rows of every group of ``window`` in one pass, then write each group."""
        if not window:
            return []
        union = sorted_unique(np.concatenate([w.union for w in window]))
        rows = self.rows.gather_sorted(union)  # (len(union), F), read in chunk runs
        self.bytes_read += sum(stop - start for start, stop in self.rows.runs(union)) * self.rows.row_bytes
        indices = []
        for pending in window:
            indices.append(self._write_segments(pending, union, rows))
            bar.update()
        return indices

    def _write_segments(self, pending: _PendingGroup, union: np.ndarray, rows: np.ndarray) -> fmt.GroupIndex:
        """Write one group's segments, each step's rows taken from ``rows`` (those of ``union``)."""
        index = fmt.GroupIndex()
        fsys, path = fs.get_fs(fs.join(pending.gdir, fmt.FEAT))
        fsys.makedirs(fs.get_fs(pending.gdir)[1], exist_ok=True)
        offset = 0
        with fsys.open(path, "wb") as out:
            for step, ids, rank in zip(self.manifest.group_steps(pending.group), pending.wanted, pending.ranks):
                pieces, length, crc = fmt.encode_segment(pending.epoch, step, rank, rows[np.searchsorted(union, ids)])
                for piece in pieces:
                    out.write(piece)
                index.entries.append(fmt.Entry(offset, length, crc, len(ids)))
                offset += length
        fs.write_text(fs.join(pending.gdir, fmt.FEAT_MARKER), index.to_json())
        self.bytes_written += offset
        return index


@dataclass
class _PendingGroup:
    """A group to pack: its steps' non-hot input ids (``wanted``), their union and hot ranks."""

    epoch: int
    group: int
    gdir: str
    ranks: list[np.ndarray]
    wanted: list[np.ndarray]
    union: np.ndarray

    @classmethod
    def of(cls, epoch: int, group: int, gdir: str, records: list[SampledBatch], hot_sorted: np.ndarray,
           order: np.ndarray) -> _PendingGroup:
        ranks = [_hot_rank(b.input_nodes, hot_sorted, order) for b in records]
        wanted = [b.input_nodes[r < 0] for b, r in zip(records, ranks)]
        union = sorted_unique(np.concatenate(wanted)) if wanted else np.empty(0, np.int64)
        return cls(epoch, group, gdir, ranks, wanted, union)


def _hot_rank(nodes: np.ndarray, hot_sorted: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each node's place in the hot list (hottest first), or -1 when it is not hot."""
    rank = np.full(len(nodes), -1, dtype=np.int32)
    if len(hot_sorted):
        at = np.searchsorted(hot_sorted, nodes)
        at[at == len(hot_sorted)] = 0
        hit = hot_sorted[at] == nodes
        rank[hit] = order[at[hit]]
    return rank


def pack(store_url: str, sampler: SamplerConfig, epochs: int, out: str = "", **options: object) -> PackResult:
    """Sample ``epochs`` epochs of ``sampler`` over the store at ``store_url`` and pack them."""
    return Packer(store_url, sampler, epochs, out, **options).run()  # type: ignore[arg-type]
