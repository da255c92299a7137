"""Elastic resume with real processes on gloo: a run checkpointed at N processes goes on at M.

minibatch (``strata train --nproc-per-node``): the recorded sample stream (seed nodes and
sampled input nodes of every trained micro-batch, STRATA_RECORD_BATCHES) of a 4 -> 2 -> 4 chain
is the one the uninterrupted runs would have trained: the remainder of the interrupted epoch is
the N-process run's batches, later epochs are an M-process run's; with packed batches, the
very batches of the N shares' packs. graph_parallel (4 -> 2 -> 4 on preloaded gloo workers;
Cora through the command line behind STRATA_SLOW_TESTS=1): the chain ends where the
uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from pathlib import Path

import pytest

from strata.runtime.gnn.elastic import RECORD_ENV
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from tests.helpers.cli import run_strata

MINIBATCH = """
name: run
data: {{store: {store}}}
model: {{name: sage, hidden: 8, num_layers: 2, dropout: 0.2}}
train: {{executor: minibatch, epochs: 3, lr: 0.01, weight_decay: 0.0, batch_size: 16, fanouts: [3, 3], seed: 5}}
checkpoint: {{every_steps: 0, keep: 2}}
"""
BATCH, SEED = 16, 5


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=160, avg_degree=4, num_classes=3, feat_dim=8, seed=3), url, progress=False)
    return url


def _train(workdir: Path, nproc: int, *extra: str) -> dict:
    env = {RECORD_ENV: str(workdir / f"batches-{nproc}-{len(list(workdir.glob('batches-*')))}"), "OMP_NUM_THREADS": "1"}
    out = run_strata("train", "job.yaml", "--nproc-per-node", str(nproc), "--json", "-q", *extra, cwd=workdir, env=env)
    return {"result": json.loads(out.stdout.strip().splitlines()[-1]), "records": _records(Path(env[RECORD_ENV]))}


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("rank-*.jsonl")) for line in path.read_text().splitlines()]


def _expected(store: str, world_size: int, epoch: int, first_step: int = 0) -> Counter:
    """(seeds, input hash) of every micro-batch an uninterrupted ``world_size``-process run trains
    in ``epoch`` from ``first_step`` on: each rank's balanced share, at its per-rank batch size."""
    from strata.runtime.config import DataConfig
    from strata.runtime.gnn.batches import make_batches
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.elastic import _ids
    from strata.runtime.gnn.executors.minibatch import rank_data

    data = load_node_data(DataConfig(store=store), self_loops=False)
    cfg = TrainConfig(executor="minibatch", batch_size=math.ceil(BATCH / world_size), fanouts=[3, 3], seed=SEED)
    batches = Counter()
    for rank in range(world_size):
        source = make_batches(rank_data(data, rank, world_size, SEED), cfg, 2)
        for batch in source.epoch(epoch, first_step):
            seeds, inputs = _ids(batch)
            batches[(tuple(seeds), inputs)] += 1
    return batches


def _trained(records: list[dict], epoch: int) -> Counter:
    return Counter((tuple(r["seeds"]), r["inputs"]) for r in records if r["epoch"] == epoch and r["seeds"] is not None)


def test_minibatch_resumes_4_to_2_to_4_on_the_uninterrupted_sample_stream(tmp_path: Path, store: str) -> None:
    (tmp_path / "job.yaml").write_text(MINIBATCH.format(store=store))
    # 96 training nodes: 4 ranks x 24 seeds (4 a step), 2 ranks x 48 (8 a step): 6 steps an epoch either way.
    first = _train(tmp_path, 4, "--set", "train.max_steps=2")
    assert first["result"]["steps"] == 2 and _trained(first["records"], 0) == _expected(store, 4, 0) - _expected(store, 4, 0, 2)
    # 4 -> 2: the 16 micro-batches left of epoch 0 take 8 steps at 2 ranks; then 3 steps of epoch 1.
    second = _train(tmp_path, 2, "--resume", "--set", "train.max_steps=13")
    assert second["result"]["steps"] == 13
    assert _trained(second["records"], 0) == _expected(store, 4, 0, 2), "not the remainder the 4 ranks left"
    per_step = Counter((r["epoch"], r["step"], r["rank"]) for r in second["records"] if r["epoch"] == 0)
    assert sorted(per_step) == [(0, step, rank) for step in range(2, 10) for rank in range(2)]
    assert set(per_step.values()) == {1}
    # 2 -> 4: the 6 micro-batches left of epoch 1 take 2 steps at 4 ranks, ranks 2 and 3 idle in
    # the second; epoch 2 is a 4-rank epoch.
    third = _train(tmp_path, 4, "--resume")
    assert third["result"]["steps"] == 13 + 2 + 6 and third["result"]["world_size"] == 4
    assert _trained(second["records"], 1) + _trained(third["records"], 1) == _expected(store, 2, 1)
    idle = sorted((r["step"], r["rank"]) for r in third["records"] if r["epoch"] == 1 and r["seeds"] is None)
    assert idle == [(4, 2), (4, 3)]
    assert _trained(third["records"], 2) == _expected(store, 4, 2)
    starts = [json.loads(line) for line in (tmp_path / "runs/run/metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert [(s.get("resumed_from_world_size"), s.get("resumed_to_world_size")) for s in starts] == [(None, None), (4, 2), (2, 4)]
    assert [s["resumed_at"] for s in starts] == [0, 2, 13]


GRAPH_PARALLEL = """
name: run
data: {{store: {store}, normalize_features: true}}
model: {{name: gcn, hidden: 16, num_layers: 2, dropout: {dropout}}}
train: {{executor: graph_parallel, partitioner: random, epochs: {epochs}, lr: 0.01, weight_decay: 5.0e-4, seed: 2}}
checkpoint: {{every_steps: 0, keep: 2}}
"""


def _graph_parallel_configs(store: str, epochs: int, dropout: float = 0.0) -> tuple:
    from strata.models.config import ModelConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn.config import TrainConfig

    return (
        DataConfig(store=store, normalize_features=True), ModelConfig(name="gcn", hidden=16, num_layers=2, dropout=dropout),
        TrainConfig(executor="graph_parallel", partitioner="random", epochs=epochs, lr=0.01, weight_decay=5e-4, seed=2),
        CheckpointConfig(), MetricsConfig(),
    )


def _graph_parallel_reference(tmp_path: Path, store: str, epochs: int, dropout: float = 0.0) -> dict:
    """The uninterrupted run, in this process (with dropout off, full-graph training is the same
    at any number of processes up to float rounding)."""
    from strata.runtime.gnn.trainer import train_node_classifier

    configs = _graph_parallel_configs(store, epochs, dropout)
    result = train_node_classifier(*configs, run_dir=str(tmp_path / "reference"), progress=False)
    return dataclasses.asdict(result)


def _graph_parallel_worker(topology, store: str, epochs: int, max_steps: int, run_dir: str) -> dict:
    from strata.runtime.gnn.trainer import train_node_classifier

    data, model, train, ckpt, metrics = _graph_parallel_configs(store, epochs)
    train = dataclasses.replace(train, max_steps=max_steps)
    result = train_node_classifier(data, model, train, ckpt, metrics, run_dir=run_dir, resume=True, progress=False, topology=topology)
    return dataclasses.asdict(result)


def _graph_parallel_chain(tmp_path: Path, store: str, epochs: int, stops: tuple[int, int] | tuple[()], *, cli: bool,
                          dropout: float = 0.0) -> list[dict]:
    """The results (rank 0's) of a 4 -> 2 -> 4 chain stopped after ``stops`` steps, then trained
    to the end (no ``stops``: one uninterrupted 4-process run), through ``strata train
    --nproc-per-node`` (``cli``) or on preloaded workers."""
    from tests.helpers.workers import run_workers

    workdir = tmp_path / ("chain" if stops else "uninterrupted")
    workdir.mkdir()
    (workdir / "job.yaml").write_text(GRAPH_PARALLEL.format(store=store, epochs=epochs, dropout=dropout))
    results = []
    for nproc, max_steps in ((4, stops[0]), (2, stops[1]), (4, 0)) if stops else ((4, 0),):
        if cli:
            extra = ("--resume",) if results else ()
            out = run_strata("train", "job.yaml", "--nproc-per-node", str(nproc), "--json", "-q", *extra,
                             "--set", f"train.max_steps={max_steps}", cwd=workdir, env={"OMP_NUM_THREADS": "1"})
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        else:
            results.append(run_workers(_graph_parallel_worker, nproc, store, epochs, max_steps, str(workdir / "run"))[0])
    return results


def test_graph_parallel_resumes_4_to_2_to_4_and_ends_like_the_uninterrupted_run(tmp_path: Path, store: str) -> None:
    chain = _graph_parallel_chain(tmp_path, store, 30, (10, 20), cli=False)
    reference = _graph_parallel_reference(tmp_path, store, 30)
    assert [r["steps"] for r in chain] == [10, 20, 30] and [r["world_size"] for r in chain] == [4, 2, 4]
    assert chain[-1]["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-4)
    assert abs(chain[-1]["test_acc"] - reference["test_acc"]) <= 0.01
    # Not a run started afresh at step 20 either: that ends elsewhere.
    assert chain[-1]["final_loss"] < chain[1]["final_loss"]


@pytest.mark.skipif(os.environ.get("STRATA_SLOW_TESTS") != "1", reason="Cora 4 -> 2 -> 4 takes minutes: set STRATA_SLOW_TESTS=1")
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_graph_parallel_on_cora_ends_within_a_point_of_the_uninterrupted_run(tmp_path: Path, dropout: float) -> None:
    """Against the uninterrupted 4-process run. Dropout off: the same run up to float rounding.
    Dropout 0.5 (Kipf & Welling's): each new rank draws its own masks after a resume, so the
    chain ends within noise of it (seen: test accuracy 82.1 both; a 1-process run, whose masks
    differ throughout, ends at 80.8: dropout noise on Cora is about a point)."""
    from tests.helpers.paths import require_planetoid

    planetoid = require_planetoid()
    store = str(tmp_path / "cora")
    run_strata("ingest", "planetoid", str(planetoid), "--name", "cora", "--out", store, "-q")
    chain = _graph_parallel_chain(tmp_path, store, 200, (60, 130), cli=True, dropout=dropout)
    (reference,) = _graph_parallel_chain(tmp_path, store, 200, (), cli=True, dropout=dropout)
    print(f"cora dropout {dropout}: 4 -> 2 -> 4 test accuracy {chain[-1]['test_acc']:.4f}, uninterrupted {reference['test_acc']:.4f}")
    assert chain[-1]["steps"] == reference["steps"]
    assert abs(chain[-1]["test_acc"] - reference["test_acc"]) <= 0.01, (chain[-1]["test_acc"], reference["test_acc"])


def test_a_packed_remainder_is_the_n_process_runs_packed_batches(tmp_path: Path) -> None:
    """features.mode packed: the remainder of an epoch of 2 processes, resumed at 1, reads the
    2 shares' packs and yields the very batches (seeds, blocks, feature rows) of the in-memory path."""
    import torch

    from strata.launch.cli import main
    from strata.models.config import ModelConfig
    from strata.models.gnn import build_gnn
    from strata.runtime.config import DataConfig
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.config import PipelineConfig, TrainConfig
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.elastic import Remainder, RemainderBatches, _ids, share_batches
    from strata.runtime.gnn.executors.base import BuildContext
    from strata.storage.featstore.config import FeaturesConfig

    store = str(tmp_path / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=160, avg_degree=4, num_classes=3, feat_dim=8, seed=3), store, progress=False)
    assert main(["pack", store, "--fanouts", "3,3", "--batch-size", "8", "--epochs", "3", "--seed", str(SEED),
                 "--host-cache-bytes", "1MiB", "--world-size", "2", "-q"]) == 0
    train = TrainConfig(executor="minibatch", epochs=3, batch_size=BATCH, fanouts=[3, 3], seed=SEED)
    remainder = Remainder(epoch=1, world_size=2, start=3, consumed=0, dealt_from=3, dealt_over=1)
    steps = {}
    for mode in ("packed", "in_memory"):
        features = FeaturesConfig(mode=mode, host_cache_bytes=1 << 20, prefetch=2)
        ctx = BuildContext(
            train=train, pipeline=PipelineConfig(), features=features, data_cfg=DataConfig(store=store),
            model=build_gnn(ModelConfig(name="sage", hidden=8, num_layers=2), 8, 3), optimizer=None, comm=Comm(0, 1),  # type: ignore[arg-type]
            device="cpu", load_data=lambda mode=mode: load_node_data(DataConfig(store=store), self_loops=False, load_features=mode == "in_memory"),
        )
        batches = RemainderBatches(remainder, lambda rank, ctx=ctx: share_batches(ctx, rank, 2), rank=0, grad_accum=1)
        steps[mode] = [micro for step in batches.steps(3) for micro in step]
        batches.close()
    assert len(steps["packed"]) == 6  # 2 shares x the 3 steps left of 6
    assert Counter((tuple(seeds), inputs) for seeds, inputs in map(_ids, steps["packed"])) == _expected(store, 2, 1, 3)
    for packed, memory in zip(steps["packed"], steps["in_memory"]):
        assert _ids(packed) == _ids(memory) and torch.equal(packed.x, memory.x) and torch.equal(packed.y, memory.y)
