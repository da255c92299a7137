"""Balanced k-means: k clusters of (almost) equal size, for expert sets.

Each expert of a set trains the same number of steps on its cluster, so a cluster several times
larger than another gets far fewer passes over its images (the pixel clustering of digits made
clusters of 226 and 661 images). Here every assignment step is capacity-constrained: rows go to
their nearest centre that still has room, the closest rows first, each centre holding at most
ceil(N / k) rows, so sizes differ by less than k rows. The centres are then the means of their
rows, as in Lloyd's algorithm.

Deterministic for a seed: k-means++ initialisation from a seeded generator, ties broken by row
and centre index (a stable sort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strata.errors import ConfigError


@dataclass
class BalancedClusters:
    labels: np.ndarray
    """(N,) int64: the cluster of each row."""
    centroids: np.ndarray
    """(k, D) float32."""
    iterations: int
    """Assignment rounds until no row moved (or the limit)."""

    @property
    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.centroids)).tolist()


def balanced_kmeans(features: np.ndarray, k: int, *, seed: int, max_iterations: int = 30) -> BalancedClusters:
    """Cluster the rows of ``features`` (N, D) into ``k`` clusters of ceil(N / k) or fewer rows each."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = len(x)
    if not 1 <= k <= n:
        raise ConfigError(f"balanced k-means needs 1 <= k <= rows, got k={k} for {n} rows")
    rng = np.random.default_rng(seed)
    centres = _kmeanspp(x, k, rng)
    labels = np.full(n, -1, dtype=np.int64)
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        new = _assign_with_capacity(x, centres, capacity=-(-n // k))
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            centres[c] = x[labels == c].mean(0)
    return BalancedClusters(labels, centres.astype(np.float32), iterations)


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, k) squared Euclidean distances."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    nearest = _squared_distances(x, np.stack(centres))[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        row = rng.choice(len(x), p=nearest / total) if total > 0 else rng.integers(len(x))
        centres.append(x[row])
        nearest = np.minimum(nearest, _squared_distances(x, x[row][None])[:, 0])
    return np.stack(centres).copy()


def _assign_with_capacity(x: np.ndarray, centres: np.ndarray, *, capacity: int) -> np.ndarray:
    """Each row to the nearest centre that has room. In rounds: every unplaced row proposes to
    its nearest centre with room, and each centre keeps its closest proposers up to its room;
    a round fills at least one centre or places every row, so there are at most k rounds."""
    n, k = len(x), len(centres)
    distances = _squared_distances(x, centres)
    labels = np.full(n, -1, dtype=np.int64)
    room = np.full(k, capacity, dtype=np.int64)
    while (unplaced := np.flatnonzero(labels < 0)).size:
        d = np.where(room[None, :] > 0, distances[unplaced], np.inf)
        wanted = d.argmin(1)
        for centre in np.unique(wanted):
            proposers = unplaced[wanted == centre]
            keep = proposers[np.argsort(distances[proposers, centre], kind="stable")[: room[centre]]]
            labels[keep] = centre
            room[centre] -= len(keep)
    return labels
