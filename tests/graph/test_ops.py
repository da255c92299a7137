"""strata.graph.ops: torch's and DGL's kernels give the same values and gradients (rel 1e-5) as
each other and as a dense float64 reference, on full graphs, partition-shaped blocks and
DGL-sampled blocks with isolated nodes, dst nodes without in-edges, self loops and multi-edges;
the kernel choice; bf16 autocast; and the layers of today's models computed on Blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strata.errors import ConfigError
from strata.graph import kernels_torch, ops
from strata.graph.block import Block
from tests.helpers.graph_ops import CASE_IDS, CASES, OpCase, assert_rel_close, reference_case, run_case
from tests.helpers.graphs import awkward_csc

needs_dgl = pytest.mark.skipif(not ops.dgl_available(), reason="DGL does not import here: no DGL kernel to compare with")


def _sampled_blocks() -> list[Block]:
    """Two layers of DGL's neighbour sampler over an awkward 300-node graph, with global degrees."""
    from strata._dgl import dgl

    indptr, indices = awkward_csc(300, 300, 2400, seed=3)
    graph = dgl.graph(("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), torch.tensor([]))))
    torch.manual_seed(0)
    seeds = torch.tensor([0, 1, 5, 17, 40, 41, 42, 99, 150, 298])  # 0, 1 without in-edges; 298 isolated
    _, _, blocks = dgl.dataloading.NeighborSampler([4, 6]).sample_blocks(graph, seeds)
    out = []
    for block in blocks:
        block.srcdata["out_deg"] = graph.out_degrees()[block.srcdata[dgl.NID]]
        block.dstdata["in_deg"] = graph.in_degrees()[block.dstdata[dgl.NID]]
        out.append(Block.from_dgl(block))
    return out


def _blocks(kind: str) -> list[Block]:
    if kind == "full":
        return [Block.from_csc(*awkward_csc(60, 60, 400, seed=1))]
    if kind == "partition":
        # owned nodes first, then halo; the global degrees differ from the local ones
        indptr, indices = awkward_csc(70, 30, 300, seed=2)
        rng = np.random.default_rng(0)
        return [Block.from_csc(indptr, indices, num_src=70, out_deg=rng.integers(0, 9, 70), in_deg=rng.integers(0, 9, 30))]
    return _sampled_blocks()


GRAPH_KINDS = ["full", "partition", pytest.param("sampled", marks=needs_dgl)]


@pytest.mark.parametrize("kind", GRAPH_KINDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_kernels_match_the_dense_reference(case: OpCase, kind: str) -> None:
    for i, block in enumerate(_blocks(kind)):
        inputs = case.inputs(block, torch.Generator().manual_seed(i))
        got = run_case(case, block, inputs, kernels="torch", dropout=False)
        assert_rel_close(got, reference_case(case, block, inputs), what=f"{case.name} on {kind} block {i}")


@needs_dgl
@pytest.mark.parametrize("kind", ["full", "partition", "sampled"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_and_dgl_kernels_agree(case: OpCase, kind: str) -> None:
    for i, block in enumerate(_blocks(kind)):
        inputs = case.inputs(block, torch.Generator().manual_seed(i))
        theirs = run_case(case, block, inputs, kernels="dgl")
        assert_rel_close(run_case(case, block, inputs, kernels="torch"), theirs, what=f"{case.name} on {kind} block {i}")
        if not case.dropout:
            assert_rel_close(theirs, reference_case(case, block, inputs), what=f"dgl {case.name} on {kind} block {i}")


@pytest.mark.parametrize("kernels", ["torch", pytest.param("dgl", marks=needs_dgl)])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_block_without_edges_gives_zeros(case: OpCase, kernels: str) -> None:
    block = Block.from_csc(np.zeros(4, dtype=np.int64), np.zeros(0, dtype=np.int64), num_src=5)
    inputs = case.inputs(block, torch.Generator().manual_seed(0))
    out, *grads = run_case(case, block, inputs, kernels=kernels)
    assert out.abs().sum() == 0 and all(g.abs().sum() == 0 for g in grads)


@pytest.mark.parametrize("kernels", ["torch", pytest.param("dgl", marks=needs_dgl)])
def test_ops_run_under_bf16_autocast(kernels: str) -> None:
    """A model's Linear under CPU bf16 autocast hands the ops bf16 features; both kernels take them,
    forward and backward (the backward runs inside the autocast region, as in the loop)."""
    block = Block.from_csc(*awkward_csc(60, 60, 400, seed=1))
    lin = torch.nn.Linear(8, 12)
    x = torch.randn(60, 8)
    scores = torch.randn(block.num_edges, 3, 1)
    results = {}
    for dtype in (torch.bfloat16, torch.float32):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            h = lin(x)  # (60, 12) bf16 under autocast
            feat = h.reshape(60, 3, 4)
            outs = [
                ops.copy_sum(block, h, kernels=kernels), ops.mean(block, h, kernels=kernels),
                ops.normalized_sum(block, h, kernels=kernels),
                ops.gat_aggregate(block, feat, feat.sum(-1, keepdim=True), feat[:, :, :1], kernels=kernels),
                ops.weighted_sum(block, feat, ops.edge_softmax(block, scores, kernels=kernels), kernels=kernels),
            ]
            assert h.dtype == dtype and [o.dtype for o in outs[:4]] == [dtype] * 4
            assert outs[4].dtype == torch.float32  # bf16 features with float32 weights: promoted
            sum(o.float().square().sum() for o in outs).backward()
        results[dtype] = [o.detach().float() for o in outs] + [lin.weight.grad.clone()]
    assert_rel_close(results[torch.bfloat16], results[torch.float32], rel=3e-2, what=f"bf16 against float32, {kernels}")


def test_kernel_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ops.KERNELS_ENV, raising=False)
    cpu_auto = "dgl" if ops.dgl_available() else "torch"
    assert ops.choose_kernels("cpu") == cpu_auto
    assert ops.choose_kernels("cuda") == "torch" and ops.choose_kernels(torch.device("cuda:1")) == "torch"
    monkeypatch.setenv(ops.KERNELS_ENV, "torch")
    assert ops.choose_kernels("cpu") == "torch"
    assert ops.choose_kernels("cpu", "auto") == cpu_auto  # passed explicitly, the argument wins
    monkeypatch.setenv(ops.KERNELS_ENV, " Auto ")
    assert ops.choose_kernels("cpu") == cpu_auto
    monkeypatch.setenv(ops.KERNELS_ENV, "cusparse")
    with pytest.raises(ConfigError, match="STRATA_GRAPH_KERNELS=cusparse: graph kernels must be one of auto, torch, dgl"):
        ops.choose_kernels("cpu")
    with pytest.raises(ConfigError, match="kernels='dgl', but the tensors are on cuda: DGL's PyPI build runs on CPU only"):
        ops.choose_kernels("cuda", "dgl")


def test_the_environment_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    block = Block.from_csc(*awkward_csc(60, 60, 400, seed=1))
    h = torch.randn(60, 4)
    monkeypatch.setenv(ops.KERNELS_ENV, "torch")
    ops.copy_sum(block, h)
    assert "torch_sparse_plan" in block._cache and not any(key.startswith("dgl_block") for key in block._cache)
    if ops.dgl_available():
        monkeypatch.setenv(ops.KERNELS_ENV, "dgl")
        ops.copy_sum(block, h)
        assert "dgl_block_csc" in block._cache


def test_the_sparse_plan_and_transpose_are_built_once_per_block() -> None:
    block = Block.from_csc(*awkward_csc(60, 60, 400, seed=1))
    h = torch.randn(60, 4, requires_grad=True)
    w = torch.randn(block.num_edges, requires_grad=True)
    ops.weighted_sum(block, h, w, kernels="torch").sum().backward()
    plan, transposed = kernels_torch.sparse_plan(block), block.transposed()
    ops.copy_sum(block, h, kernels="torch").sum().backward()
    assert kernels_torch.sparse_plan(block) is plan and block.transposed() is transposed
    # the plan is sorted and unique per row (what MKL and cuSPARSE assume), with every edge counted once
    rows = torch.repeat_interleave(torch.arange(block.num_dst), plan.crow.diff())  # (U,)
    flat = rows * block.num_src + plan.col
    assert bool((flat[1:] > flat[:-1]).all()) and int(plan.multiplicity.sum()) == block.num_edges
    assert plan.entry_offsets is not None and plan.edge_order is not None  # the awkward graph needs both


def test_inputs_on_the_wrong_rows_or_device_are_refused() -> None:
    block = Block.from_csc(*awkward_csc(60, 25, 300, seed=1), num_src=60)
    with pytest.raises(ValueError, match=r"h must have one row per src node \(60\), got shape \(25, 4\)"):
        ops.copy_sum(block, torch.randn(25, 4))
    with pytest.raises(ValueError, match="weights must hold one value per edge and head"):
        ops.weighted_sum(block, torch.randn(60, 3, 4), torch.randn(block.num_edges, 2))
    with pytest.raises(ValueError, match="h is on meta but the Block is on cpu"):
        ops.copy_sum(block, torch.empty(60, 4, device="meta"))


# -- today's layers (strata/models/gnn.py, dgl.nn) computed on Blocks ------------------------------


@needs_dgl
@pytest.mark.parametrize("kernels", ["torch", "dgl"])
def test_normalized_sum_is_the_models_on_sampled_blocks(kernels: str) -> None:
    from strata._dgl import dgl
    from tests.models.dgl_models import normalized_sum

    indptr, indices = awkward_csc(300, 300, 2400, seed=3)
    graph = dgl.graph(("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), torch.tensor([]))))
    _, _, blocks = dgl.dataloading.NeighborSampler([4, 6]).sample_blocks(graph, torch.arange(0, 300, 7))
    for dgl_block in blocks:
        dgl_block.srcdata["out_deg"] = graph.out_degrees()[dgl_block.srcdata[dgl.NID]]
        dgl_block.dstdata["in_deg"] = graph.in_degrees()[dgl_block.dstdata[dgl.NID]]
        h = torch.randn(dgl_block.num_src_nodes(), 6)
        ours = ops.normalized_sum(Block.from_dgl(dgl_block), h, kernels=kernels)
        assert_rel_close([ours], [normalized_sum(dgl_block, h)])


@needs_dgl
@pytest.mark.parametrize("kernels", ["torch", "dgl"])
def test_gat_aggregate_is_dgl_gatconv(kernels: str) -> None:
    """GATConv (attention dropout on, feature dropout off) against its projections plus gat_aggregate."""
    from strata._dgl import dgl

    conv = dgl.nn.pytorch.GATConv(7, 5, 3, attn_drop=0.4, allow_zero_in_degree=True)
    conv.train()
    torch.nn.init.normal_(conv.bias)
    for dgl_block in _dgl_sampled_blocks():
        block = Block.from_dgl(dgl_block)
        x = torch.randn(block.num_src, 7)
        torch.manual_seed(11)
        theirs = conv(dgl_block, (x, x[: block.num_dst]))
        feat = conv.fc(x).view(-1, 3, 5)  # (num_src, heads, out)
        el = (feat * conv.attn_l).sum(-1, keepdim=True)
        er = (feat[: block.num_dst] * conv.attn_r).sum(-1, keepdim=True)
        torch.manual_seed(11)
        ours = ops.gat_aggregate(block, feat, el, er, negative_slope=0.2, attn_dropout=0.4, training=True, kernels=kernels)
        assert_rel_close([ours + conv.bias.view(3, 5)], [theirs])


def _dgl_sampled_blocks() -> list:
    from strata._dgl import dgl

    indptr, indices = awkward_csc(200, 200, 1500, seed=4)
    graph = dgl.graph(("csc", (torch.from_numpy(indptr), torch.from_numpy(indices), torch.tensor([]))))
    _, _, blocks = dgl.dataloading.NeighborSampler([5, 5]).sample_blocks(graph, torch.arange(0, 200, 9))
    return blocks


# -- CUDA -------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["full", "partition", pytest.param("sampled", marks=needs_dgl)])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_kernels_on_cuda_match_the_cpu(case: OpCase, kind: str) -> None:
    """torch's kernels on CUDA (cuSPARSE, sorted unique rows) against the CPU's (dropout draws
    differ by device, so the attention case runs without it)."""
    for i, block in enumerate(_blocks(kind)):
        inputs = case.inputs(block, torch.Generator().manual_seed(i))
        cpu = run_case(case, block, inputs, kernels="auto", dropout=False)
        gpu = run_case(case, block.to("cuda"), tuple(x.cuda() for x in inputs), kernels="auto", dropout=False)
        assert all(t.is_cuda for t in gpu)
        assert_rel_close(gpu, cpu, what=f"{case.name} on {kind} block {i}")


@pytest.mark.cuda
def test_cuda_ops_run_under_bf16_autocast() -> None:
    block = Block.from_csc(*awkward_csc(60, 60, 400, seed=1)).to("cuda")
    lin = torch.nn.Linear(8, 12).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = lin(torch.randn(60, 8, device="cuda"))
        feat = h.reshape(60, 3, 4)
        out = ops.normalized_sum(block, h).float().sum() + ops.gat_aggregate(block, feat, feat[:, :, :1], feat[:, :, 1:2]).float().sum()
        out.backward()
    assert lin.weight.grad is not None and bool(torch.isfinite(lin.weight.grad).all())
