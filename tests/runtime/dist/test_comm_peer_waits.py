"""Comm's per-peer all-to-all on CPU: the same rows as gloo's all_to_all_single, and the sink
learns how long each peer's rows took to arrive, each peer on its own (a late peer waited on
first does not make the others look late)."""

from __future__ import annotations

import time

from tests.helpers.workers import run_workers

WORLD, LATE, DELAY = 3, 0, 0.6
SEND_COUNTS = [[2, 1, 3], [0, 4, 2], [3, 2, 1]]
"""Rows rank i sends to rank j (zeros included: no receive is posted for them)."""


def _exchange(topology) -> dict:
    import torch
    import torch.distributed as dist

    from strata.runtime.dist.comm import Comm

    rank = topology.rank
    seen: list[tuple] = []
    comm = Comm(rank, WORLD, sink=lambda *args: seen.append(args))
    send = SEND_COUNTS[rank]
    recv = [SEND_COUNTS[j][rank] for j in range(WORLD)]
    rows = torch.arange(sum(send) * 3, dtype=torch.float32).reshape(-1, 3) + 100 * rank
    got = comm.all_to_all_single(rows, send, recv)
    want = rows.new_empty((sum(recv), 3))
    dist.all_to_all_single(want, rows, recv, send)
    comm.barrier()
    if rank == LATE:
        time.sleep(DELAY)
    late = comm.all_to_all_single(rows, send, recv)
    return {"equal": bool(torch.equal(got, want) and torch.equal(late, want)), "calls": seen}


def test_per_peer_exchange_moves_the_same_rows_and_times_each_peer() -> None:
    results = run_workers(_exchange, WORLD)
    for rank, result in enumerate(results):
        assert result["equal"], rank
        first, _, late = result["calls"]  # all_to_all, barrier, all_to_all
        assert first[0] == "all_to_all" and late[0] == "all_to_all"
        senders = {j for j in range(WORLD) if j != rank and SEND_COUNTS[j][rank]}
        assert set(late[3]) == set(first[3]) == senders, (rank, late)
        assert first[1] == sum(SEND_COUNTS[rank][j] for j in range(WORLD) if j != rank) * 3 * 4
    # Rank 0 entered the second exchange DELAY late: rank 1 and rank 2 waited that long on it
    # (rank 1 waits on it first), and not on each other. Rank 0 itself waited on nobody long.
    waits = {rank: result["calls"][2][3] for rank, result in enumerate(results)}
    print("seconds waited on each peer, by rank:", waits)
    for rank in (1, 2):
        assert waits[rank][LATE] > DELAY - 0.15
    assert waits[1][2] < waits[1][LATE] - DELAY / 2
    assert waits[2][1] < waits[2][LATE] - DELAY / 2
    assert max(waits[LATE].values()) < DELAY / 2


def test_per_peer_timing_is_on_when_a_sink_listens() -> None:
    """Without a sink nothing would be recorded, so gloo's own all_to_all runs (it is faster)."""
    from strata.runtime.dist.comm import Comm

    assert Comm(0, 1).peer_waits is False
    assert Comm(0, 1, sink=lambda *a: None).peer_waits is True
    assert Comm(0, 1, sink=lambda *a: None, peer_waits=False).peer_waits is False
