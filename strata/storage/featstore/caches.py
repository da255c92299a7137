"""Hot-node caches (device above host) and the counters every tier reports into.

A cache holds the rows of a fixed set of hot nodes, chosen once (by access count in the
offline pass, or by in-degree without one) and never evicted: DiskGNN's observation is
that the hot set of an epoch is known ahead of it, so replacement only costs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

TIERS = ("device", "host", "packed", "zarr")
"""Where a feature row can come from, fastest first."""


@dataclass
class TierCounter:
    hits: int = 0
    """Feature rows served by this tier."""
    bytes: int = 0
    """Bytes this tier read or copied to serve them (storage tiers: bytes read from storage)."""
    seconds: float = 0.0
    """Wall time spent in this tier."""


@dataclass
class FeatureCounters:
    """Counters of one feature store; thread-safe. The runtime feeds
    ``strata_cache_hits_total{tier}`` from :meth:`cache_hits` and
    ``strata_storage_read_bytes_total`` from :attr:`storage_read_bytes`."""

    tiers: dict[str, TierCounter] = field(default_factory=lambda: {t: TierCounter() for t in TIERS})
    needed_bytes: int = 0
    """Bytes of feature rows the batches needed (rows x row bytes, whichever tier served them)."""
    cache_fill_bytes: int = 0
    """Bytes read from storage to fill the caches."""
    block_bytes: int = 0
    """Bytes of sampled-block records read from a pack (graph structure, not features)."""
    batches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, tier: str, hits: int, nbytes: int, seconds: float) -> None:
        with self._lock:
            counter = self.tiers[tier]
            counter.hits += int(hits)
            counter.bytes += int(nbytes)
            counter.seconds += seconds

    def add_other(self, *, needed: int = 0, cache_fill: int = 0, blocks: int = 0, batches: int = 0) -> None:
        with self._lock:
            self.needed_bytes += int(needed)
            self.cache_fill_bytes += int(cache_fill)
            self.block_bytes += int(blocks)
            self.batches += int(batches)

    @contextmanager
    def timed(self, tier: str) -> Iterator[list[int]]:
        """``with counters.timed(tier) as hits_bytes: ...; hits_bytes[:] = [hits, nbytes]``."""
        out = [0, 0]
        t0 = time.perf_counter()
        yield out
        self.add(tier, out[0], out[1], time.perf_counter() - t0)

    def cache_hits(self) -> dict[str, int]:
        """Rows served per tier."""
        with self._lock:
            return {tier: c.hits for tier, c in self.tiers.items()}

    @property
    def feature_read_bytes(self) -> int:
        """Feature bytes read from storage: packed segments, fall-back reads and cache fills."""
        return self.tiers["packed"].bytes + self.tiers["zarr"].bytes + self.cache_fill_bytes

    @property
    def storage_read_bytes(self) -> int:
        """Every byte read from storage, block records included."""
        return self.feature_read_bytes + self.block_bytes

    def read_amplification(self) -> float:
        """Feature bytes read from storage over feature bytes the batches needed."""
        return self.feature_read_bytes / self.needed_bytes if self.needed_bytes else 0.0

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "tiers": {t: vars(c).copy() for t, c in self.tiers.items()},
                "needed_bytes": self.needed_bytes,
                "cache_fill_bytes": self.cache_fill_bytes,
                "block_bytes": self.block_bytes,
                "batches": self.batches,
            }


class NodeCache:
    """The rows of a fixed set of nodes, on one device; lookups by global node id.

    Rows stay in the order given (no copy); a sorted copy of the ids and the permutation to
    their rows make membership a binary search, so memory stays proportional to the cache,
    not to the graph. An empty cache (no rows, or no such device) answers every lookup with
    no hits through the same code.
    """

    def __init__(self, ids: np.ndarray, rows: Tensor | None, feat_dim: int, device: torch.device) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self.device = device
        if rows is None or len(ids) == 0:
            ids = ids[:0]
            self.rows = torch.empty((0, feat_dim), device=device)
        else:
            self.rows = rows.to(device)
        self._slot_of_sorted = np.argsort(ids, kind="stable")
        self.ids = ids[self._slot_of_sorted]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()

    def lookup(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``nodes`` that are cached, their rows in :attr:`rows`)."""
        if len(self.ids) == 0 or len(nodes) == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        at = np.searchsorted(self.ids, nodes)
        at[at == len(self.ids)] = 0
        pos = np.flatnonzero(self.ids[at] == nodes)
        return pos, self._slot_of_sorted[at[pos]]


def is_member(nodes: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``nodes`` are in the sorted array ``sorted_ids``."""
    if len(sorted_ids) == 0:
        return np.zeros(len(nodes), dtype=bool)
    slot = np.searchsorted(sorted_ids, nodes)
    slot[slot == len(sorted_ids)] = 0
    return sorted_ids[slot] == nodes
