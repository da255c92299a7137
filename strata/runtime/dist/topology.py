"""Where this process stands in the job: ranks, nodes, rendezvous address, backend, device.

:func:`topology_from_env` reads one environment mapping, passed in, and returns one frozen
:class:`Topology`; nothing else in strata reads launcher variables. Launchers, first match wins:

============  =====================================================================
torchrun      RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
              MASTER_PORT (also torchrun inside a SLURM step or a Kubernetes pod)
slurm         srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID,
              SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE ("2(x3),1"), the first host
              of SLURM_JOB_NODELIST ("node[01-04,07],gpu5") as rendezvous host
indexed-job   a Kubernetes Indexed Job: JOB_COMPLETION_INDEX is the rank; the manifest
              sets WORLD_SIZE and MASTER_ADDR (the headless Service name of index 0)
kubeflow      a PyTorchJob pod started without torchrun: RANK is the pod index and
              WORLD_SIZE the number of pods, one process each (PET_* are torchrun's)
single        none of the above: one process
============  =====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from strata.errors import StrataError

DEFAULT_PORT = 29500
BACKENDS = ("auto", "gloo", "nccl")


class TopologyError(StrataError):
    """The launcher's environment does not describe a consistent job."""


@dataclass(frozen=True)
class Topology:
    """One process's place in the job; pure data, computed once and passed explicitly."""

    rank: int
    """Global rank, 0..world_size-1."""
    world_size: int
    """Number of processes in the job."""
    local_rank: int
    """Rank among the processes of this node (selects the device)."""
    local_world_size: int
    """Processes on this node."""
    node_rank: int
    """Index of this node (host or pod)."""
    num_nodes: int
    """Number of nodes."""
    master_addr: str
    """Host of the rendezvous store (rank 0's node)."""
    master_port: int
    """Port of the rendezvous store."""
    launcher: str
    """torchrun, slurm, indexed-job, kubeflow or single."""
    backend: str
    """Process group backend: nccl with CUDA devices, gloo otherwise."""
    device: str
    """torch device of this process: 'cpu' or 'cuda:<i>'."""
    restart_count: int = 0
    """How many times torchrun restarted the workers of this job (a restart resumes)."""
    agent_store: bool = False
    """Whether the launcher's agent hosts the rendezvous store (torchrun), so rank 0 must not."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise TopologyError(f"world size must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise TopologyError(f"rank must be in 0..{self.world_size - 1} (world size {self.world_size}), got {self.rank}")
        if not 0 <= self.local_rank < self.local_world_size:
            raise TopologyError(
                f"local rank must be in 0..{self.local_world_size - 1} (local world size {self.local_world_size}), got {self.local_rank}"
            )
        if not 0 <= self.node_rank < self.num_nodes:
            raise TopologyError(f"node rank must be in 0..{self.num_nodes - 1}, got {self.node_rank}")
        if self.world_size > 1 and not 0 < self.master_port < 65536:
            raise TopologyError(f"master port must be in 1..65535, got {self.master_port}")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the job's logs and commits checkpoints."""
        return self.rank == 0


def single_process(*, cuda_devices: int = 0) -> Topology:
    """The topology of a plain one-process run."""
    return topology_from_env({}, cuda_devices=cuda_devices)


def topology_from_env(env: Mapping[str, str], *, cuda_devices: int = 0, backend: str = "auto") -> Topology:
    """The topology the launcher variables in ``env`` describe.

    ``cuda_devices`` is the number of CUDA devices this process sees (the caller passes
    ``torch.cuda.device_count()``); ``backend`` is 'auto' (nccl with CUDA, gloo otherwise),
    'gloo' or 'nccl'.
    """
    if backend not in BACKENDS:
        raise TopologyError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if "LOCAL_RANK" in env and "RANK" in env and "WORLD_SIZE" in env:
        fields = _torchrun(env)
    elif "SLURM_PROCID" in env:
        fields = _slurm(env)
    elif "JOB_COMPLETION_INDEX" in env:
        fields = _indexed_job(env)
    elif "RANK" in env and "WORLD_SIZE" in env:
        fields = _kubeflow(env)
    else:
        fields = _single()
    chosen, device = _backend_and_device(backend, cuda_devices, fields["local_rank"], fields["local_world_size"])
    return Topology(
        **fields,
        backend=chosen,
        device=device,
        restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
    )


# -- launchers -----------------------------------------------------------------------------


def _single() -> dict:
    return dict(
        rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0, num_nodes=1,
        master_addr="127.0.0.1", master_port=DEFAULT_PORT, launcher="single",
    )


def _torchrun(env: Mapping[str, str]) -> dict:
    world_size = _int(env, "WORLD_SIZE")
    local_world_size = _int(env, "LOCAL_WORLD_SIZE", 1 if world_size == 1 else None)
    num_nodes = _int(env, "GROUP_WORLD_SIZE", max(1, world_size // local_world_size))
    return dict(
        rank=_int(env, "RANK"),
        world_size=world_size,
        local_rank=_int(env, "LOCAL_RANK"),
        local_world_size=local_world_size,
        node_rank=_int(env, "GROUP_RANK", 0),
        num_nodes=num_nodes,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", DEFAULT_PORT),
        launcher="torchrun",
    )


def _slurm(env: Mapping[str, str]) -> dict:
    # Inside one srun step the STEP variables describe the step; the JOB ones the allocation.
    world_size = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
    node_rank = _int(env, "SLURM_NODEID", 0)
    if "SLURM_STEP_TASKS_PER_NODE" in env:
        per_node = expand_tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
    elif "SLURM_NTASKS_PER_NODE" in env:
        per_node = [_int(env, "SLURM_NTASKS_PER_NODE")] * max(1, _int(env, "SLURM_NNODES", 1))
    elif "SLURM_TASKS_PER_NODE" in env:
        per_node = expand_tasks_per_node(env["SLURM_TASKS_PER_NODE"])
    else:
        per_node = [world_size]
    if node_rank >= len(per_node):
        raise TopologyError(f"SLURM_NODEID={node_rank} but the tasks-per-node list has {len(per_node)} nodes: {per_node}")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    if "MASTER_ADDR" in env:
        master_addr = env["MASTER_ADDR"]
    elif nodelist:
        master_addr = expand_nodelist(nodelist)[0]
    elif world_size == 1:
        master_addr = "127.0.0.1"
    else:
        raise TopologyError("SLURM_PROCID is set but neither MASTER_ADDR nor SLURM_JOB_NODELIST is: run under srun inside an allocation")
    # Jobs sharing a node must not share a rendezvous port: derive it from the job id.
    default_port = 20000 + _int(env, "SLURM_JOB_ID", 0) % 10000 if "SLURM_JOB_ID" in env else DEFAULT_PORT
    return dict(
        rank=_int(env, "SLURM_PROCID"),
        world_size=world_size,
        local_rank=_int(env, "SLURM_LOCALID", 0),
        local_world_size=per_node[node_rank],
        node_rank=node_rank,
        num_nodes=len(per_node),
        master_addr=master_addr,
        master_port=_int(env, "MASTER_PORT", default_port),
        launcher="slurm",
    )


def _indexed_job(env: Mapping[str, str]) -> dict:
    index = _int(env, "JOB_COMPLETION_INDEX")
    if "WORLD_SIZE" not in env:
        raise TopologyError(
            f"JOB_COMPLETION_INDEX={index} says this is a Kubernetes Indexed Job, but WORLD_SIZE is not set; "
            "set WORLD_SIZE to the job's completions (and MASTER_ADDR to index 0's Service name) in the manifest"
        )
    if "RANK" in env and _int(env, "RANK") != index:
        raise TopologyError(f"RANK={env['RANK']} disagrees with JOB_COMPLETION_INDEX={index}; set one of them")
    world_size = _int(env, "WORLD_SIZE")
    _refuse_without_torchrun(env, world_size)
    if world_size > 1 and "MASTER_ADDR" not in env:
        raise TopologyError("an Indexed Job needs MASTER_ADDR: the hostname of index 0 under the job's headless Service")
    return dict(
        rank=index,
        world_size=world_size,
        local_rank=0,
        local_world_size=1,
        node_rank=index,
        num_nodes=world_size,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", DEFAULT_PORT),
        launcher="indexed-job",
    )


def _kubeflow(env: Mapping[str, str]) -> dict:
    pods = _int(env, "WORLD_SIZE")
    _refuse_without_torchrun(env, pods)
    return dict(
        rank=_int(env, "RANK"),
        world_size=pods,
        local_rank=0,
        local_world_size=1,
        node_rank=_int(env, "RANK"),
        num_nodes=pods,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", DEFAULT_PORT),
        launcher="kubeflow" if any(k.startswith("PET_") for k in env) else "env",
    )


# -- helpers -------------------------------------------------------------------------------


def _refuse_without_torchrun(env: Mapping[str, str], pods: int) -> None:
    nproc = env.get("PET_NPROC_PER_NODE", "1")
    if nproc.isdigit() and int(nproc) > 1:
        raise TopologyError(
            f"this pod is one of {pods} (WORLD_SIZE counts pods) and expects {nproc} processes (PET_NPROC_PER_NODE), "
            "but strata was started directly; start it under torchrun, which reads the PET_* variables: "
            "'torchrun -m strata.launch.cli train CONFIG'"
        )


def _backend_and_device(backend: str, cuda_devices: int, local_rank: int, local_world_size: int) -> tuple[str, str]:
    if backend == "nccl" and cuda_devices == 0:
        raise TopologyError("backend 'nccl' needs CUDA devices but this process sees none; use 'gloo' or 'auto'")
    if backend == "gloo" or cuda_devices == 0:
        return "gloo", "cpu"
    if cuda_devices >= local_world_size:
        return "nccl", f"cuda:{local_rank}"
    if cuda_devices == 1:
        # The launcher bound one device to each task (srun --gpus-per-task, CUDA_VISIBLE_DEVICES).
        return "nccl", "cuda:0"
    raise TopologyError(
        f"{local_world_size} processes on this node but {cuda_devices} CUDA devices: strata runs one process per device; "
        f"start at most {cuda_devices} processes per node"
    )


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    if key not in env or env[key] == "":
        if default is None:
            raise TopologyError(f"environment variable {key} is required here but not set")
        return default
    try:
        return int(env[key])
    except ValueError:
        raise TopologyError(f"environment variable {key} must be an integer, got '{env[key]}'") from None


_TASKS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed tasks-per-node list: ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in spec.split(","):
        match = _TASKS.match(item.strip())
        if not match:
            raise TopologyError(f"cannot read SLURM tasks-per-node '{spec}': expected items like '4' or '2(x3)'")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def expand_nodelist(spec: str) -> list[str]:
    """SLURM's compressed host list: ``"node[01-03,07],gpu5"`` -> node01 node02 node03 node07 gpu5.

    Several bracket groups in one name expand as a product (``"r[1-2]n[1-2]"`` -> r1n1 r1n2 r2n1 r2n2).
    """
    hosts: list[str] = []
    for item in _split_top_level(spec):
        if item:
            hosts += _expand_host(item, spec)
    if not hosts:
        raise TopologyError(f"SLURM node list '{spec}' names no host")
    return hosts


def _split_top_level(spec: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise TopologyError(f"SLURM node list '{spec}' has an unmatched ']'")
        elif char == "," and depth == 0:
            items.append(spec[start:i].strip())
            start = i + 1
    if depth != 0:
        raise TopologyError(f"SLURM node list '{spec}' has an unmatched '['")
    items.append(spec[start:].strip())
    return items


def _expand_host(item: str, spec: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    prefix, ranges, rest = item[:open_at], item[open_at + 1 : close_at], item[close_at + 1 :]
    tails = _expand_host(rest, spec) if rest else [""]
    out = []
    for part in ranges.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise TopologyError(f"SLURM node list '{spec}': cannot read range '{part}' (expected 'a' or 'a-b' with digits)")
        width = len(low)
        stop = int(high) if high else int(low)
        if stop < int(low):
            raise TopologyError(f"SLURM node list '{spec}': range '{part}' runs backwards")
        for number in range(int(low), stop + 1):
            out += [f"{prefix}{number:0{width}d}{tail}" for tail in tails]
    return out
