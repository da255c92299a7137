"""Layer-to-stage assignment for layer pipelines: cost each layer, then split them exactly.

A stage is a run of consecutive layers. The slowest stage sets the pipeline's pace, so the
split minimises the largest stage cost, by dynamic programme over prefix sums:

    best[s][i] = min over j < i of max(best[s-1][j], cost(j..i-1))

for the first i layers in s stages; O(S * L^2), which is nothing for L in the hundreds.

Per-layer cost is a roofline-style estimate from the layer's shapes and the graph's size:
dense FLOPs ``2 * N * (weights of rank >= 2)``, aggregation FLOPs ``2 * E * min(d_in, d_out)``
for layers that use the graph (DGL aggregates on the narrower side), and activation bytes
``N * d_out * bytes`` (what the layer keeps for backward and what a stage boundary sends).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from strata.errors import PartitionError


@dataclass(frozen=True)
class LayerCost:
    """Estimated work of one layer over a graph of N nodes and E edges."""

    flops: float
    activation_bytes: float
    out_width: int

    def seconds(self, flops_per_second: float, bytes_per_second: float) -> float:
        """Time on a device that does ``flops_per_second`` and moves ``bytes_per_second``."""
        return self.flops / flops_per_second + self.activation_bytes / bytes_per_second


@dataclass
class StageCostModel:
    """Device speeds that weigh FLOPs against activation bytes into one per-layer time."""

    flops_per_second: float = 1e12
    """Sustained FLOP/s of one device on these layers."""
    bytes_per_second: float = 1e11
    """Sustained bytes/s for writing and reading activations."""
    dtype_bytes: int = 4
    """Bytes per activation element (4 for float32, 2 for bf16)."""

    def __post_init__(self) -> None:
        if self.flops_per_second <= 0 or self.bytes_per_second <= 0:
            raise PartitionError("stage cost model: flops_per_second and bytes_per_second must be positive")
        if self.dtype_bytes < 1:
            raise PartitionError(f"stage cost model: dtype_bytes must be at least 1, got {self.dtype_bytes}")


def layer_costs(model: object, in_dim: int, num_nodes: int, num_edges: int, dtype_bytes: int = 4) -> list[LayerCost]:
    """Cost of each layer of a :class:`strata.models.LayeredModel` on a graph of the given size.

    Widths come from running the layers once on a two-node graph (no gradients), so any
    layer with the model's ``(graph, h, h0)`` signature is costed without knowing its type.
    """
    import torch

    from strata.models.gnn import probe_block

    layers = list(model.layers)
    probe = probe_block()
    h, h0 = torch.zeros(2, int(in_dim)), None
    costs = []
    was_training = [layer.training for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.eval()
                width_in = int(h[0].numel())
                h, h0 = layer(probe, h, h0)
                width_out = int(h[0].numel())
                dense = sum(p.numel() for p in layer.parameters() if p.dim() >= 2)
                flops = 2.0 * num_nodes * dense
                if getattr(layer, "uses_graph", True):
                    flops += 2.0 * num_edges * min(width_in, width_out)
                costs.append(LayerCost(flops, float(num_nodes) * width_out * dtype_bytes, width_out))
    finally:
        for layer, mode in zip(layers, was_training):
            layer.train(mode)
    return costs


def split_stages(costs: Sequence[float], num_stages: int) -> list[range]:
    """Split layers 0..L-1 into ``num_stages`` non-empty runs minimising the largest run's total cost."""
    L, S = len(costs), int(num_stages)
    if S < 1:
        raise PartitionError(f"num_stages must be at least 1, got {num_stages}")
    if S > L:
        raise PartitionError(f"cannot split {L} layers into {S} stages: every stage needs at least one layer")
    if any(c < 0 for c in costs):
        raise PartitionError("layer costs must be >= 0")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    best = [[inf] * (L + 1) for _ in range(S + 1)]
    cut = [[0] * (L + 1) for _ in range(S + 1)]
    best[0][0] = 0.0
    for s in range(1, S + 1):
        for i in range(s, L - (S - s) + 1):
            for j in range(s - 1, i):
                value = max(best[s - 1][j], prefix[i] - prefix[j])
                if value < best[s][i]:
                    best[s][i], cut[s][i] = value, j
    stages, i = [], L
    for s in range(S, 0, -1):
        j = cut[s][i]
        stages.append(range(j, i))
        i = j
    return stages[::-1]


def stage_cost(costs: Sequence[float], stages: Sequence[range]) -> float:
    """The largest stage total: what :func:`split_stages` minimises."""
    return max(sum(float(costs[i]) for i in stage) for stage in stages)


def assign_stages(
    model: object, num_stages: int, in_dim: int, num_nodes: int, num_edges: int, cost_model: StageCostModel | None = None
) -> list[range]:
    """Contiguous layer ranges, one per pipeline stage, balancing the estimated layer times."""
    cm = cost_model or StageCostModel()
    costs = layer_costs(model, in_dim, num_nodes, num_edges, cm.dtype_bytes)
    return split_stages([c.seconds(cm.flops_per_second, cm.bytes_per_second) for c in costs], num_stages)
