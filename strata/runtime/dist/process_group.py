"""The process group's lifetime: formed from a :class:`Topology`, always torn down.

The process group is the one piece of process-wide state strata keeps (torch.distributed
owns it). :func:`process_group` forms it when the job has more than one process and
destroys it on the way out, whether training ended, failed or was interrupted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from strata.errors import StrataError
from strata.runtime.dist.topology import Topology

log = logging.getLogger(__name__)


def _store(topology: Topology, timeout: timedelta) -> dist.Store:
    """The rendezvous store, with one key prefix per torchrun attempt.

    torchrun's agent keeps its store across worker restarts; without the prefix, a restarted
    rank could read the address a killed rank published and wait on a dead peer.
    """
    store = dist.TCPStore(
        topology.master_addr,
        topology.master_port,
        topology.world_size,
        is_master=topology.rank == 0 and not topology.agent_store,
        timeout=timeout,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"strata/attempt-{topology.restart_count}", store)


@contextmanager
def process_group(topology: Topology, *, timeout_seconds: float = 600.0) -> Iterator[None]:
    """Form the default process group for ``topology`` (nothing to form for one process) and
    destroy it on exit."""
    if not topology.is_distributed:
        yield
        return
    if dist.is_initialized():
        raise StrataError("a process group already exists in this process; strata forms exactly one per run")
    if topology.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(topology.device))
    timeout = timedelta(seconds=timeout_seconds)
    store = _store(topology, timeout)
    try:
        dist.init_process_group(
            backend=topology.backend,
            store=store,
            rank=topology.rank,
            world_size=topology.world_size,
            timeout=timeout,
        )
    except (RuntimeError, ValueError) as exc:
        raise StrataError(
            f"rank {topology.rank} could not join a process group of {topology.world_size} ranks at "
            f"{topology.master_addr}:{topology.master_port} ({topology.launcher}, {topology.backend}) within "
            f"{timeout_seconds:g}s: {exc}. Check that every rank was started and that the address is reachable"
        ) from exc
    finished = False
    try:
        _check_in(store, topology, timeout_seconds)
        log.info(
            "rank %d/%d joined the %s process group at %s:%d (%s)",
            topology.rank, topology.world_size, topology.backend, topology.master_addr, topology.master_port,
            topology.launcher,
        )
        yield
        finished = True
    finally:
        dist.destroy_process_group()
        if finished:
            _check_out(store, topology)


def _check_in(store: dist.Store, topology: Topology, timeout_seconds: float) -> None:
    """Return only once every rank has formed its side of the group.

    ``init_process_group`` returns on a rank as soon as *its* connections are up, while a peer
    may still be inside its own (gloo's connectFullMesh reads the handshake of every pair). A
    rank that went on and left at once would close its end of a pair that peer has not finished
    reading, and the peer's join fails with "Connection closed by peer"; if that peer hosts the
    store, its exit then fails every other rank's next store call ("Failed to recv, got 0
    bytes"). So no rank goes on until all have checked in; the last one to arrive says so.
    """
    if store.add("checked-in", 1) == topology.world_size:
        store.set("all-checked-in", b"1")
    try:
        store.wait(["all-checked-in"], timedelta(seconds=timeout_seconds))
    except (RuntimeError, ValueError) as exc:
        try:
            joined = f"only {store.add('checked-in', 0)} of {topology.world_size}"
        except (RuntimeError, ValueError):
            joined = f"not all {topology.world_size}"  # the store itself is gone
        raise StrataError(
            f"rank {topology.rank} joined the process group but {joined} ranks did within {timeout_seconds:g}s: "
            f"{exc}. Check the other ranks' logs"
        ) from exc


def _check_out(store: dist.Store, topology: Topology, wait_seconds: float = 30.0) -> None:
    """Leave in an order that keeps the rendezvous store up while anyone uses it.

    Without torchrun's agent, rank 0's process hosts the TCPStore the others are connected to,
    and tearing it down under a peer still leaving its group can abort a process. So every
    other rank checks out through the store, and rank 0 waits (at most ``wait_seconds``) until
    all have before it exits. Under torchrun the agent hosts the store: nothing to wait for.
    """
    if topology.agent_store:
        return
    if topology.rank != 0:
        store.add("checked-out", 1)
        return
    deadline = time.monotonic() + wait_seconds
    while store.add("checked-out", 0) < topology.world_size - 1:
        if time.monotonic() > deadline:
            log.warning("rank 0 leaves before every rank checked out of the rendezvous store (waited %gs)", wait_seconds)
            return
        time.sleep(0.005)
