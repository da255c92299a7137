"""Every GNN model computes the same loss and gradients on DGL's kernels as on torch's
(STRATA_GRAPH_KERNELS=dgl and =torch, rel 1e-5), in training mode with dropout on (the same
draws either way), on a full graph, on partition-shaped Blocks (halo src nodes, global degrees)
and on DGL-sampled blocks; awkward graphs throughout (isolated nodes, dst nodes without
in-edges, self loops, multi-edges)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from strata.graph import ops
from strata.graph.block import Block
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from tests.helpers.graph_ops import assert_rel_close
from tests.helpers.graphs import awkward_csc

pytestmark = pytest.mark.skipif(not ops.dgl_available(), reason="DGL does not import here: no DGL kernel to compare with")

FEAT, CLASSES = 7, 4


def _partition_blocks() -> list[Block]:
    """Two layers as a partition sees them: src nodes beyond the dst nodes (the halo), and
    degrees of the whole graph, which differ from the Block's own."""
    rng = np.random.default_rng(0)
    blocks = []
    for num_src, num_dst, seed in ((70, 50, 2), (50, 30, 5)):
        indptr, indices = awkward_csc(num_src, num_dst, 300, seed=seed)
        blocks.append(Block.from_csc(indptr, indices, num_src=num_src, out_deg=rng.integers(1, 9, num_src),
                                     in_deg=rng.integers(1, 9, num_dst)))
    return blocks


def _sampled_blocks() -> list[Block]:
    from strata._dgl import dgl

    indptr, indices = awkward_csc(300, 300, 2400, seed=3)
    graph = dgl.graph(("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), torch.tensor([]))))
    torch.manual_seed(0)
    seeds = torch.tensor([0, 1, 5, 17, 40, 41, 42, 99, 150, 298])  # 0, 1 without in-edges; 298 isolated
    _, _, blocks = dgl.dataloading.NeighborSampler([4, 6]).sample_blocks(graph, seeds)
    return [Block.from_dgl(block) for block in blocks]  # degrees local to the sample, as in training


GRAPHS = {
    "full": lambda: Block.from_csc(*awkward_csc(60, 60, 400, seed=1)),
    "partition": _partition_blocks,
    "sampled": _sampled_blocks,
}


def _loss_and_grads(name: str, graphs: Block | list[Block], kernels: str, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    monkeypatch.setenv(ops.KERNELS_ENV, kernels)
    cfg = ModelConfig(name=name, hidden=6, num_layers=2, dropout=0.3, attn_dropout=0.3, heads=3, out_heads=2)
    torch.manual_seed(0)
    model = build_gnn(cfg, FEAT, CLASSES).train()
    first = graphs[0] if isinstance(graphs, list) else graphs
    last = graphs[-1] if isinstance(graphs, list) else graphs
    x = torch.randn(first.num_src, FEAT, generator=torch.Generator().manual_seed(1), requires_grad=True)
    label = torch.randint(0, CLASSES, (last.num_dst,), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)  # the dropout draws
    loss = F.cross_entropy(model(graphs, x), label)
    loss.backward()
    return [loss.detach(), x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("kind", list(GRAPHS))
@pytest.mark.parametrize("name", ["gcn", "sage", "gat", "gcnii"])
def test_loss_and_gradients_equal_on_torch_and_dgl_kernels(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    graphs = GRAPHS[kind]()
    theirs = _loss_and_grads(name, graphs, "dgl", monkeypatch)
    ours = _loss_and_grads(name, graphs, "torch", monkeypatch)
    assert all(bool(g.abs().sum() > 0) for g in ours[1:3]), "a gradient vanished: the case tests nothing"
    assert_rel_close(ours, theirs, what=f"{name} on {kind} graph (0 = loss, 1 = input gradient, then parameters)")
