"""Assembling one batch's input features from the tiers, fastest first.

device cache > host cache > packed segment > the store's feature array (fall-back). Each
row is taken from exactly one tier and copied bit for bit, so the result does not depend on
which tier served it. Rows the packed segment carries are fixed by the pack (the batch's
non-hot inputs, each input's hot rank recorded beside them); the caches and the fall-back
serve the rest.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from strata.storage.featstore.caches import FeatureCounters, NodeCache
from strata.storage.rows import ChunkedRows


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
        n = len(nodes)
        x = torch.empty((n, self.fallback.dim), dtype=self.dtype, device=self.device)
        rest = np.arange(n, dtype=np.int64)
        rest = self._from_cache("device", self.device_cache, nodes, rest, x)
        rest = self._from_cache("host", self.host_cache, nodes, rest, x)
        if len(rest):
            t0 = time.perf_counter()
            rows, nbytes = self.fallback.gather(nodes[rest])
            put_rows(x, rest, rows)
            self.counters.add("zarr", len(rest), nbytes, time.perf_counter() - t0)
        self.counters.add_other(needed=n * self.row_bytes, batches=1)
        return x

    def assemble_ranked(self, nodes: np.ndarray, ranks: np.ndarray, packed: np.ndarray) -> Tensor:
        """Rows of ``nodes`` for a packed step, placed by hot rank alone (no lookups).

        ``ranks[i]`` is node i's place in the hot list or -1; the device cache holds hot ranks
        [0, D), the host cache [D, D + H), both in rank order; -1 rows are ``packed``, in order;
        hot nodes beyond D + H come from the store.
        """
        x = torch.empty((len(nodes), self.fallback.dim), dtype=self.dtype, device=self.device)
        on_device, on_host = len(self.device_cache), len(self.host_cache)
        self._from_ranks("device", self.device_cache, ranks, 0, on_device, x)
        self._from_ranks("host", self.host_cache, ranks, on_device, on_device + on_host, x)
        put_rows(x, np.flatnonzero(ranks < 0), packed)
        far = np.flatnonzero(ranks >= on_device + on_host)
        if len(far):
            t0 = time.perf_counter()
            rows, nbytes = self.fallback.gather(nodes[far])
            put_rows(x, far, rows)
            self.counters.add("zarr", len(far), nbytes, time.perf_counter() - t0)
        self.counters.add_other(needed=len(nodes) * self.row_bytes, batches=1)
        return x

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
