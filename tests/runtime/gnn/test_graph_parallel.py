"""Graph-parallel training equals single-process full-graph training (real processes, gloo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from strata.graph.ops import dgl_available
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.executors.blocks import graph_block
from strata.runtime.gnn.executors.partition import local_partition
from tests.helpers.graphs import random_graph, random_node_data
from tests.helpers.workers import run_workers

MODELS = ("gcn", "sage", "gat", "gcnii")
KERNELS = ("dgl", "torch") if dgl_available() else ("torch",)
"""Graph kernels the exactness is held on: DGL's where it imports, and torch's (CUDA's and the fallback)."""
NUM_NODES, NUM_EDGES, FEAT, CLASSES = 120, 600, 6, 4


def _data(self_loops: bool) -> NodeData:
    return random_node_data(
        NUM_NODES, NUM_EDGES, feat_dim=FEAT, num_classes=CLASSES, seed=3, symmetrize=False, self_loops=self_loops
    )


def _model(name: str):
    cfg = ModelConfig(name=name, hidden=8, num_layers=2, dropout=0.0, heads=2, attn_dropout=0.0)
    torch.manual_seed(11)
    return build_gnn(cfg, FEAT, CLASSES)


def _assignment(world_size: int) -> np.ndarray:
    return np.random.default_rng(world_size).integers(0, world_size, NUM_NODES)


def _part(data: NodeData, rank: int, world_size: int):
    indptr, indices, _ = data.graph.adj_tensors("csc")
    return local_partition(indptr.numpy(), indices.numpy(), _assignment(world_size), rank, num_parts=world_size)


def _graph_parallel_step(topology, names: tuple[str, ...]) -> dict:
    """Loss, gradients and scores of one step of each model, on each graph kernel."""
    import os

    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.executors.base import FullGraphStep
    from strata.runtime.gnn.executors.graph_parallel import GraphParallelExecutor
    from strata.runtime.gnn.part_data import part_data_in_memory
    from strata.runtime.loop import train_step

    out = {}
    for kernels in KERNELS:
        os.environ["STRATA_GRAPH_KERNELS"] = kernels  # the forkserver's environment reached this worker, not the test's
        for name in names:
            model = _model(name)
            comm = Comm(topology.rank, topology.world_size)
            data = _data(model.self_loops)
            part = _part(data, topology.rank, topology.world_size)
            executor = GraphParallelExecutor(model, part_data_in_memory(data, part), part, comm, torch.optim.SGD(model.parameters(), lr=0.0))
            step = train_step(executor, [FullGraphStep(0)], comm=comm)
            out[f"{kernels}/{name}"] = {
                "loss": step.loss,
                "grads": [p.grad.clone() for p in model.parameters()],
                "scores": executor.evaluate(),
            }
    return out


def _reference(name: str) -> tuple[float, list[torch.Tensor]]:
    model = _model(name)
    data = _data(model.self_loops)
    train = data.splits["train"]
    loss = F.cross_entropy(model(graph_block(data.graph), data.feat)[train], data.label[train])
    loss.backward()
    return loss.item(), [p.grad for p in model.parameters()]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("world_size", [2, 4])
def test_loss_and_gradients_equal_single_process(world_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    results = run_workers(_graph_parallel_step, world_size, MODELS)
    for kernels in KERNELS:
        monkeypatch.setenv("STRATA_GRAPH_KERNELS", kernels)
        for name in MODELS:
            loss, grads = _reference(name)
            for rank, result in enumerate(results):
                got = result[f"{kernels}/{name}"]
                assert abs(got["loss"] - loss) <= 1e-5 * abs(loss), (kernels, name, rank)
                assert len(got["grads"]) == len(grads)
                for i, (g, ref) in enumerate(zip(got["grads"], grads)):
                    assert _relative(g, ref) < 1e-5, (kernels, name, rank, i, _relative(g, ref))
                assert got["scores"] == results[0][f"{kernels}/{name}"]["scores"]


def test_local_partitions_agree_on_who_sends_what() -> None:
    data = _data(self_loops=True)
    indptr, indices, _ = data.graph.adj_tensors("csc")
    indptr, indices = indptr.numpy(), indices.numpy()
    assignment = _assignment(3)
    parts = [local_partition(indptr, indices, assignment, r, num_parts=3) for r in range(3)]
    assert sorted(np.concatenate([p.owned for p in parts]).tolist()) == list(range(NUM_NODES))
    for r, p in enumerate(parts):
        # Every in-edge of an owned node is local, and halo nodes are owned elsewhere.
        assert len(p.indices) == sum(indptr[v + 1] - indptr[v] for v in p.owned)
        assert not np.isin(p.halo, p.owned).any()
        assert p.send_counts[r] == p.recv_counts[r] == 0
        for q, other in enumerate(parts):
            assert p.send_counts[q] == other.recv_counts[r]
            sent = p.owned[p.send_index[sum(p.send_counts[:q]) : sum(p.send_counts[: q + 1])]]
            received = other.halo[sum(other.recv_counts[:r]) : sum(other.recv_counts[: r + 1])]
            assert (sent == received).all()


def _stored_and_in_memory(topology, store: str, name: str) -> dict:
    from strata.graph.csc import graph_csc
    from strata.partitioners.format import open_partition
    from strata.runtime.config import DataConfig
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.executors.partition import from_stored_part

    comm = Comm(topology.rank, topology.world_size)
    out = {}
    for self_loops in (True, False):
        parts = open_partition(store, name)
        stored = from_stored_part(parts.part(topology.rank), parts.assignment(), comm, self_loops=self_loops)
        indptr, indices = graph_csc(load_node_data(DataConfig(store=store), self_loops=self_loops).graph)
        memory = local_partition(indptr, indices, parts.assignment(), topology.rank, num_parts=topology.world_size)
        out[self_loops] = [
            (a == b) if isinstance(a, (int, tuple)) else bool(np.array_equal(a, b))
            for a, b in zip(vars(stored).values(), vars(memory).values())
        ]
    return out


def test_stored_partition_gives_the_in_memory_local_partition(tmp_path) -> None:
    from strata.partitioners.build import build
    from strata.storage.ingest.common import write_graph_data

    store = str(tmp_path / "store")
    write_graph_data(random_graph(NUM_NODES, NUM_EDGES, feat_dim=FEAT, seed=3), store, "gp", symmetrize=False)
    build(store, _assignment(3) % 3, "rand-3", halo_hops=2, num_parts=3)
    for result in run_workers(_stored_and_in_memory, 3, store, "rand-3"):
        assert all(result[True]) and all(result[False]), result
