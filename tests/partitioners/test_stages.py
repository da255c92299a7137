"""Layer-to-stage assignment: the DP against brute force, and the per-layer cost model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import PartitionError
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.partitioners.stages import (
    assign_stages,
    layer_costs,
    split_stages,
    stage_cost,
)


def _brute_force(costs: list[float], stages: int) -> float:
    L = len(costs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, L), stages - 1):
        bounds = (0, *cuts, L)
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


@settings(max_examples=50, deadline=None)
@given(data=st.data(), costs=st.lists(st.integers(0, 50), min_size=1, max_size=9))
def test_split_equals_brute_force_on_integer_costs(data, costs) -> None:
    stages = data.draw(st.integers(1, len(costs)))
    plan = split_stages(costs, stages)
    assert len(plan) == stages and all(len(r) > 0 for r in plan)
    assert [i for r in plan for i in r] == list(range(len(costs)))  # contiguous, in order, complete
    assert stage_cost(costs, plan) == _brute_force(costs, stages)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), costs=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=8))
def test_split_equals_brute_force_on_float_costs(data, costs) -> None:
    stages = data.draw(st.integers(1, len(costs)))
    assert stage_cost(costs, split_stages(costs, stages)) == pytest.approx(_brute_force(costs, stages), rel=1e-9, abs=1e-6)


def test_split_refuses_impossible_requests() -> None:
    with pytest.raises(PartitionError, match="cannot split 2 layers into 3 stages"):
        split_stages([1.0, 2.0], 3)
    with pytest.raises(PartitionError, match="at least 1"):
        split_stages([1.0], 0)
    with pytest.raises(PartitionError, match=">= 0"):
        split_stages([1.0, -1.0], 1)


@pytest.mark.parametrize("name", ["gcn", "sage", "gat", "gcnii"])
def test_layer_costs_follow_shapes_and_graph_size(name: str) -> None:
    model = build_gnn(ModelConfig(name=name, hidden=16, num_layers=3, heads=2), in_dim=32, num_classes=5)
    small = layer_costs(model, 32, num_nodes=1_000, num_edges=10_000)
    dense = layer_costs(model, 32, num_nodes=1_000, num_edges=100_000)
    assert len(small) == len(model.layers)
    assert small[-1].out_width == 5
    assert all(c.flops > 0 and c.activation_bytes > 0 for c in small)
    for layer, a, b in zip(model.layers, small, dense):
        # Ten times the edges costs more exactly for layers that pass messages.
        assert (b.flops > a.flops) == bool(layer.uses_graph)
        assert a.activation_bytes == 1_000 * a.out_width * 4
    assert model.training  # costing leaves the model's mode alone


def test_assign_stages_puts_the_wide_first_layer_alone() -> None:
    # A 1433-wide input layer dominates a GCN on Cora-sized graphs: it gets a stage to itself.
    model = build_gnn(ModelConfig(name="gcn", hidden=64, num_layers=4), in_dim=1433, num_classes=7)
    plan = assign_stages(model, 2, in_dim=1433, num_nodes=2708, num_edges=10556)
    assert plan == [range(0, 1), range(1, 4)]
