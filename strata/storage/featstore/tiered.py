"""Assembling one batch's input features from the tiers, fastest first.

device cache > host cache > packed segment > the store's feature array (fall-back). Each
row is taken from exactly one tier and copied bit for bit, so the result does not depend on
which tier served it. Rows the packed segment carries are fixed by the pack (the batch's
non-hot inputs); the caches and the fall-back serve the rest.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from strata.storage.featstore.caches import FeatureCounters, NodeCache
from strata.storage.featstore.rows import ChunkedRows


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

    def assemble(self, nodes: np.ndarray, packed: np.ndarray | None = None, packed_pos: np.ndarray | None = None) -> Tensor:
        """Rows of ``nodes``; ``packed`` (if given) holds the rows at positions ``packed_pos``."""
        n = len(nodes)
        x = torch.empty((n, self.fallback.dim), dtype=self.dtype, device=self.device)
        rest = np.arange(n, dtype=np.int64)
        if packed is not None:
            rest = np.delete(rest, packed_pos)
        rest = self._from_cache("device", self.device_cache, nodes, rest, x)
        rest = self._from_cache("host", self.host_cache, nodes, rest, x)
        if packed is not None and len(packed_pos):
            put_rows(x, packed_pos, packed)
        if len(rest):
            t0 = time.perf_counter()
            rows, nbytes = self.fallback.gather(nodes[rest])
            put_rows(x, rest, rows)
            self.counters.add("zarr", len(rest), nbytes, time.perf_counter() - t0)
        self.counters.add_other(needed=n * self.row_bytes, batches=1)
        return x

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
