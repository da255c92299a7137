"""Running a function on N real processes over gloo, for multi-process tests.

``run_workers(fn, world_size, *args)`` starts ``world_size`` processes on one free port; each
forms the process group from a torchrun-like environment, calls ``fn(topology, *args)`` and
saves what it returns (tensors, numbers, plain containers). The results come back in rank
order; a worker's exception fails the test with that worker's traceback. ``start_workers``
does the same without waiting, for tests that talk to the workers while they run.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from tests.helpers.ports import free_port

# Workers fork from one server process that imported these once per test session, instead of
# each spawned worker importing torch, DGL and strata afresh (2-3 s of CPU a worker, a few
# minutes over the suite). The server starts inside ``_env`` below, so the workers it forks
# have that environment; it only imports, so no OpenMP pool or process group is forked.
START_METHOD = "forkserver"
PRELOAD = [
    "numpy", "torch", "torch.distributed", "strata.runtime.dist.process_group", "strata.runtime.dist.comm",
    "strata.models.gnn", "strata.runtime.gnn.data", "strata.runtime.loop", "tests.helpers.graphs",
]


def worker_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun would set for ``rank`` on one node."""
    return {
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    }


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out: str, args: tuple) -> None:
    from strata.runtime.dist.process_group import process_group
    from strata.runtime.dist.topology import topology_from_env

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


@contextmanager
def worker_start_method() -> Iterator[str]:
    """The start method to hand ``torch.multiprocessing`` while the block runs: the forkserver,
    preloaded, started (the first time) in the workers' environment."""
    # Children inherit the environment: one BLAS/OpenMP thread each on a shared CPU.
    with _env(OMP_NUM_THREADS="1", DGLBACKEND="pytorch"):
        multiprocessing.get_context(START_METHOD).set_forkserver_preload(PRELOAD)
        yield START_METHOD


class Workers:
    """Workers running; :meth:`results` waits for them."""

    def __init__(self, fn: Callable[..., Any], world_size: int, args: tuple) -> None:
        self.name = fn.__name__
        self.world_size = world_size
        self._out = tempfile.TemporaryDirectory(prefix="strata-dist-")
        with worker_start_method() as method:
            self._context = mp.start_processes(
                _entry, args=(fn, world_size, free_port(), self._out.name, args), nprocs=world_size, join=False,
                start_method=method,
            )

    def alive(self) -> bool:
        return any(p.is_alive() for p in self._context.processes)

    def results(self, timeout: float = 180) -> list[Any]:
        try:
            deadline = time.monotonic() + timeout
            while not self._context.join(timeout=1):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.world_size} workers running {self.name} did not finish in {timeout:g}s")
            return [torch.load(Path(self._out.name) / f"rank-{r}.pt", weights_only=True) for r in range(self.world_size)]
        finally:
            self.kill()
            self._out.cleanup()

    def kill(self) -> None:
        for process in self._context.processes:
            if process.is_alive():
                process.kill()


def start_workers(fn: Callable[..., Any], world_size: int, *args: Any) -> Workers:
    """``fn(topology, *args)`` on ``world_size`` spawned processes, not waited for."""
    return Workers(fn, world_size, args)


def run_workers(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 180) -> list[Any]:
    """``fn(topology, *args)`` on ``world_size`` spawned processes; their results in rank order."""
    return start_workers(fn, world_size, *args).results(timeout)
