"""GNN models on strata Blocks: every model runs on a full graph and on sampled blocks, GCN
computes the normalised propagation of the paper, and every model equals the dgl.nn model
strata had before (same parameters from the same seed, same outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strata._dgl import dgl
from strata.graph.block import Block
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn, run_layers
from strata.runtime.gnn.data import to_dgl
from tests.helpers.graph_ops import assert_rel_close
from tests.models.dgl_models import build_dgl_gnn, run_dgl_layers

NAMES = ["gcn", "sage", "gat", "gcnii"]


def _graph(n: int = 30, self_loops: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    src = torch.randint(0, n, (120,))
    dst = torch.randint(0, n, (120,))
    g = dgl.to_simple(dgl.graph((torch.cat([src, dst]), torch.cat([dst, src])), num_nodes=n))
    g = dgl.remove_self_loop(g)
    return dgl.add_self_loop(g) if self_loops else g


def _cfg(name: str, dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(name=name, hidden=8, num_layers=3 if name != "gcnii" else 4, dropout=dropout,
                       attn_dropout=dropout, heads=2)


@pytest.mark.parametrize("name", NAMES)
def test_full_graph_and_blocks_agree_without_sampling(name: str) -> None:
    model = build_gnn(_cfg(name), 5, 3).eval()
    g = _graph(self_loops=model.self_loops)
    x = torch.randn(g.num_nodes(), 5)
    full = model(Block.from_dgl(g), x)
    assert full.shape == (g.num_nodes(), 3)
    seeds = torch.tensor([0, 4, 7])
    sampler = dgl.dataloading.NeighborSampler([-1] * model.num_graph_layers)  # all neighbours
    input_nodes, output_nodes, blocks = sampler.sample_blocks(g, seeds)
    # Full neighbourhoods give the full-graph result, given the global degrees for normalisation.
    for block in blocks:
        block.srcdata["out_deg"] = g.out_degrees(block.srcdata[dgl.NID])
        block.dstdata["in_deg"] = g.in_degrees(block.dstdata[dgl.NID])
    out = model([Block.from_dgl(b) for b in blocks], x[input_nodes])
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
    torch.testing.assert_close(model(Block.from_dgl(g), x), expected, rtol=1e-5, atol=1e-5)


def test_gcnii_depth_keeps_signal() -> None:
    """64 GCNII layers stay finite and input-dependent (the initial residual at work)."""
    model = build_gnn(ModelConfig(name="gcnii", hidden=16, num_layers=64, dropout=0.0), 5, 3).eval()
    block = Block.from_dgl(_graph(40))
    x = torch.randn(40, 5)
    out = model(block, x)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, model(block, x + 1.0))
    assert len(model.layers) == 66 and model.num_graph_layers == 64


def test_layers_can_be_cut_into_stages() -> None:
    model = build_gnn(ModelConfig(name="gcnii", hidden=8, num_layers=6, dropout=0.0), 5, 3).eval()
    block = Block.from_dgl(_graph(20))
    x = torch.randn(20, 5)
    h, h0 = run_layers(model.layers[:3], block, x, None)
    h, _ = run_layers(model.layers[3:], block, h, h0)
    torch.testing.assert_close(h, model(block, x))


def test_a_dgl_graph_is_refused_with_the_conversion_named() -> None:
    model = build_gnn(ModelConfig(name="gcn", hidden=4, num_layers=2, dropout=0.0), 3, 2)
    with pytest.raises(TypeError, match=r"strata.graph.Block, got DGLGraph; convert .* Block.from_dgl"):
        model(_graph(12), torch.randn(12, 3))
    with pytest.raises(ValueError, match="got 1 blocks for 2 graph layers"):
        model([Block.from_dgl(_graph(12))], torch.randn(12, 3))


def test_to_dgl_builds_csc_in_edges() -> None:
    g = to_dgl(np.array([0, 2, 2, 3]), np.array([1, 2, 0]), 3, self_loops=False)
    src, dst = g.edges()
    assert sorted(zip(src.tolist(), dst.tolist())) == [(0, 2), (1, 0), (2, 0)]


# -- today's models against yesterday's dgl.nn models ------------------------------------------------


def _dgl_twin(block: Block):
    """A DGL block over ``block``'s CSC whose edge ids are CSC positions (so per-edge dropout
    draws fall on the same edges), carrying the Block's degrees."""
    twin = dgl.create_block(("csc", (block.indptr, block.indices, torch.arange(block.num_edges))),
                            num_src_nodes=block.num_src, num_dst_nodes=block.num_dst)
    twin.srcdata["out_deg"] = block.src_degrees()
    twin.dstdata["in_deg"] = block.dst_degrees()
    return twin


def _sampled_blocks(g, layers: int) -> tuple[list[Block], Tensor]:  # noqa: F821
    torch.manual_seed(5)
    input_nodes, _, blocks = dgl.dataloading.NeighborSampler([3] * layers).sample_blocks(g, torch.arange(0, 30, 4))
    out = []
    for b in blocks:
        b.srcdata["out_deg"] = g.out_degrees(b.srcdata[dgl.NID])
        b.dstdata["in_deg"] = g.in_degrees(b.dstdata[dgl.NID])
        out.append(Block.from_dgl(b))
    return out, input_nodes


def _loss_and_grads(model, forward, graphs, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout draws for both models
    out = forward(model, graphs, x)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * probe).sum().backward()
    return [out.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_models_equal_yesterdays_dgl_models(name: str) -> None:
    """Same seed, same parameters (names, shapes, values); same outputs and parameter gradients
    (rel 1e-5), in eval mode and in training mode with dropout on, on the full graph and on
    sampled blocks; on the default kernels (tests/graph/test_models_on_kernels.py holds the
    two kernels equal)."""
    cfg = _cfg(name, dropout=0.3)
    torch.manual_seed(0)
    model = build_gnn(cfg, 5, 3)
    torch.manual_seed(0)
    reference = build_dgl_gnn(cfg, 5, 3)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)

    g = _graph(self_loops=model.self_loops)
    full = Block.from_dgl(g)
    sampled, input_nodes = _sampled_blocks(g, model.num_graph_layers)
    x = torch.randn(g.num_nodes(), 5)
    cases = [("full", full, _dgl_twin(full), x), ("sampled", sampled, [_dgl_twin(b) for b in sampled], x[input_nodes])]
    for where, blocks, twins, features in cases:
        for training in (False, True):
            model.train(training)
            reference.train(training)
            got = _loss_and_grads(model, lambda m, b, h: m(b, h), blocks, features, seed=3)
            expected = _loss_and_grads(reference, run_dgl_layers, twins, features, seed=3)
            assert_rel_close(got, expected, what=f"{name} on {where} graph, training={training}")
