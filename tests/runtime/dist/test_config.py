"""Executor and distributed settings: resolution, validation and clear errors, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import ConfigError
from strata.launch.job import load_job
from strata.runtime.dist.config import DistributedConfig
from strata.runtime.dist.topology import topology_from_env
from strata.runtime.gnn.config import TrainConfig
from strata.runtime.gnn.trainer import _check_world


@pytest.mark.parametrize(
    "given, executor, mode",
    [
        ({}, "full", "full"),
        ({"mode": "full"}, "full", "full"),
        ({"mode": "minibatch"}, "minibatch", "minibatch"),
        ({"executor": "minibatch"}, "minibatch", "minibatch"),
        ({"executor": "graph_parallel"}, "graph_parallel", "full"),
        ({"executor": "graph_parallel", "mode": "full"}, "graph_parallel", "full"),
    ],
)
def test_executor_and_mode_resolve_together(given: dict, executor: str, mode: str) -> None:
    cfg = TrainConfig(**given)
    assert (cfg.executor, cfg.mode) == (executor, mode)
    assert TrainConfig(executor=cfg.executor, mode=cfg.mode) == cfg  # a logged config loads back


@pytest.mark.parametrize(
    "given, message",
    [
        ({"executor": "graph_parallel", "mode": "minibatch"}, "contradicts train.executor 'graph_parallel'"),
        ({"executor": "minibatch", "mode": "full"}, "contradicts"),
        ({"executor": "pipeline"}, "train.executor must be one of full, minibatch, graph_parallel"),
        ({"partitioner": "kmeans"}, "train.partitioner must be one of"),
        ({"executor": "minibatch", "partition": "metis-2"}, "train.partition names the parts of graph_parallel"),
    ],
)
def test_bad_executor_settings_name_the_key(given: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**given)


def test_distributed_section_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distributed.backend must be one of auto, gloo, nccl"):
        DistributedConfig(backend="mpi")
    with pytest.raises(ConfigError, match="distributed.timeout_seconds"):
        DistributedConfig(timeout_seconds=0)
    path = tmp_path / "job.yaml"
    path.write_text("data: {store: s}\ntrain: {executor: graph_parallel}\ndistributed: {backend: gloo, timeout_seconds: 30}\n")
    job = load_job(str(path))
    assert (job.train.executor, job.distributed.backend, job.distributed.timeout_seconds) == ("graph_parallel", "gloo", 30.0)
    path.write_text("data: {store: s}\ndistributed: {timeout: 30}\n")
    with pytest.raises(ConfigError, match="unknown config key 'distributed.timeout'"):
        load_job(str(path))


def test_full_executor_on_several_processes_points_to_graph_parallel() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "1"}
    with pytest.raises(ConfigError, match="use train.executor=graph_parallel"):
        _check_world(TrainConfig(), topology_from_env(env))
