"""Assembling one batch's input features from the tiers, fastest first.

device cache > host cache > packed segment > the store's feature array (fall-back). Each
row is taken from exactly one tier and copied bit for bit, so the result does not depend on
which tier served it. Rows the packed segment carries are fixed by the pack (the batch's
non-hot inputs, each input's hot rank recorded beside them); the caches and the fall-back
serve the rest.

For a CUDA device, :meth:`stage` and :meth:`stage_ranked` build the rows below the device tier
in pinned host memory, compact, and say apart how the device tier's rows join them
(:class:`DeviceRows`): whoever copies the batch to the device places them there
(strata.runtime.gnn.device_feed), so hot rows are never copied host to device and the copy can
overlap compute. :meth:`assemble` does both in one go.
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
    """How a staged batch's features come together on the device: the host rows, copied there
    compact, go to ``host_positions``; the device tier's rows ``rows[slots]`` to ``positions``.
    The hot rows are never copied host to device."""

    positions: Tensor
    """(k,) int64 rows of the batch's features that the device tier serves."""
    slots: Tensor
    """(k,) int64 their rows in :attr:`rows`."""
    rows: Tensor
    """The device cache's rows, resident on the GPU."""
    host_positions: Tensor
    """(num_rows - k,) int64 rows of the batch's features that the host rows fill, in order."""
    num_rows: int
    """Rows of the batch's features."""
    normalize: bool = False
    """Whether the device tier's rows are to be row-normalised (``data.normalize_features``;
    the host rows were, on the host)."""

    def place(self, host: Tensor) -> Tensor:
        """The batch's (num_rows, F) features on the device, from its host rows already there."""
        device = host.device
        x = torch.empty((self.num_rows, host.shape[1]), dtype=host.dtype, device=device)
        x.index_copy_(0, self.host_positions.to(device, non_blocking=True), host)
        served = self.rows.index_select(0, self.slots.to(device, non_blocking=True))  # (k, F)
        x.index_copy_(0, self.positions.to(device, non_blocking=True), normalize_rows(served) if self.normalize else served)
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
        """:meth:`assemble` in two parts: the rows the device tier does not serve, in order, in
        host memory (pinned for a CUDA device), and how the device tier's rows join them (None
        when it served none: the host rows are then the whole batch)."""
        n = len(nodes)
        t0 = time.perf_counter()
        pos, slot = self.device_cache.lookup(nodes)
        keep, on_device = self._split(pos, slot, n)
        if len(self.device_cache) and n:
            self.counters.add("device", len(pos), len(pos) * self.row_bytes, time.perf_counter() - t0)
        nodes = nodes if keep is None else nodes[keep]
        x = self._host_rows(len(nodes))
        rest = self._from_cache("host", self.host_cache, nodes, np.arange(len(nodes), dtype=np.int64), x)
        if len(rest):
            t0 = time.perf_counter()
            rows, nbytes = self.fallback.gather(nodes[rest])
            put_rows(x, rest, rows)
            self.counters.add("zarr", len(rest), nbytes, time.perf_counter() - t0)
        self.counters.add_other(needed=n * self.row_bytes, batches=1)
        return x, on_device

    def stage_ranked(self, nodes: np.ndarray, ranks: np.ndarray, packed: np.ndarray) -> tuple[Tensor, DeviceRows | None]:
        """:meth:`assemble_ranked` in the two parts of :meth:`stage`."""
        n = len(nodes)
        on_device, on_host = len(self.device_cache), len(self.host_cache)
        t0 = time.perf_counter()
        pos = np.flatnonzero((ranks >= 0) & (ranks < on_device)) if on_device else np.empty(0, dtype=np.int64)
        keep, device_rows = self._split(pos, ranks[pos].astype(np.int64), n)
        if on_device:
            self.counters.add("device", len(pos), len(pos) * self.row_bytes, time.perf_counter() - t0)
        if keep is not None:  # the packed (-1) rows keep their order
            nodes, ranks = nodes[keep], ranks[keep]
        x = self._host_rows(len(nodes))
        self._from_ranks("host", self.host_cache, ranks, on_device, on_device + on_host, x)
        put_rows(x, np.flatnonzero(ranks < 0), packed)
        far = np.flatnonzero(ranks >= on_device + on_host)
        if len(far):
            t0 = time.perf_counter()
            rows, nbytes = self.fallback.gather(nodes[far])
            put_rows(x, far, rows)
            self.counters.add("zarr", len(far), nbytes, time.perf_counter() - t0)
        self.counters.add_other(needed=n * self.row_bytes, batches=1)
        return x, device_rows

    def place(self, host: Tensor, device_rows: DeviceRows | None) -> Tensor:
        """The staged rows ``host`` on the device, the device tier's rows placed among them."""
        if device_rows is None and self.device.type == "cpu":
            return host
        x = host.to(self.device, non_blocking=True)
        return x if device_rows is None else device_rows.place(x)

    def _host_rows(self, n: int) -> Tensor:
        return torch.empty((n, self.fallback.dim), dtype=self.dtype, pin_memory=self.device.type == "cuda")

    def _split(self, pos: np.ndarray, slots: np.ndarray, n: int) -> tuple[np.ndarray | None, DeviceRows | None]:
        """(positions the host serves, the device tier's rows) of a batch of ``n`` rows whose
        positions ``pos`` the device tier serves; (None, None) when it serves none."""
        if len(pos) == 0:
            return None, None
        host = np.ones(n, dtype=bool)
        host[pos] = False
        keep = np.flatnonzero(host)
        return keep, DeviceRows(torch.from_numpy(pos.astype(np.int64)), torch.from_numpy(slots.astype(np.int64)),
                                self.device_cache.rows, torch.from_numpy(keep), n)

    def _from_ranks(self, tier: str, cache: NodeCache, ranks: np.ndarray, lo: int, hi: int, x: Tensor) -> None:
        if hi <= lo:
            return
        t0 = time.perf_counter()
        pos = np.flatnonzero((ranks >= lo) & (ranks < hi))
        if len(pos):
            put_rows(x, pos, cache.rows, ranks[pos].astype(np.int64) - lo)
        self.counters.add(tier, len(pos), len(pos) * self.row_bytes, time.perf_counter() - t0)

    def _from_cache(self, tier: str, cache: NodeCache, nodes: np.ndarray, rest: np.ndarray, x: Tensor) -> np.ndarray:
        """Fill the rows ``cache`` holds among positions ``rest``; the positions still unserved."""
        if len(cache) == 0 or len(rest) == 0:
            return rest
        t0 = time.perf_counter()
        pos, slot = cache.lookup(nodes[rest])
        if len(pos):
            put_rows(x, rest[pos], cache.rows, slot)
        self.counters.add(tier, len(pos), len(pos) * self.row_bytes, time.perf_counter() - t0)
        return np.delete(rest, pos)


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
