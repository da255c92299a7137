"""The process group's lifetime on real processes: no rank goes on before every rank has joined
(a rank that left at once used to break a slower peer's join), and the rank that hosts the
rendezvous store (rank 0 when no torchrun agent does) leaves only after every other rank has
checked out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.multiprocessing as mp

from tests.helpers.ports import free_port
from tests.helpers.workers import worker_env, worker_start_method

LATE_RANK, WORLD, LATE_SECONDS = 2, 3, 1.5
SLOW_JOIN_RANK, SLOW_JOIN_SECONDS = 0, 1.0


def _leave(rank: int, world_size: int, port: int, out: str) -> None:
    from strata.runtime.dist.process_group import process_group
    from strata.runtime.dist.topology import topology_from_env

    topology = topology_from_env(worker_env(rank, world_size, port))
    with process_group(topology, timeout_seconds=60):
        if rank == LATE_RANK:
            time.sleep(LATE_SECONDS)
        finished = time.time()
    Path(out, f"rank-{rank}.json").write_text(json.dumps({"finished": finished, "left": time.time()}))


def test_the_rank_that_hosts_the_store_leaves_after_every_other_rank(tmp_path: Path) -> None:
    with worker_start_method() as method:
        mp.start_processes(_leave, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, start_method=method)
    times = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(WORLD)]
    # Rank 0 was done long before the late rank; it still left after that rank checked out.
    assert times[LATE_RANK]["finished"] - times[0]["finished"] > LATE_SECONDS / 2
    assert times[0]["left"] >= max(t["finished"] for t in times[1:])


def _join_slowly(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from strata.runtime.dist.process_group import process_group
    from strata.runtime.dist.topology import topology_from_env

    joined = time.time()
    if rank == SLOW_JOIN_RANK:
        # The store host finishes forming its side of the group late, as a descheduled process
        # under load does (in gloo, while still reading its pairs' handshakes).
        form = dist.init_process_group

        def slow_init(*args, **kwargs) -> None:
            nonlocal joined
            form(*args, **kwargs)
            time.sleep(SLOW_JOIN_SECONDS)
            joined = time.time()

        dist.init_process_group = slow_init
    topology = topology_from_env(worker_env(rank, world_size, port))
    with process_group(topology, timeout_seconds=60):
        entered = time.time()  # each rank leaves at once
    Path(out, f"rank-{rank}.json").write_text(json.dumps({"joined": joined, "entered": entered}))


def test_no_rank_goes_on_before_every_rank_has_joined(tmp_path: Path) -> None:
    with worker_start_method() as method:
        mp.start_processes(_join_slowly, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, start_method=method)
    times = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(WORLD)]
    assert min(t["entered"] for t in times) >= times[SLOW_JOIN_RANK]["joined"]
