"""The hybrid layer pipeline (stages x graph-parallel ranks) on real processes (gloo): exact
without history, its traffic equal to the analytic count, and history semantics equal to the
plain pipeline's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.workers import run_workers
from tests.runtime.gnn.test_layer_pipeline import _data, _model, _reference, _stages

NAME, LAYERS, HIDDEN, CHUNKS = "gcnii", 6, 8, 3
NUM_NODES = 60


def _cuts(parts: int) -> tuple[np.ndarray, np.ndarray]:
    """A random part per node (a large halo), and chunk ids within each part."""
    part_of = np.random.default_rng(5).integers(0, parts, NUM_NODES)
    return part_of, np.arange(NUM_NODES) % CHUNKS


def _hybrid_worker(topology, stages: int, parts: int, history: bool, epochs: int, lr: float):
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.config import PipelineConfig
    from strata.runtime.gnn.executors.base import FullGraphStep
    from strata.runtime.gnn.executors.layer_pipeline import LayerPipelineExecutor
    from strata.runtime.loop import train_step

    comm = Comm(topology.rank, topology.world_size)
    model = _model(NAME, LAYERS)
    data = _data(self_loops=model.self_loops)
    part_of, chunk_of = _cuts(parts)
    spans = _stages(len(model.layers), stages)
    executor = LayerPipelineExecutor(
        model, data, comm, stages=spans, chunk_of=chunk_of, part_of=part_of,
        cfg=PipelineConfig(stages=stages, chunks=CHUNKS, history=history, sync_every=0),
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
    )
    losses, passes, grads = [], [], {}
    for epoch in range(epochs):
        before = comm.bytes_by_op()
        step = train_step(executor, [FullGraphStep(epoch)], comm=comm)
        after = comm.bytes_by_op()
        passes.append({op: after[op] - before.get(op, 0) for op in after})
        losses.append(step.loss)
        if epoch == 0:  # SGD leaves the gradients of the first step in place
            span = spans[executor.stage]
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and int(n.split(".")[1]) in span}
    return {
        "losses": losses, "passes": passes, "grads": grads, "scores": executor.evaluate(),
        "stage": executor.stage, "part": executor.part, "stage_params": sum(p.numel() for p in executor.stage_parameters()),
        "input_params": sum(p.numel() for layer in executor.prefix_layers for p in layer.parameters()),
    }


def _halo_sizes(data, part_of: np.ndarray, parts: int) -> list[int]:
    indptr, indices, _ = data.graph.adj_tensors("csc")
    indptr, indices = indptr.numpy(), indices.numpy()
    dst = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    cut = part_of[indices] != part_of[dst]
    return [len(np.unique(indices[cut & (part_of[dst] == g)])) for g in range(parts)]


def _expected_pass(results: list[dict], data, stages: int, parts: int) -> None:
    """Every training pass of every rank sends exactly the analytic bytes (float32):
    boundaries 2 x (S-1) x N x h x 4 (every stage recomputes h0), halo 2 x L x H_G x h x 4,
    one all-reduce of the stage gradients, one of the replicated input layer's, and the 8-byte loss."""
    part_of, _ = _cuts(parts)
    halos = _halo_sizes(data, part_of, parts)
    graph_layers = {s: sum(1 for i in span if 0 < i <= LAYERS) for s, span in enumerate(_stages(LAYERS + 2, stages))}
    for r in results:
        s, g = r["stage"], r["part"]
        owned = int((part_of == g).sum())
        boundaries = (s < stages - 1) + (s > 0)
        # Forward this part sends the rows other parts hold as halo; backward, its halo's gradients.
        sends_fwd = sum(int(np.isin(np.flatnonzero(part_of == g), _halo_ids(data, part_of, h)).sum()) for h in range(parts) if h != g)
        for p in r["passes"]:
            assert p.get("send", 0) == boundaries * owned * HIDDEN * 4, (s, g)
            assert p.get("all_to_all", 0) == graph_layers[s] * (sends_fwd + halos[g]) * HIDDEN * 4, (s, g)
            assert r["input_params"] == 6 * HIDDEN + HIDDEN  # GCNII's input projection, on every rank
            assert p.get("all_reduce", 0) == (r["stage_params"] + r["input_params"]) * 4 + 8, (s, g)
    for p in range(len(results[0]["passes"])):
        assert sum(r["passes"][p].get("send", 0) for r in results) == 2 * (stages - 1) * NUM_NODES * HIDDEN * 4
        assert sum(r["passes"][p].get("all_to_all", 0) for r in results) == 2 * LAYERS * sum(halos) * HIDDEN * 4


def _halo_ids(data, part_of: np.ndarray, part: int) -> np.ndarray:
    indptr, indices, _ = data.graph.adj_tensors("csc")
    indptr, indices = indptr.numpy(), indices.numpy()
    dst = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    cut = part_of[indices] != part_of[dst]
    return np.unique(indices[cut & (part_of[dst] == part)])


def test_hybrid_2x2_without_history_is_single_process_training_and_sends_the_analytic_bytes() -> None:
    loss, grads, data = _reference(NAME, LAYERS)
    results = run_workers(_hybrid_worker, 4, 2, 2, False, 2, 0.0)
    assert [(r["stage"], r["part"]) for r in results] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    seen = {}
    for result in results:
        assert result["losses"] == pytest.approx([loss, loss], rel=1e-5)
        for key, grad in result["grads"].items():  # both parts of a stage hold the full stage gradient
            torch.testing.assert_close(grad, grads[key], rtol=1e-5, atol=1e-6)
        seen.update(result["grads"])
    assert set(seen) == set(grads)
    assert all(r["scores"] == results[0]["scores"] for r in results)
    _expected_pass(results, data, stages=2, parts=2)


def test_hybrid_history_matches_the_plain_pipeline_and_keeps_the_traffic() -> None:
    # With chunk c of every part computed at once, a hybrid chunk is the plain pipeline's
    # chunk c (its nodes in all parts): same fresh and historical rows, so the same losses
    # while parameters move between passes (SGD, history on, one sync pass then chunks).
    hybrid = run_workers(_hybrid_worker, 4, 2, 2, True, 3, 0.5)
    plain = run_workers(_hybrid_worker, 2, 2, 1, True, 3, 0.5)
    losses = hybrid[0]["losses"]
    assert losses == pytest.approx(plain[0]["losses"], rel=1e-5)
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)  # training moved
    _, _, data = _reference(NAME, LAYERS)
    _expected_pass(hybrid, data, stages=2, parts=2)


def _config_error_worker(topology) -> str:
    from strata.errors import ConfigError
    from strata.runtime.config import DataConfig
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.config import PipelineConfig, TrainConfig
    from strata.runtime.gnn.executors.base import BuildContext
    from strata.runtime.gnn.registry import build_executor

    comm = Comm(topology.rank, topology.world_size)
    model = _model(NAME, LAYERS)
    data = _data()
    ctx = BuildContext(
        train=TrainConfig(executor="layer_pipeline"), pipeline=PipelineConfig(stages=2), features=None,
        data_cfg=DataConfig(store="unused"), model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        comm=comm, device="cpu", load_data=lambda: data,
    )
    try:
        build_executor(ctx)
    except ConfigError as exc:
        return str(exc)
    return "no error"


def test_a_world_that_stages_do_not_divide_is_a_config_error_on_every_rank() -> None:
    messages = run_workers(_config_error_worker, 3)
    assert all("pipeline.stages is 2 but the job has 3 processes" in m for m in messages), messages


def _train_worker(topology, store: str, run_dir: str) -> dict:
    from strata.models.config import ModelConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn.config import PipelineConfig, TrainConfig
    from strata.runtime.gnn.trainer import train_node_classifier

    result = train_node_classifier(
        DataConfig(store=store),
        ModelConfig(name="gcnii", hidden=16, num_layers=4, dropout=0.0),
        TrainConfig(executor="layer_pipeline", epochs=12, lr=0.02, weight_decay=0.0, seed=0),
        CheckpointConfig(every_steps=5),
        MetricsConfig(),
        run_dir=run_dir, progress=False, topology=topology,
        pipeline=PipelineConfig(stages=2, chunks=2, sync_every=4),
    )
    return {"test_acc": result.test_acc, "comm_bytes": result.comm_bytes, "steps": result.steps}


def test_strata_training_loop_runs_hybrid_end_to_end(tmp_path) -> None:
    from strata.storage import checkpoint
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    store = str(tmp_path / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=600, avg_degree=6, num_classes=4, feat_dim=16, seed=2), store, progress=False)
    results = run_workers(_train_worker, 4, store, str(tmp_path / "run"))
    assert all(r["test_acc"] == results[0]["test_acc"] for r in results)  # every rank reports the same evaluation
    assert results[0]["test_acc"] > 0.6  # 4 classes: chance is 0.25
    assert results[0]["steps"] == 12 and checkpoint.latest_step(str(tmp_path / "run" / "checkpoints")) == 12
    assert results[0]["comm_bytes"]["send"] > 0 and results[0]["comm_bytes"]["all_to_all"] > 0
