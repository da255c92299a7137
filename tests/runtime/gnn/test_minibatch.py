"""Mini-batch data parallelism on real processes (gloo): replicas stay identical."""

from __future__ import annotations

import pytest
import torch

from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.executors.minibatch import balanced_share
from tests.helpers.graphs import random_node_data
from tests.helpers.workers import run_workers

NUM_NODES, FEAT, CLASSES, STEPS = 200, 6, 3, 4


def _data(self_loops: bool) -> NodeData:
    return random_node_data(
        NUM_NODES, 1000, feat_dim=FEAT, num_classes=CLASSES, seed=5, symmetrize=True, self_loops=self_loops
    )


def _ddp_steps(topology, names: tuple[str, ...]) -> dict:
    return {name: _ddp_steps_of(topology, name) for name in names}


def _ddp_steps_of(topology, name: str) -> dict:
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.batches import make_batches
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.executors.minibatch import (
        DataParallelExecutor,
        evaluate_full_graph,
        rank_data,
    )
    from strata.runtime.loop import train_step

    # Each rank starts from different parameters: the executor must broadcast rank 0's.
    torch.manual_seed(topology.rank)
    model = build_gnn(ModelConfig(name=name, hidden=16, num_layers=2, dropout=0.2), FEAT, CLASSES)
    data = _data(model.self_loops)
    cfg = TrainConfig(mode="minibatch", batch_size=6, fanouts=[4, 4], seed=1)
    comm = Comm(topology.rank, topology.world_size)
    batches = make_batches(rank_data(data, topology.rank, topology.world_size, cfg.seed), cfg, model.num_graph_layers)
    executor = DataParallelExecutor("minibatch", model, data, batches, comm, torch.optim.Adam(model.parameters(), lr=0.01))
    spread, seeds, losses = [], [], []
    for _step, batch in zip(range(STEPS), executor.epoch(0, 0)):
        seeds.append(batch.graphs[-1].dst_ids.clone())
        losses.append(train_step(executor, [batch], comm=comm).loss)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        spread.append(max(float((other - flat).abs().max()) for other in comm.all_gather(flat)))
    return {
        "spread": spread,
        "seeds": seeds,
        "losses": losses,
        "steps": executor.steps_per_epoch(),
        "sharded": executor.evaluate(),
        "full": evaluate_full_graph(model, data),
    }


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_workers(_ddp_steps, 2, ("sage", "gcn"))


@pytest.mark.parametrize("world_size", [2, 4])
def test_parameters_identical_on_every_rank_after_each_step(world_size: int, two_ranks: list[dict]) -> None:
    runs = two_ranks if world_size == 2 else run_workers(_ddp_steps, world_size, ("sage",))
    results = [run["sage"] for run in runs]
    for rank, result in enumerate(results):
        assert result["spread"] == [0.0] * STEPS, rank
        assert result["losses"] == results[0]["losses"]
        assert result["steps"] == results[0]["steps"]
    # Ranks train on disjoint seed nodes.
    for step in range(STEPS):
        sets = [set(r["seeds"][step].tolist()) for r in results]
        assert sum(len(s) for s in sets) == len(set().union(*sets))


def test_sharded_evaluation_equals_full_graph_evaluation(two_ranks: list[dict]) -> None:
    # GCN reads degrees: the sampled evaluation blocks must carry the graph's.
    for result in (run[name] for run in two_ranks for name in ("gcn", "sage")):
        assert result["sharded"].keys() == result["full"].keys()
        for key, value in result["full"].items():
            assert result["sharded"][key] == pytest.approx(value, rel=1e-5), key


def test_balanced_share_covers_every_id_with_equal_sizes() -> None:
    ids = torch.arange(10, 31)
    shares = [balanced_share(ids, r, 4, seed=0) for r in range(4)]
    assert {len(s) for s in shares} == {6}
    assert set(torch.cat(shares).tolist()) == set(ids.tolist())
    assert torch.equal(balanced_share(ids, 0, 1, seed=0), ids)
