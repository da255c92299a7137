"""The layer pipeline on real processes (gloo): exact without history, and its traffic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from strata.graph.ops import dgl_available
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.runtime.gnn.data import NodeData, to_dgl
from strata.runtime.gnn.executors.blocks import graph_block
from strata.storage.ingest.common import edges_to_csc
from tests.helpers.workers import run_workers

KERNELS = ("dgl", "torch") if dgl_available() else ("torch",)
"""Graph kernels the exactness is held on: DGL's where it imports, and torch's (CUDA's and the fallback)."""


def _data(num_nodes: int = 60, num_edges: int = 300, feat_dim: int = 6, self_loops: bool = True, seed: int = 0) -> NodeData:
    rng = np.random.default_rng(seed)
    indptr, indices = edges_to_csc(rng.integers(0, num_nodes, num_edges), rng.integers(0, num_nodes, num_edges), num_nodes, symmetrize=False, where="test")
    perm = torch.from_numpy(rng.permutation(num_nodes))
    return NodeData(
        graph=to_dgl(indptr, indices, num_nodes, self_loops=self_loops),
        feat=torch.from_numpy(rng.standard_normal((num_nodes, feat_dim)).astype(np.float32)),
        label=torch.from_numpy(rng.integers(0, 3, num_nodes)),
        splits={"train": perm[:30].sort().values, "valid": perm[30:45].sort().values, "test": perm[45:].sort().values},
        num_classes=3,
    )


def _model(name: str, layers: int):
    torch.manual_seed(0)
    return build_gnn(ModelConfig(name=name, hidden=8, num_layers=layers, dropout=0.0, attn_dropout=0.0, heads=2), 6, 3)


def _stages(num_layers: int, num_stages: int) -> list[range]:
    from strata.partitioners.stages import split_stages

    return split_stages([1.0] * num_layers, num_stages)


def _pipeline_worker(topology, name: str, layers: int, history: bool, chunks: int, schedule: str, recompute: bool = True):
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.config import PipelineConfig
    from strata.runtime.gnn.executors.layer_pipeline import LayerPipelineExecutor

    comm = Comm(topology.rank, topology.world_size)
    model = _model(name, layers)
    data = _data(self_loops=model.self_loops)
    stages = _stages(len(model.layers), topology.world_size)
    chunk_of = np.arange(data.feat.shape[0]) % chunks
    executor = LayerPipelineExecutor(
        model, data, comm, stages=stages, chunk_of=chunk_of,
        cfg=PipelineConfig(chunks=chunks, history=history, schedule=schedule, sync_every=0, recompute_residual=recompute),
    )
    losses = []
    for epoch in range(2):
        model.zero_grad()
        loss = executor.run_pass([executor.whole] if (not history or epoch == 0) else executor.chunks, step=epoch)
        executor.reduce_gradients()
        losses.append(comm.sum_floats([loss])[0])
    span = stages[topology.rank]
    grads = {
        n: p.grad.clone() for n, p in model.named_parameters()
        if p.grad is not None and int(n.split(".")[1]) in span
    }
    return {"losses": losses, "grads": grads, "sent": comm.bytes_by_op().get("send", 0), "scores": executor.evaluate()}


def _pipeline_worker_on_kernels(topology, *args):
    """``_pipeline_worker`` on each graph kernel in turn, in the same processes."""
    import os

    out = {}
    for kernels in KERNELS:
        os.environ["STRATA_GRAPH_KERNELS"] = kernels  # the forkserver's environment reached this worker, not the test's
        out[kernels] = _pipeline_worker(topology, *args)
    return out


def _reference(name: str, layers: int):
    model = _model(name, layers)
    data = _data(self_loops=model.self_loops)
    logits = model(graph_block(data.graph), data.feat)
    train = data.splits["train"]
    loss = F.cross_entropy(logits[train], data.label[train])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, data


@pytest.mark.parametrize(
    "stages, name, layers, recompute",
    [(2, "gcnii", 6, True), (4, "gcnii", 6, True), (2, "gcnii", 6, False), (2, "gcn", 3, True), (4, "sage", 4, True)],
)
def test_without_history_the_pipeline_is_single_process_training(
    stages: int, name: str, layers: int, recompute: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = run_workers(_pipeline_worker_on_kernels, stages, name, layers, False, 3, "1f1b", recompute)
    for kernels in KERNELS:
        monkeypatch.setenv("STRATA_GRAPH_KERNELS", kernels)
        _check_exact(stages, name, layers, recompute, [run[kernels] for run in runs])


def _check_exact(stages: int, name: str, layers: int, recompute: bool, results: list[dict]) -> None:
    loss, grads, data = _reference(name, layers)
    seen = {}
    for result in results:
        assert result["losses"][0] == pytest.approx(loss, rel=1e-5)
        seen.update(result["grads"])
    assert set(seen) == set(grads)
    for key, grad in grads.items():
        torch.testing.assert_close(seen[key], grad, rtol=1e-5, atol=1e-6)
    # Each pass sends every node's boundary embedding once forward and once backward across
    # each of the stages-1 boundaries; GCNII's boundary carries h0 beside h (2 x hidden)
    # unless every stage recomputes it.
    n, width, passes = data.feat.shape[0], 8 * (2 if name == "gcnii" and not recompute else 1), 2
    for rank, result in enumerate(results):
        boundaries = (rank < stages - 1) + (rank > 0)
        assert result["sent"] == passes * boundaries * n * width * 4, rank
    assert sum(r["sent"] for r in results) == passes * 2 * (stages - 1) * n * width * 4
    assert all(r["scores"] == results[0]["scores"] for r in results)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_with_history_chunks_train_and_agree_across_schedules(schedule: str) -> None:
    results = run_workers(_pipeline_worker, 2, "gcnii", 6, True, 4, schedule)
    losses = results[0]["losses"]
    assert all(np.isfinite(losses))
    reference = run_workers(_pipeline_worker, 2, "gcnii", 6, True, 4, "gpipe")[0]["losses"]
    assert losses == pytest.approx(reference, rel=1e-6)


def _input_dropout_worker(topology, stages: int, chunks: int):
    """GCNII with dropout only in its input layer (which makes h0), trained one step."""
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.config import PipelineConfig
    from strata.runtime.gnn.executors.layer_pipeline import LayerPipelineExecutor

    comm = Comm(topology.rank, topology.world_size)
    torch.manual_seed(0)
    model = build_gnn(ModelConfig(name="gcnii", hidden=8, num_layers=6, dropout=0.5), 6, 3)
    for layer in list(model.layers)[1:]:
        layer.dropout.p = 0.0
    data = _data(self_loops=True)
    torch.manual_seed(100 + topology.rank)  # ranks' own generators differ, as in a real job
    executor = LayerPipelineExecutor(
        model, data, comm, stages=_stages(len(model.layers), stages), chunk_of=np.arange(60) % chunks,
        cfg=PipelineConfig(chunks=chunks, history=True, sync_every=0), seed=7,
    )
    losses = []
    for step in range(3):
        model.zero_grad()
        loss = executor.run_pass([executor.whole] if step == 0 else executor.chunks, step=step)
        executor.reduce_gradients()
        losses.append(comm.sum_floats([loss])[0])
    return {"losses": losses, "input_grad": model.layers[0].linear.weight.grad.clone()}


def test_recomputed_h0_draws_stage_0s_dropout_mask_on_every_stage() -> None:
    # One process runs the input layer once per chunk; two stages run it on both, and must
    # draw the same mask there or the residual, the loss and the summed gradient drift apart.
    one, = run_workers(_input_dropout_worker, 1, 1, 3)
    two = run_workers(_input_dropout_worker, 2, 2, 3)
    assert len(set(one["losses"])) == 3  # the masks change from step to step
    assert two[0]["losses"] == pytest.approx(one["losses"], rel=1e-5)
    for result in two:
        torch.testing.assert_close(result["input_grad"], one["input_grad"], rtol=1e-5, atol=1e-6)


def test_the_input_layers_that_make_h0_are_found_and_graph_layers_are_never_replicated() -> None:
    from strata.models.gnn import Dense, GCNIILayer, GCNLayer
    from strata.runtime.gnn.executors.layer_pipeline import _widths, residual_prefix

    def prefix(layers) -> int:
        return residual_prefix(layers, _widths(layers, 6))

    gcnii = GCNIILayer(8, layer=1, alpha=0.1, lambda_=0.5, dropout=0.0)
    assert prefix(list(_model("gcnii", 4).layers)) == 1
    assert prefix([Dense(6, 8, activation=True), Dense(8, 8, sets_h0=True), gcnii]) == 2
    assert prefix(list(_model("gcn", 3).layers)) == 0  # no h0 at all
    # h0 made after a graph layer depends on neighbours: it must travel, not be recomputed.
    assert prefix([GCNLayer(6, 8, dropout=0.0, activation=True), Dense(8, 8, sets_h0=True), gcnii]) == 0
    # a second layer that makes h0 anew later in the model: recomputing the first is not enough.
    assert prefix([Dense(6, 8, sets_h0=True), gcnii, Dense(8, 8, sets_h0=True), gcnii]) == 0
