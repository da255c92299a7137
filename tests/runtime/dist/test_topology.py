"""Topology from launcher environments: pure tests, no processes."""

from __future__ import annotations

import pytest

from strata.runtime.dist.topology import (
    Topology,
    TopologyError,
    expand_nodelist,
    expand_tasks_per_node,
    single_process,
    topology_from_env,
)


def test_plain_process_is_single() -> None:
    topo = topology_from_env({"HOME": "/x", "PATH": "/bin"})
    assert (topo.rank, topo.world_size, topo.local_rank, topo.launcher) == (0, 1, 0, "single")
    assert (topo.backend, topo.device) == ("gloo", "cpu")
    assert not topo.is_distributed and topo.is_main
    assert topo == single_process()


def test_torchrun_two_nodes() -> None:
    env = {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
        "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400", "TORCHELASTIC_RESTART_COUNT": "2",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }
    topo = topology_from_env(env)
    assert topo == Topology(
        5, 8, 1, 4, 1, 2, "10.0.0.1", 29400, "torchrun", "gloo", "cpu", restart_count=2, agent_store=True
    )
    assert topo.is_distributed and not topo.is_main


def test_torchrun_with_cuda_uses_nccl_and_local_device() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    topo = topology_from_env(env, cuda_devices=4)
    assert (topo.backend, topo.device) == ("nccl", "cuda:3")
    assert topology_from_env(env, cuda_devices=4, backend="gloo").device == "cpu"
    # One device bound per task (srun --gpus-per-task): each process sees only its own.
    assert topology_from_env(env, cuda_devices=1).device == "cuda:0"
    with pytest.raises(TopologyError, match="one process per device"):
        topology_from_env(env, cuda_devices=2)


def test_nccl_without_cuda_is_refused() -> None:
    with pytest.raises(TopologyError, match="needs CUDA"):
        topology_from_env({}, backend="nccl")
    with pytest.raises(TopologyError, match="backend must be one of"):
        topology_from_env({}, backend="mpi")


def test_torchrun_inside_slurm_wins_over_slurm() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "29500",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1"}
    assert topology_from_env(env).launcher == "torchrun"


def test_srun_with_compressed_lists() -> None:
    env = {
        "SLURM_PROCID": "6", "SLURM_NTASKS": "7", "SLURM_LOCALID": "0", "SLURM_NODEID": "3",
        "SLURM_TASKS_PER_NODE": "2(x3),1", "SLURM_JOB_NODELIST": "gpu[07-09,11]", "SLURM_JOB_ID": "123456",
    }
    topo = topology_from_env(env)
    assert (topo.rank, topo.world_size, topo.local_rank, topo.local_world_size) == (6, 7, 0, 1)
    assert (topo.node_rank, topo.num_nodes, topo.master_addr, topo.launcher) == (3, 4, "gpu07", "slurm")
    assert topo.master_port == 20000 + 123456 % 10000


def test_srun_uniform_tasks_and_explicit_master() -> None:
    env = {
        "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "a[1-2]", "MASTER_ADDR": "login", "MASTER_PORT": "4000",
    }
    topo = topology_from_env(env)
    assert (topo.local_world_size, topo.num_nodes, topo.master_addr, topo.master_port) == (2, 2, "login", 4000)


def test_srun_without_nodelist_is_an_error() -> None:
    with pytest.raises(TopologyError, match="SLURM_JOB_NODELIST"):
        topology_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_kubeflow_pod_counts_pods() -> None:
    env = {"RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456",
           "PET_NNODES": "3", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "2"}
    topo = topology_from_env(env)
    assert (topo.rank, topo.world_size, topo.local_rank, topo.node_rank, topo.launcher) == (2, 3, 0, 2, "kubeflow")


def test_kubeflow_pod_with_several_processes_needs_torchrun() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "m", "PET_NPROC_PER_NODE": "4"}
    with pytest.raises(TopologyError, match="torchrun"):
        topology_from_env(env)
    # torchrun inside the pod gives every worker its real global rank and world size.
    worker = {**env, "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"}
    topo = topology_from_env(worker)
    assert (topo.rank, topo.world_size, topo.num_nodes, topo.launcher) == (5, 8, 2, "torchrun")


def test_indexed_job() -> None:
    env = {"JOB_COMPLETION_INDEX": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "train-0.train"}
    topo = topology_from_env(env)
    assert (topo.rank, topo.world_size, topo.master_addr, topo.master_port, topo.launcher) == (3, 4, "train-0.train", 29500, "indexed-job")
    with pytest.raises(TopologyError, match="WORLD_SIZE"):
        topology_from_env({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(TopologyError, match="disagrees"):
        topology_from_env({**env, "RANK": "2"})
    with pytest.raises(TopologyError, match="under torchrun"):
        topology_from_env({**env, "PET_NPROC_PER_NODE": "2"})


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}, "RANK must be an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}, "rank must be in 0..1"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "LOCAL_WORLD_SIZE is required"),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "local rank must be in"),
    ],
)
def test_inconsistent_env_is_a_clear_error(env: dict, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        topology_from_env(env)


@pytest.mark.parametrize(
    "spec, hosts",
    [
        ("node1", ["node1"]),
        ("node[01-04,07],gpu5", ["node01", "node02", "node03", "node04", "node07", "gpu5"]),
        ("a[8-11]", ["a8", "a9", "a10", "a11"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("x[3],y-[009-010].ib", ["x3", "y-009.ib", "y-010.ib"]),
    ],
)
def test_expand_nodelist(spec: str, hosts: list[str]) -> None:
    assert expand_nodelist(spec) == hosts


@pytest.mark.parametrize("spec", ["node[01-03", "node01]", "n[a-b]", "n[5-3]", ""])
def test_bad_nodelist_is_a_clear_error(spec: str) -> None:
    with pytest.raises(TopologyError, match="node list"):
        expand_nodelist(spec)


def test_expand_tasks_per_node() -> None:
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(TopologyError, match="tasks-per-node"):
        expand_tasks_per_node("2(3)")
