"""Baselines that ignore the edges: a balanced random assignment and contiguous id ranges."""

from __future__ import annotations

import numpy as np

from strata.partitioners.config import PartitionConfig
from strata.partitioners.graph import GraphSource


def random_assign(graph: GraphSource, cfg: PartitionConfig, progress: bool = False) -> np.ndarray:
    """Each part gets floor or ceil of N/k nodes, chosen uniformly at random (seeded)."""
    n, k = graph.num_nodes, int(cfg.num_parts)
    perm = np.random.default_rng([cfg.seed, 7]).permutation(n)
    parts = np.empty(n, dtype=np.int32)
    parts[perm] = (np.arange(n) % k).astype(np.int32)
    return parts


def range_assign(graph: GraphSource, cfg: PartitionConfig, progress: bool = False) -> np.ndarray:
    """Node v goes to part floor(v * k / N): k contiguous id ranges of near-equal size.

    Good when ids already follow locality (a graph stored in BFS or clustered order), and the
    cheapest to look up: the owner of v is arithmetic.
    """
    n, k = graph.num_nodes, int(cfg.num_parts)
    return (np.arange(n, dtype=np.int64) * k // n).astype(np.int32)
