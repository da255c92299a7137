"""Running a function on N real processes over gloo, for multi-process tests.

``run_workers(fn, world_size, *args)`` spawns ``world_size`` processes on one free port; each
forms the process group from a torchrun-like environment, calls ``fn(topology, *args)`` and
saves what it returns (tensors, numbers, plain containers). The results come back in rank
order; a worker's exception fails the test with that worker's traceback.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun would set for ``rank`` on one node."""
    return {
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out: str, args: tuple) -> None:
    from strata.runtime.distributed import process_group
    from strata.runtime.topology import topology_from_env

    torch.set_num_threads(1)
    topology = topology_from_env(worker_env(rank, world_size, port))
    with process_group(topology, timeout_seconds=120):
        result = fn(topology, *args)
    torch.save(result, Path(out) / f"rank-{rank}.pt")


@contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_workers(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 180) -> list[Any]:
    """``fn(topology, *args)`` on ``world_size`` spawned processes; their results in rank order."""
    with tempfile.TemporaryDirectory(prefix="strata-dist-") as out:
        # Spawned children inherit the environment: one BLAS/OpenMP thread each on a shared CPU.
        with _env(OMP_NUM_THREADS="1", DGLBACKEND="pytorch"):
            context = mp.start_processes(
                _entry, args=(fn, world_size, free_port(), out, args), nprocs=world_size, join=False, start_method="spawn"
            )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"{world_size} workers running {fn.__name__} did not finish in {timeout:g}s")
        return [torch.load(Path(out) / f"rank-{r}.pt", weights_only=True) for r in range(world_size)]
