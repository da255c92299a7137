"""How good a partition is: edge cut, communication volume, replication and balance."""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strata.partitioners.graph import DEFAULT_CHUNK_EDGES, GraphSource


def edge_cut(graph: GraphSource, assignment: np.ndarray, chunk_edges: int = DEFAULT_CHUNK_EDGES) -> int:
    """Number of stored edges whose source and destination are in different parts (streamed)."""
    cut = 0
    for chunk in graph.iter_chunks(chunk_edges):
        dst_part = np.repeat(assignment[chunk.start : chunk.stop], np.diff(chunk.indptr))
        cut += int(np.count_nonzero(assignment[chunk.indices] != dst_part))
    return cut


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class Balance:
    """Per-part counts of one quantity, and max/mean of them (1.0 is perfect balance)."""

    per_part: list[int]
    max_over_mean: float

    @classmethod
    def of(cls, counts: Sequence[int]) -> Balance:
        counts = [int(c) for c in counts]
        mean = sum(counts) / max(len(counts), 1)
        return cls(counts, (max(counts) / mean) if mean > 0 else 1.0)


@dataclass
class PartitionReport:
    """What ``strata partition`` prints and stores as ``report.json`` beside the parts."""

    name: str
    method: str
    num_parts: int
    halo_hops: int
    num_nodes: int
    num_edges: int
    edge_cut: int
    """Edges whose endpoints are owned by different parts."""
    edge_cut_fraction: float
    communication_volume: int
    """Sum of halo sizes: node states a part receives per exchange of all h hops."""
    replication_factor: float
    """(owned + halo nodes over all parts) / N; 1.0 means no node is copied."""
    nodes: Balance
    edges: Balance
    """In-edges of owned nodes per part (the message-passing work)."""
    train_nodes: Balance
    halo: list[int]
    """Halo size per part."""
    assign_seconds: float = 0.0
    build_seconds: float = 0.0
    peak_rss_bytes: int = 0
    """Peak resident memory of the partitioning process (assignment and build)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PartitionReport:
        raw = json.loads(text)
        for key in ("nodes", "edges", "train_nodes"):
            raw[key] = Balance(**raw[key])
        return cls(**raw)

    def format(self) -> str:
        """A short human-readable table."""
        lines = [
            f"partition   {self.name}: {self.method}, {self.num_parts} parts, halo {self.halo_hops} hop(s)",
            f"graph       {self.num_nodes:,} nodes, {self.num_edges:,} edges",
            f"edge cut    {self.edge_cut:,} ({100 * self.edge_cut_fraction:.2f}% of edges)",
            f"comm volume {self.communication_volume:,} halo nodes in all; replication factor {self.replication_factor:.3f}",
            f"balance     nodes {self.nodes.max_over_mean:.3f}, edges {self.edges.max_over_mean:.3f}, "
            f"train nodes {self.train_nodes.max_over_mean:.3f}   (max/mean)",
            f"time        assign {self.assign_seconds:.2f} s, build {self.build_seconds:.2f} s; "
            f"peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB",
            f"{'part':>6} {'owned':>12} {'halo':>12} {'edges':>14} {'train':>10}",
        ]
        for k in range(self.num_parts):
            lines.append(
                f"{k:>6} {self.nodes.per_part[k]:>12,} {self.halo[k]:>12,} "
                f"{self.edges.per_part[k]:>14,} {self.train_nodes.per_part[k]:>10,}"
            )
        return "\n".join(lines)
