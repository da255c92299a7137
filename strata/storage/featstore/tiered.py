"""Assembling one batch's input features from the tiers, fastest first.

device cache > host cache > packed segment > the store's feature array (fall-back). Each
row is taken from exactly one tier and copied bit for bit, so the result does not depend on
which tier served it. Rows the packed segment carries are fixed by the pack (the batch's
non-hot inputs, each input's hot rank recorded beside them); the caches and the fall-back
serve the rest.

For a CUDA device, :meth:`stage` and :meth:`stage_ranked` build the rows below the device tier
in pinned host memory and return the device tier's rows apart (:class:`DeviceRows`): whoever
copies the batch to the device places them there (strata.runtime.gnn.device_feed), so hot rows
are never copied host to device and the copy can overlap compute. :meth:`assemble` does both
in one go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from strata.storage.featstore.caches import FeatureCounters, NodeCache
from strata.storage.rows import ChunkedRows, normalize_rows


@dataclass
class DeviceRows:
    """The rows of a batch that the device tier serves: ``x[positions] = rows[slots]`` on the device."""

    positions: Tensor
    """(k,) int64 rows of the batch's features."""
    slots: Tensor
    """(k,) int64 rows of :attr:`rows`."""
    rows: Tensor
    """The device cache's rows, resident on the GPU."""
    normalize: bool = False
    """Whether the placed rows are to be row-normalised (``data.normalize_features``)."""

    def place(self, x: Tensor) -> Tensor:
        """``x`` (on the device) with these rows placed in it."""
        if len(self.positions):
            served = self.rows.index_select(0, self.slots.to(x.device, non_blocking=True))
            x.index_copy_(0, self.positions.to(x.device, non_blocking=True), normalize_rows(served) if self.normalize else served)
        return x


class TieredFeatures:
    """Builds the (num_input_nodes, F) feature tensor of a batch on ``device``."""

    def __init__(
        self,
        fallback: ChunkedRows,
        counters: FeatureCounters,
        *,
        device_cache: NodeCache,
        host_cache: NodeCache,
        device: torch.device,
    ) -> None:
        self.fallback = fallback
        self.counters = counters
        self.device_cache = device_cache
        self.host_cache = host_cache
        self.device = device
        self.dtype = getattr(torch, str(fallback.dtype))
        self.row_bytes = fallback.row_bytes

    def assemble(self, nodes: np.ndarray) -> Tensor:
        """Rows of ``nodes``, looked up by id in the caches, the rest read from the store."""
        return self.place(*self.stage(nodes))

    def assemble_ranked(self, nodes: np.ndarray, ranks: np.ndarray, packed: np.ndarray) -> Tensor:
        """Rows of ``nodes`` for a packed step, placed by hot rank alone (no lookups).

        ``ranks[i]`` is node i's place in the hot list or -1; the device cache holds hot ranks
        [0, D), the host cache [D, D + H), both in rank order; -1 rows are ``packed``, in order;
        hot nodes beyond D + H come from the store.
        """
        return self.place(*self.stage_ranked(nodes, ranks, packed))

    def stage(self, nodes: np.ndarray) -> tuple[Tensor, DeviceRows | None]:
        """:meth:`assemble` in two parts: the rows below the device tier in host memory (pinned
        for a CUDA device), and the device tier's rows (None when it served none)."""
        n = len(nodes)
        x = self._host_rows(n)
        rest = np.arange(n, dtype=np.int64)
        rest, on_device = self._from_cache("device", self.device_cache, nodes, rest, x)
        rest, _ = self._from_cache("host", self.host_cache, nodes, rest, x)
        if len(rest):
            t0 = time.perf_counter()
            rows, nbytes = self.fallback.gather(nodes[rest])
            put_rows(x, rest, rows)
            self.counters.add("zarr", len(rest), nbytes, time.perf_counter() - t0)
        self.counters.add_other(needed=n * self.row_bytes, batches=1)
        return x, on_device

    def stage_ranked(self, nodes: np.ndarray, ranks: np.ndarray, packed: np.ndarray) -> tuple[Tensor, DeviceRows | None]:
        """:meth:`assemble_ranked` in the two parts of :meth:`stage`."""
        x = self._host_rows(len(nodes))
        on_device, on_host = len(self.device_cache), len(self.host_cache)
        device_rows = self._from_ranks("device", self.device_cache, ranks, 0, on_device, x)
        self._from_ranks("host", self.host_cache, ranks, on_device, on_device + on_host, x)
        put_rows(x, np.flatnonzero(ranks < 0), packed)
        far = np.flatnonzero(ranks >= on_device + on_host)
        if len(far):
            t0 = time.perf_counter()
            rows, nbytes = self.fallback.gather(nodes[far])
            put_rows(x, far, rows)
            self.counters.add("zarr", len(far), nbytes, time.perf_counter() - t0)
        self.counters.add_other(needed=len(nodes) * self.row_bytes, batches=1)
        return x, device_rows

    def _host_rows(self, n: int) -> Tensor:
        pin = self.device.type == "cuda"
        return torch.empty((n, self.fallback.dim), dtype=self.dtype, pin_memory=pin)

    def place(self, host: Tensor, device_rows: DeviceRows | None) -> Tensor:
        """The staged rows ``host`` on the device, the device tier's rows placed in them."""
        if self.device.type == "cpu":
            return host
        x = host.to(self.device, non_blocking=True)
        return x if device_rows is None else device_rows.place(x)

    def _from_ranks(self, tier: str, cache: NodeCache, ranks: np.ndarray, lo: int, hi: int, x: Tensor) -> DeviceRows | None:
        if hi <= lo:
            return None
        t0 = time.perf_counter()
        pos = np.flatnonzero((ranks >= lo) & (ranks < hi))
        slots = ranks[pos].astype(np.int64) - lo
        staged = self._on_device(cache, pos, slots)
        if staged is None and len(pos):
            put_rows(x, pos, cache.rows, slots)
        self.counters.add(tier, len(pos), len(pos) * self.row_bytes, time.perf_counter() - t0)
        return staged

    def _from_cache(self, tier: str, cache: NodeCache, nodes: np.ndarray, rest: np.ndarray,
                    x: Tensor) -> tuple[np.ndarray, DeviceRows | None]:
        """Fill the rows ``cache`` holds among positions ``rest`` (a GPU cache's rows are returned
        to be placed on the device); the positions still unserved."""
        if len(cache) == 0 or len(rest) == 0:
            return rest, None
        t0 = time.perf_counter()
        pos, slot = cache.lookup(nodes[rest])
        staged = self._on_device(cache, rest[pos], slot)
        if staged is None and len(pos):
            put_rows(x, rest[pos], cache.rows, slot)
        self.counters.add(tier, len(pos), len(pos) * self.row_bytes, time.perf_counter() - t0)
        return np.delete(rest, pos), staged

    @staticmethod
    def _on_device(cache: NodeCache, positions: np.ndarray, slots: np.ndarray) -> DeviceRows | None:
        if cache.rows.device.type == "cpu" or len(positions) == 0:
            return None
        return DeviceRows(torch.from_numpy(positions.astype(np.int64)), torch.from_numpy(slots.astype(np.int64)), cache.rows)


def put_rows(x: Tensor, positions: np.ndarray, rows: np.ndarray | Tensor, slots: np.ndarray | None = None) -> None:
    """``x[positions] = rows[slots]`` (all of ``rows`` without ``slots``), an exact copy.

    On the CPU through numpy (take + fancy assignment: several times faster than torch's
    advanced indexing on this path); on a CUDA device through torch, rows moving host to device.
    """
    if x.device.type == "cpu":
        src = rows.numpy() if isinstance(rows, Tensor) else rows
        x.numpy()[positions] = src if slots is None else np.take(src, slots, axis=0)
        return
    src = rows if isinstance(rows, Tensor) else torch.from_numpy(rows)
    if slots is not None:
        src = src.index_select(0, torch.from_numpy(slots).to(src.device))
    x.index_copy_(0, torch.from_numpy(positions).to(x.device), src.to(x.device))
