"""The partition section of a job config: which partitioner, how many parts, how much halo."""

from __future__ import annotations

from dataclasses import dataclass

from strata.errors import PartitionError

METHODS = ("random", "range", "metis", "ldg", "fennel")


@dataclass
class PartitionConfig:
    """How to cut a graph into parts and what to write for each part."""

    method: str = "metis"
    """One of random, range, metis, ldg, fennel."""
    num_parts: int = 4
    """Number of parts (one per graph-parallel rank)."""
    halo_hops: int = 1
    """Hops of in-neighbours kept as halo: the number of GNN layers for full-graph training, 1 for sampling."""
    seed: int = 0
    """Seed of the random partitioner and of tie-breaking in the streaming ones (METIS is deterministic)."""
    passes: int = 0
    """Streaming passes over the edges for ldg/fennel, at most; 0 picks the method's default (ldg 1,
    fennel 10). Passes after the first restream: every node is taken out and placed again with
    all neighbours known; restreaming stops early once a pass moves fewer than ``converged``."""
    converged: float = 0.001
    """Streaming: stop restreaming early after a pass that moves fewer than this share of the nodes."""
    grow: bool = True
    """Fennel: before ``passes``, grow the parts outwards from the k highest in-degree nodes
    (a few extra passes); without it the first pass places early nodes knowing nothing."""
    balance_slack: float = 0.05
    """Streaming partitioners keep every part at most (1 + slack) * N / num_parts nodes."""
    gamma: float = 1.5
    """Fennel: exponent of the size penalty alpha * |P|^gamma (1.5 in the Fennel paper)."""
    alpha_scale: float = 1.0
    """Fennel: multiplies the paper's alpha = sqrt(k) * E / N^1.5; lower cuts fewer edges but balances more loosely."""
    chunk_edges: int = 1 << 20
    """Edges read from the store per chunk by streaming partitioners (memory O(N + chunk))."""
    memory_limit_bytes: int = 0
    """METIS: refuse up front a graph whose estimated need exceeds this many bytes; 0 = the
    memory available on this machine (MemAvailable)."""
    name: str = ""
    """Name under the store's partitions/ folder; empty means '<method>-<num_parts>'."""
    overwrite: bool = False
    """Replace an existing partition of the same name."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PartitionError(f"partition.method must be one of {', '.join(METHODS)}, got '{self.method}'")
        if int(self.num_parts) < 1:
            raise PartitionError(f"partition.num_parts must be at least 1, got {self.num_parts}")
        if int(self.halo_hops) < 1:
            raise PartitionError(
                f"partition.halo_hops must be at least 1 (owned nodes need their in-neighbours), got {self.halo_hops}"
            )
        if int(self.passes) < 0:
            raise PartitionError(f"partition.passes must be >= 0 (0 = the method's default), got {self.passes}")
        if not 0.0 <= self.converged < 1.0:
            raise PartitionError(f"partition.converged must be in [0, 1), got {self.converged}")
        if not 0.0 <= self.balance_slack <= 10.0:
            raise PartitionError(f"partition.balance_slack must be in [0, 10], got {self.balance_slack}")
        if self.gamma <= 1.0:
            raise PartitionError(f"partition.gamma must be > 1 (a convex size penalty), got {self.gamma}")
        if self.alpha_scale <= 0:
            raise PartitionError(f"partition.alpha_scale must be positive, got {self.alpha_scale}")
        if int(self.chunk_edges) < 1:
            raise PartitionError(f"partition.chunk_edges must be at least 1, got {self.chunk_edges}")
        if int(self.memory_limit_bytes) < 0:
            raise PartitionError(f"partition.memory_limit_bytes must be >= 0 (0 = what is available), got {self.memory_limit_bytes}")
        if self.name and (self.name.startswith(".") or "/" in self.name or self.name in ("..",)):
            raise PartitionError(f"partition.name must be a plain folder name (no '/' and no leading '.'), got '{self.name}'")

    @property
    def partition_name(self) -> str:
        return self.name or f"{self.method}-{self.num_parts}"
