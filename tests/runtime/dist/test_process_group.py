"""The process group's teardown on real processes: the rank that hosts the rendezvous store
(rank 0 when no torchrun agent does) leaves only after every other rank has checked out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.multiprocessing as mp

from tests.helpers.ports import free_port
from tests.helpers.workers import worker_env

LATE_RANK, WORLD, LATE_SECONDS = 2, 3, 1.5


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
    mp.start_processes(_leave, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    times = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(WORLD)]
    # Rank 0 was done long before the late rank; it still left after that rank checked out.
    assert times[LATE_RANK]["finished"] - times[0]["finished"] > LATE_SECONDS / 2
    assert times[0]["left"] >= max(t["finished"] for t in times[1:])
