"""Feature loaders: one training step's blocks and input features, from a pack or online.

``PackedLoader`` reads the step's block record and feature segment from a pack and fills
the hot rows from the caches; ``CachedLoader`` samples the step online (same sampler, same
seeds) and reads what the caches miss from the store. Both return exactly what in-memory
training builds for that (seed, epoch, step). They are thread-safe, so several prefetch
threads can load steps at once.

Memory: the host cache and the batches in flight stay within ``host_cache_bytes``
(:meth:`FeaturesConfig.cache_rows` sizes the cache to what the in-flight batches leave).
Peak RSS of training is at most that budget plus a fixed overhead: the process before the
store is opened (interpreter, torch, DGL; ~0.3 GiB), the graph topology and labels the
trainer keeps (a compact graph under 2**31 nodes: 8 (N + 1) + 4 E bytes, and labels in the
smallest integer type, 1 B a node under 128 classes; see :mod:`strata.storage.compact`), 32 MiB of allocator and per-batch object slack,
and, only while the fall-back tier is used, up to 3 x ``max_read_bytes`` per worker (zarr
holds a read's compressed and decoded chunks at once). Measured by
``benchmarks/ooc_features.py`` (2M x 128 features, 256 MiB budget): packed +273.6 MiB over
the process before the store was opened (+17.6 MiB over budget); cached, whose misses go to
the fall-back, +364.6 MiB (+108.6 MiB, 32 MiB reads).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from strata.errors import PackError
from strata.storage import fs
from strata.storage.featstore import format as fmt
from strata.storage.featstore.caches import FeatureCounters, NodeCache, is_member
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.reader import PackReader
from strata.storage.featstore.sampling import (
    EpochPlan,
    NeighbourSampler,
    SamplerConfig,
    sample_step,
)
from strata.storage.featstore.tiered import DeviceRows, TieredFeatures
from strata.storage.featstore.writer import default_pack_dir
from strata.storage.rows import ChunkedRows, normalize_rows
from strata.storage.store import DatasetStore


@dataclass
class LoadedStep:
    """One step's sampled blocks and input features."""

    blocks: list[object]
    x: Tensor
    """(num_input_nodes, F) input features, on the loader's device."""
    output_nodes: np.ndarray
    """Global ids of the last block's destination nodes (the step's seeds)."""
    device_rows: DeviceRows | None = None
    """Loaded with ``staged=True`` for a CUDA device: ``x`` is in pinned host memory and these
    rows, served by the device tier, are still to be placed once it is on the device."""


class FeatureLoader(Protocol):
    counters: FeatureCounters

    def steps_per_epoch(self) -> int: ...

    def load(self, epoch: int, step: int, *, staged: bool = False) -> LoadedStep: ...

    def close(self) -> None: ...


def _caches(ids: np.ndarray, rows: np.ndarray, device_ids: np.ndarray, device: torch.device) -> tuple[NodeCache, NodeCache]:
    """The device cache (``device_ids``, only on a CUDA device) and the host cache (the rest of ``ids``).

    On the CPU the device tier stays empty and the host cache keeps ``rows`` as they are, with no copy.
    """
    dim = rows.shape[1]
    table = torch.from_numpy(rows)
    if device.type != "cuda" or len(device_ids) == 0:
        return NodeCache(device_ids[:0], None, dim, device), NodeCache(ids, table, dim, torch.device("cpu"))
    on_device = is_member(ids, np.sort(device_ids))
    device_cache = NodeCache(ids[on_device], table[torch.from_numpy(on_device)], dim, device)
    keep = torch.from_numpy(~on_device)
    return device_cache, NodeCache(ids[~on_device], table[keep], dim, torch.device("cpu"))


class PackedLoader:
    """Steps from a pack: sequential segment reads, hot rows from the caches."""

    def __init__(
        self,
        reader: PackReader,
        store: DatasetStore,
        cfg: FeaturesConfig,
        *,
        normalize: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.reader = reader
        self.counters = reader.counters
        self.normalize = normalize
        manifest, summary = reader.manifest, reader.summary
        fallback = ChunkedRows(store, max_read_bytes=cfg.max_read_bytes)
        if (fallback.dim, str(fallback.dtype)) != (manifest.feat_dim, manifest.dtype):
            raise PackError(
                f"pack '{reader.url}' holds {manifest.dtype} rows of width {manifest.feat_dim}, "
                f"the store {fallback.dtype} of width {fallback.dim}"
            )
        device = device or torch.device("cpu")
        row_bytes = manifest.row_bytes
        hot = reader.hot_ids()  # hottest first: ranks [0, D) on the device, [D, D + H) on the host
        device_rows = min(len(hot), cfg.device_cache_bytes // row_bytes) if device.type == "cuda" else 0
        cfg.fit_in_flight(row_bytes, summary.max_input_rows)
        cached = min(len(hot), device_rows + cfg.cache_rows(row_bytes, summary.max_input_rows))
        table = torch.from_numpy(reader.hot_rows(cached))
        dim = manifest.feat_dim
        device_cache = NodeCache(hot[:device_rows], table[:device_rows], dim, device)
        host_rows = table[device_rows:].clone() if device_rows else table  # no host copy of device rows
        host_cache = NodeCache(hot[device_rows:cached], host_rows, dim, torch.device("cpu"))
        self.tiers = TieredFeatures(fallback, self.counters, device_cache=device_cache, host_cache=host_cache, device=device)

    def steps_per_epoch(self) -> int:
        return self.reader.manifest.steps_per_epoch

    def load(self, epoch: int, step: int, *, staged: bool = False) -> LoadedStep:
        record = self.reader.record(epoch, step)
        ranks, segment = self.reader.segment(epoch, step)
        if len(ranks) == 0:
            ranks = np.full(len(record.input_nodes), -1, dtype=np.int32)
        if len(ranks) != len(record.input_nodes) or int((ranks < 0).sum()) != len(segment):
            raise PackError(
                f"pack '{self.reader.url}' epoch {epoch} step {step}: the segment describes {len(ranks)} input nodes "
                f"({len(segment)} packed) but the batch has {len(record.input_nodes)}; the pack is corrupt; "
                "re-run 'strata pack --overwrite'"
            )
        x, device_rows = self.tiers.stage_ranked(record.input_nodes, ranks, segment)
        return loaded_step(self.tiers, record.to_blocks(), x, device_rows, record.output_nodes, normalize=self.normalize, staged=staged)

    def close(self) -> None:
        self.reader.close()


class CachedLoader:
    """Steps sampled online; features from the caches, the rest read from the store in chunk runs.

    Without an offline pass the hot set is the nodes of highest in-degree (ties: lower id),
    the usual static stand-in for access counts under neighbour sampling.
    """

    def __init__(
        self,
        store: DatasetStore,
        csc: tuple[np.ndarray, np.ndarray],
        sampler: SamplerConfig,
        train_ids: np.ndarray,
        cfg: FeaturesConfig,
        *,
        normalize: bool = False,
        device: torch.device | None = None,
        counters: FeatureCounters | None = None,
    ) -> None:
        self.counters = counters or FeatureCounters()
        self.normalize = normalize
        self.sampler = NeighbourSampler(csc[0], csc[1], sampler.fanouts)
        self.plan = EpochPlan(np.asarray(train_ids, dtype=np.int64), sampler.batch_size, sampler.seed)
        fallback = ChunkedRows(store, max_read_bytes=cfg.max_read_bytes)
        device = device or torch.device("cpu")
        num_nodes = len(csc[0]) - 1
        device_rows = cfg.device_cache_bytes // fallback.row_bytes if device.type == "cuda" else 0
        batch_rows = probe_batch_rows(self.sampler, self.plan, sampler.max_input_rows(num_nodes))
        cfg.fit_in_flight(fallback.row_bytes, batch_rows)
        cached = min(num_nodes, device_rows + cfg.cache_rows(fallback.row_bytes, batch_rows))
        degree = np.diff(csc[0])
        hot = np.lexsort((np.arange(num_nodes), -degree))[:cached].astype(np.int64)  # hottest first
        hot_sorted = np.sort(hot)
        rows, nbytes = fallback.gather(hot_sorted)
        self.counters.add_other(cache_fill=nbytes)
        device_cache, host_cache = _caches(hot_sorted, rows, hot[:device_rows], device)
        self.tiers = TieredFeatures(fallback, self.counters, device_cache=device_cache, host_cache=host_cache, device=device)
        self._lock = threading.Lock()
        self._order: tuple[int, np.ndarray] | None = None

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch()

    def load(self, epoch: int, step: int, *, staged: bool = False) -> LoadedStep:
        with self._lock:
            if self._order is None or self._order[0] != epoch:
                self._order = (epoch, self.plan.order(epoch))
            order = self._order[1]
        sampled = sample_step(self.sampler, self.plan, order, epoch, step)
        x, device_rows = self.tiers.stage(sampled.input_nodes)
        return loaded_step(self.tiers, sampled.to_blocks(), x, device_rows, sampled.output_nodes, normalize=self.normalize, staged=staged)

    def close(self) -> None:
        pass


def loaded_step(tiers: TieredFeatures, blocks: list[object], x: Tensor, device_rows: DeviceRows | None,
                output_nodes: np.ndarray, *, normalize: bool, staged: bool) -> LoadedStep:
    """A step whose features are on the loader's device, or, ``staged``, on the host with the
    device tier's rows apart (for a feed that copies them to the device itself)."""
    if not staged:
        x, device_rows = tiers.place(x, device_rows), None
    if normalize:
        x = normalize_rows(x)
        if device_rows is not None:
            device_rows.normalize = True
    return LoadedStep(blocks, x, output_nodes, device_rows)


PROBE_STEPS = 16
PROBE_HEADROOM = 1.25


def probe_batch_rows(sampler: NeighbourSampler, plan: EpochPlan, worst_case: int) -> int:
    """Input rows to provide for per batch in flight, from batches actually sampled: the largest
    of the first ``PROBE_STEPS`` steps of epoch 0, plus 25%, never above ``worst_case``.

    The worst case (batch size x prod(1 + fanout)) is several times what batches hold once
    neighbours repeat, and sizing for it left no room for a cache under budgets that the
    batches fit easily. A later batch larger than the probe's bound overshoots the budget by
    its excess only while it is in flight.
    """
    order = plan.order(0)
    steps = min(PROBE_STEPS, plan.steps_per_epoch())
    largest = max((len(sample_step(sampler, plan, order, 0, s).input_nodes) for s in range(steps)), default=0)
    return min(worst_case, max(1, int(largest * PROBE_HEADROOM)))


def open_packed(
    cfg: FeaturesConfig,
    store_url: str,
    sampler: SamplerConfig,
    epochs: int,
    train_ids: np.ndarray,
    *,
    partition: str = "",
    part: int = -1,
    normalize: bool = False,
    device: torch.device | None = None,
) -> PackedLoader:
    """The loader of the pack made for this run; any other pack is refused, saying why."""
    store = DatasetStore.open(store_url)
    expected = fmt.fingerprint_fields(store, sampler, epochs, np.asarray(train_ids, dtype=np.int64), partition, part)
    url = cfg.pack_dir or default_pack_dir(store.url, fmt.fingerprint(expected))
    if not fs.exists(fs.join(url, fmt.MANIFEST)):
        fanouts = ",".join(str(f) for f in sampler.fanouts)
        where = "" if cfg.pack_dir else " (features.pack_dir is empty: the default place for this run)"
        raise PackError(
            f"no pack at '{url}'{where}; write it with: strata pack {store.url} --fanouts {fanouts} "
            f"--batch-size {sampler.batch_size} --epochs {epochs} --seed {sampler.seed}"
            + (" --self-loops" if sampler.self_loops else "")
            + (f" --partition {partition} --part {part}" if partition else "")
            + (f" --out {cfg.pack_dir}" if cfg.pack_dir else "")
        )
    reader = PackReader.open(url, expected, verify=cfg.verify_checksums, spill_dir=cfg.spill_dir)
    try:
        return PackedLoader(reader, store, cfg, normalize=normalize, device=device)
    except BaseException:
        reader.close()
        raise
