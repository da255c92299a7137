"""Clustering a data set into k parts for decentralized diffusion experts.

Mini-batch k-means (Sculley, 2010) streaming over row chunks of one store array
(``node/feat``, ``images/data`` ...): each row is flattened to a vector, so N x C x H x W
images cluster on their pixels (or on embeddings stored as their own array). Memory is
O(chunk + k * D + N) for the labels.

1. init: k-means++ on a sample of rows drawn from chunks in a seeded random order;
2. ``epochs`` passes over the chunks in a fresh random order, each chunk's rows shuffled
   and cut into mini-batches; a centre moves towards each row assigned to it with step
   1 / (rows it has seen), so it tracks the mean of its rows;
3. one last pass labels every row with its nearest centre and sums the squared distances.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from strata.errors import PartitionError
from strata.partitioners.report import Balance
from strata.storage.store import DatasetStore

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 30.0
"""Without a progress bar, how often a long clustering says which pass it is on."""


@dataclass
class KMeansConfig:
    """How to cluster rows of a store array."""

    num_clusters: int = 8
    """k: number of clusters (experts)."""
    epochs: int = 3
    """Mini-batch passes over the data after initialisation."""
    batch_rows: int = 1024
    """Rows per mini-batch update."""
    chunk_rows: int = 0
    """Rows read from the store at a time; 0 means about 64 MiB of rows."""
    init_rows: int = 20_000
    """Rows sampled for k-means++ initialisation."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_clusters < 1:
            raise PartitionError(f"kmeans.num_clusters must be at least 1, got {self.num_clusters}")
        if self.epochs < 0:
            raise PartitionError(f"kmeans.epochs must be >= 0, got {self.epochs}")
        if self.chunk_rows < 0:
            raise PartitionError(f"kmeans.chunk_rows must be >= 0 (0 = automatic), got {self.chunk_rows}")
        for name in ("batch_rows", "init_rows"):
            if getattr(self, name) < 1:
                raise PartitionError(f"kmeans.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ClusterReport:
    """Sizes and balance of the clusters, and how tight they are."""

    num_rows: int
    num_clusters: int
    sizes: list[int]
    balance: Balance
    """max/mean cluster size; experts train on one cluster each, so this is their load balance."""
    empty_clusters: int
    inertia: float
    """Sum of squared distances of rows to their centres."""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def format(self) -> str:
        return (
            f"{self.num_clusters} clusters over {self.num_rows:,} rows: sizes {self.sizes}; "
            f"balance {self.balance.max_over_mean:.3f} (max/mean), {self.empty_clusters} empty; "
            f"inertia {self.inertia:.4g}; {self.seconds:.1f} s"
        )


@dataclass
class ClusterResult:
    labels: np.ndarray  # (N,) int32
    centroids: np.ndarray  # (k, D) float32
    report: ClusterReport


ReadRows = Callable[[int, int], np.ndarray]


def cluster_store(store: DatasetStore | str, key: str, cfg: KMeansConfig, progress: bool = False) -> ClusterResult:
    """Cluster the rows of array ``key`` of ``store`` into ``cfg.num_clusters`` clusters."""
    store = store if isinstance(store, DatasetStore) else DatasetStore.open(store)
    if not store.has(key):
        raise PartitionError(f"store '{store.url}' has no '{key}' to cluster (it holds: {', '.join(store.meta.arrays)})")
    shape = store.meta.arrays[key]["shape"]
    width = int(np.prod(shape[1:], dtype=np.int64))
    return kmeans(lambda a, b: store.read(key, a, b), int(shape[0]), cfg, width=width, progress=progress)


def cluster_array(data: np.ndarray, cfg: KMeansConfig) -> ClusterResult:
    """:func:`cluster_store` for an array in memory."""
    width = int(np.prod(data.shape[1:], dtype=np.int64))
    return kmeans(lambda a, b: data[a:b], len(data), cfg, width=width)


def kmeans(read: ReadRows, num_rows: int, cfg: KMeansConfig, *, width: int = 1, progress: bool = False) -> ClusterResult:
    """Mini-batch k-means over rows ``read(start, stop)`` (``width`` values each) of ``num_rows`` rows."""
    k = cfg.num_clusters
    if not cfg.chunk_rows:
        cfg = dataclasses.replace(cfg, chunk_rows=max(1, (64 << 20) // (4 * max(width, 1))))
    if not 1 <= k <= num_rows:
        raise PartitionError(f"cannot cluster {num_rows:,} rows into {k} clusters: need 1 <= clusters <= rows")
    started = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 21])
    centres = _init(read, num_rows, cfg, rng)
    seen = np.zeros(k, dtype=np.int64)
    chunks = list(range(0, num_rows, cfg.chunk_rows))
    logged = started
    for epoch in tqdm(range(cfg.epochs), desc="kmeans", unit="epoch", disable=not progress):
        if not progress and time.perf_counter() - logged >= LOG_EVERY_SECONDS:  # no bar: a line in the log now and then
            logged = time.perf_counter()
            log.info("kmeans: pass %d of %d over %s rows, %.0fs so far", epoch + 1, cfg.epochs, f"{num_rows:,}", logged - started)
        for start in rng.permutation(chunks).tolist():
            rows = _rows(read, start, min(start + cfg.chunk_rows, num_rows))
            rows = rows[rng.permutation(len(rows))]
            for b in range(0, len(rows), cfg.batch_rows):
                _update(centres, seen, rows[b : b + cfg.batch_rows])
    labels = np.empty(num_rows, dtype=np.int32)
    inertia = 0.0
    for start in chunks:
        rows = _rows(read, start, min(start + cfg.chunk_rows, num_rows))
        nearest, dist = _nearest(rows, centres)
        labels[start : start + len(rows)] = nearest
        inertia += float(dist.sum(dtype=np.float64))
    sizes = np.bincount(labels, minlength=k)
    report = ClusterReport(
        num_rows=num_rows,
        num_clusters=k,
        sizes=sizes.tolist(),
        balance=Balance.of(sizes),
        empty_clusters=int((sizes == 0).sum()),
        inertia=inertia,
        seconds=time.perf_counter() - started,
    )
    return ClusterResult(labels, centres.astype(np.float32), report)


def _rows(read: ReadRows, start: int, stop: int) -> np.ndarray:
    rows = np.asarray(read(start, stop))
    return rows.reshape(len(rows), -1).astype(np.float32, copy=False)


def _iter_sample(read: ReadRows, num_rows: int, cfg: KMeansConfig, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Random rows from chunks in random order, about ``init_rows`` in all."""
    per_chunk = max(1, int(np.ceil(cfg.init_rows * cfg.chunk_rows / num_rows)))
    taken = 0
    for start in rng.permutation(np.arange(0, num_rows, cfg.chunk_rows)).tolist():
        rows = _rows(read, start, min(start + cfg.chunk_rows, num_rows))
        pick = rng.choice(len(rows), size=min(per_chunk, len(rows)), replace=False)
        yield rows[pick]
        taken += len(pick)
        if taken >= cfg.init_rows:
            return


def _init(read: ReadRows, num_rows: int, cfg: KMeansConfig, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on a sample: each next centre drawn with probability ~ squared distance."""
    sample = np.concatenate(list(_iter_sample(read, num_rows, cfg, rng)))
    k = cfg.num_clusters
    if len(sample) < k:  # tiny data sets: take every row
        sample = _rows(read, 0, num_rows)
    centres = [sample[rng.integers(len(sample))]]
    dist = ((sample - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = dist.sum()
        idx = int(rng.choice(len(sample), p=dist / total)) if total > 0 else int(rng.integers(len(sample)))
        centres.append(sample[idx])
        dist = np.minimum(dist, ((sample - sample[idx]) ** 2).sum(1))
    return np.stack(centres).astype(np.float32)


def _nearest(rows: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre and squared distance of each row.  rows (B, D), centres (k, D)"""
    d2 = (rows**2).sum(1)[:, None] - 2.0 * rows @ centres.T + (centres**2).sum(1)[None, :]  # (B, k)
    nearest = d2.argmin(1)
    return nearest, np.maximum(d2[np.arange(len(rows)), nearest], 0.0)


def _update(centres: np.ndarray, seen: np.ndarray, batch: np.ndarray) -> None:
    """One mini-batch step: each centre moves to the running mean of the rows it was given."""
    nearest, _ = _nearest(batch, centres)
    k = len(centres)
    counts = np.bincount(nearest, minlength=k)
    onehot = np.zeros((k, len(batch)), dtype=batch.dtype)
    onehot[nearest, np.arange(len(batch))] = 1.0
    sums = onehot @ batch  # (k, D)
    hit = counts > 0
    seen[hit] += counts[hit]
    rate = counts[hit] / seen[hit]  # per centre: rows this batch / rows ever
    centres[hit] += (rate[:, None] * (sums[hit] / counts[hit][:, None] - centres[hit])).astype(centres.dtype)
