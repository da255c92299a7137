"""The ``features`` section of a job config: how node features reach the training loop."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from strata.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("in_memory", "cached", "packed")


@dataclass
class FeaturesConfig:
    """How feature bytes arrive. The mode never changes what is trained: for one seed every
    mode yields the same batches, bit for bit."""

    mode: str = "in_memory"
    """'in_memory': the whole feature matrix is loaded once. 'cached': batches are sampled
    online, hot nodes come from the caches and the rest from the store's feature array in
    chunk-sized reads. 'packed': batches and their features come from a pack written by
    `strata pack` (sequential reads), hot nodes from the caches."""
    host_cache_bytes: int = 1 << 30
    """Host memory for features, in bytes: the batches in flight (see ``prefetch`` and
    ``workers``) plus a cache of the hottest nodes in what is left. Too small to hold the
    batches in flight is an error that says how much is needed."""
    device_cache_bytes: int = 0
    """Bytes of GPU memory for the hottest nodes, above the host cache; used only when the
    batches are built on a CUDA device, ignored (the tier stays empty) otherwise."""
    prefetch: int = 2
    """Batches loaded ahead of the training step by background threads; 0 loads in the
    training thread."""
    workers: int = 1
    """Background threads that load and assemble batches."""
    pack_dir: str = ""
    """URL of the pack (packed mode); empty = STORE/packs/<fingerprint>, where `strata pack`
    writes by default."""
    spill_dir: str = ""
    """Local directory that pack files of a remote (non-local) pack are staged to before they
    are read; empty = a fresh temporary directory."""
    verify_checksums: bool = True
    """Check every packed segment against its checksum before it is used."""
    max_read_bytes: int = 32 << 20
    """Largest single read of the store's feature array (cache fill and fall-back reads)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"features.mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.host_cache_bytes < 0:
            raise ConfigError(f"features.host_cache_bytes must be >= 0, got {self.host_cache_bytes}")
        if self.device_cache_bytes < 0:
            raise ConfigError(f"features.device_cache_bytes must be >= 0, got {self.device_cache_bytes}")
        if self.prefetch < 0:
            raise ConfigError(f"features.prefetch must be >= 0, got {self.prefetch}")
        if self.workers < 1:
            raise ConfigError(f"features.workers must be at least 1, got {self.workers}")
        if self.max_read_bytes < 1 << 16:
            raise ConfigError(f"features.max_read_bytes must be at least 65536, got {self.max_read_bytes}")

    def batches_in_flight(self) -> int:
        """Batch-sized buffers alive at once: ``prefetch`` batches queued or being assembled,
        the one training and the one before it (until the loop lets it go), and per worker the
        packed segment a batch is assembled from."""
        return self.prefetch + 2 + self.workers if self.prefetch else 3

    def fit_in_flight(self, row_bytes: int, max_batch_rows: int) -> None:
        """Lower ``prefetch`` (and ``workers`` with it) in place until the batches in flight fit
        ``host_cache_bytes``, saying so: a small budget trains with less read-ahead rather than
        not at all. Whoever prefetches for a loader reads the lowered values from this config.
        When even no read-ahead fits, :meth:`cache_rows` says how much is needed."""
        wanted = (self.prefetch, self.workers)
        while self.prefetch and self.batches_in_flight() * max_batch_rows * row_bytes > self.host_cache_bytes:
            self.prefetch -= 1
            self.workers = max(1, min(self.workers, self.prefetch))
        if (self.prefetch, self.workers) != wanted:
            log.warning(
                "features.host_cache_bytes = %s holds %d batch buffers of up to %s rows x %d bytes, not the %d that "
                "prefetch %d and workers %d need: loading with prefetch %d, workers %d (no hot-node cache left if the "
                "buffers take it all); raise host_cache_bytes for more read-ahead",
                f"{self.host_cache_bytes:,}", self.batches_in_flight(), f"{max_batch_rows:,}", row_bytes,
                FeaturesConfig(prefetch=wanted[0], workers=wanted[1]).batches_in_flight(), *wanted, self.prefetch, self.workers,
            )

    def cache_rows(self, row_bytes: int, max_batch_rows: int) -> int:
        """Rows the host cache may hold once the batches in flight are provided for."""
        need = self.batches_in_flight() * max_batch_rows * row_bytes
        if self.host_cache_bytes < need:
            raise ConfigError(
                f"features.host_cache_bytes = {self.host_cache_bytes:,} cannot hold the "
                f"{self.batches_in_flight()} batch buffers in flight (prefetch {self.prefetch}, "
                f"workers {self.workers}) of up to {max_batch_rows:,} rows x {row_bytes} bytes: "
                f"it needs at least {need:,} bytes; raise it, or lower prefetch/workers"
            )
        return (self.host_cache_bytes - need) // max(row_bytes, 1)
