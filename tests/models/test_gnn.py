"""GNN models: every model runs on a full graph and on sampled blocks, and GCN computes the
normalised propagation of the paper."""

from __future__ import annotations

import pytest
import torch

from strata._dgl import dgl
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn, run_layers
from strata.runtime.gnn.data import to_dgl


def _graph(n: int = 30, self_loops: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    src = torch.randint(0, n, (120,))
    dst = torch.randint(0, n, (120,))
    g = dgl.to_simple(dgl.graph((torch.cat([src, dst]), torch.cat([dst, src])), num_nodes=n))
    g = dgl.remove_self_loop(g)
    return dgl.add_self_loop(g) if self_loops else g


@pytest.mark.parametrize("name", ["gcn", "sage", "gat", "gcnii"])
def test_full_graph_and_blocks_agree_without_sampling(name: str) -> None:
    cfg = ModelConfig(name=name, hidden=8, num_layers=3 if name != "gcnii" else 4, dropout=0.0, attn_dropout=0.0, heads=2)
    model = build_gnn(cfg, 5, 3).eval()
    g = _graph(self_loops=model.self_loops)
    x = torch.randn(g.num_nodes(), 5)
    full = model(g, x)
    assert full.shape == (g.num_nodes(), 3)
    seeds = torch.tensor([0, 4, 7])
    sampler = dgl.dataloading.NeighborSampler([-1] * model.num_graph_layers)  # all neighbours
    input_nodes, output_nodes, blocks = sampler.sample_blocks(g, seeds)
    # Full neighbourhoods give the full-graph result, given the global degrees for normalisation.
    for block in blocks:
        block.srcdata["out_deg"] = g.out_degrees(block.srcdata[dgl.NID])
        block.dstdata["in_deg"] = g.in_degrees(block.dstdata[dgl.NID])
    out = model(blocks, x[input_nodes])
    torch.testing.assert_close(out, full[output_nodes], rtol=1e-5, atol=1e-5)


def test_gcn_layer_is_normalised_propagation() -> None:
    model = build_gnn(ModelConfig(name="gcn", hidden=4, num_layers=1, dropout=0.0), 3, 2).eval()
    g = _graph(12)
    x = torch.randn(12, 3)
    a = torch.zeros(12, 12)
    src, dst = g.edges()
    a[dst, src] = 1.0
    d_in, d_out = a.sum(1), a.sum(0)
    a_hat = d_in.pow(-0.5)[:, None] * a * d_out.pow(-0.5)[None, :]
    layer = model.layers[0]
    expected = a_hat @ x @ layer.conv.weight + layer.bias
    torch.testing.assert_close(model(g, x), expected, rtol=1e-5, atol=1e-5)


def test_gcnii_depth_keeps_signal() -> None:
    """64 GCNII layers stay finite and input-dependent (the initial residual at work)."""
    model = build_gnn(ModelConfig(name="gcnii", hidden=16, num_layers=64, dropout=0.0), 5, 3).eval()
    g = _graph(40)
    x = torch.randn(40, 5)
    out = model(g, x)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, model(g, x + 1.0))
    assert len(model.layers) == 66 and model.num_graph_layers == 64


def test_layers_can_be_cut_into_stages() -> None:
    model = build_gnn(ModelConfig(name="gcnii", hidden=8, num_layers=6, dropout=0.0), 5, 3).eval()
    g = _graph(20)
    x = torch.randn(20, 5)
    h, h0 = run_layers(model.layers[:3], g, x, None)
    h, _ = run_layers(model.layers[3:], g, h, h0)
    torch.testing.assert_close(h, model(g, x))


def test_to_dgl_builds_csc_in_edges() -> None:
    import numpy as np

    g = to_dgl(np.array([0, 2, 2, 3]), np.array([1, 2, 0]), 3, self_loops=False)
    src, dst = g.edges()
    assert sorted(zip(src.tolist(), dst.tolist())) == [(0, 2), (1, 0), (2, 0)]
