"""The process group's lifetime: formed from a :class:`Topology`, always torn down.

The process group is the one piece of process-wide state strata keeps (torch.distributed
owns it). :func:`process_group` forms it when the job has more than one process and
destroys it on the way out, whether training ended, failed or was interrupted.

When a collective fails inside the group (a peer's link was cut, its host died, its process
ended), the backend's own error names neither the peer nor its host ("Timed out waiting
600000ms for recv operation"). So at check-in every rank publishes where it runs (host name,
address) and opens a probe socket, a listening socket no one accepts on: the kernel answers
a peer's connect while the host is reachable, refuses it once the process is gone, and
nothing answers a host that is cut off. A failed collective then becomes a
:class:`StrataError` that names each peer that is unreachable or gone, by rank and host.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from strata.errors import StrataError
from strata.runtime.dist.topology import Topology

log = logging.getLogger(__name__)


def _store(topology: Topology, timeout: timedelta) -> dist.Store:
    """The rendezvous store, with one key prefix per torchrun attempt.

    torchrun's agent keeps its store across worker restarts; without the prefix, a restarted
    rank could read the address a killed rank published and wait on a dead peer. A store the
    workers host (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) is new each attempt and needs none; the
    restart count must not name it then, as a replaced host's agent counts from 0 while the
    surviving agents do not (tests/testing/test_host_kill.py).
    """
    store = dist.TCPStore(
        topology.master_addr,
        topology.master_port,
        topology.world_size,
        is_master=topology.rank == 0 and not topology.agent_store,
        timeout=timeout,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"strata/attempt-{topology.restart_count}" if topology.agent_store else "strata", store)


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
    probe = _probe_socket()
    try:
        me = Peer(topology.rank, socket.gethostname(), _address_towards(topology.master_addr), probe.getsockname()[1])
        store.set(f"peer/{topology.rank}", json.dumps(asdict(me)))
        _check_in(store, topology, timeout_seconds)
        peers = _peers(store, topology.world_size)
        log.info(
            "rank %d/%d joined the %s process group at %s:%d (%s)",
            topology.rank, topology.world_size, topology.backend, topology.master_addr, topology.master_port,
            topology.launcher,
        )
        try:
            yield
        except RuntimeError as exc:  # the backends' errors (torch.distributed.DistError among them)
            if not _is_comm_failure(exc):
                raise
            raise StrataError(lost_contact_message(me, peers, exc, timeout_seconds)) from exc
        finished = True
    finally:
        probe.close()
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


# -- naming the peer a failed collective lost -----------------------------------------------------

PROBE_SECONDS = 2.0
"""How long a probe waits for a peer's host to answer before calling it unreachable."""


@dataclass(frozen=True)
class Peer:
    """Where one rank runs, as it told the others at check-in."""

    rank: int
    host: str
    """Its host name."""
    address: str
    """Its address on the network the job uses (the one towards the rendezvous host)."""
    probe_port: int
    """Its probe socket's port (see the module docstring)."""

    def __str__(self) -> str:
        return f"rank {self.rank} on {self.host} ({self.address})"


def _probe_socket() -> socket.socket:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("0.0.0.0", 0))
    probe.listen(128)
    return probe


def _address_towards(master_addr: str) -> str:
    """This host's address on the route to ``master_addr`` (no packet is sent)."""
    try:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as udp:
            udp.connect((master_addr, 9))
            return udp.getsockname()[0]
    except OSError:
        return "unknown address"


def _peers(store: dist.Store, world_size: int) -> list[Peer]:
    """Every rank's :class:`Peer`, read once at check-in (later the store may be out of reach too)."""
    values = store.multi_get([f"peer/{rank}" for rank in range(world_size)])
    return [Peer(**json.loads(bytes(value).decode())) for value in values]


def _is_comm_failure(exc: RuntimeError) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    return re.search(r"gloo|nccl|connection|timed out|broken pipe|by peer", str(exc), re.IGNORECASE) is not None


def probe(peer: Peer, timeout: float = PROBE_SECONDS) -> str:
    """'reachable', 'gone' (its host refused: the process ended) or 'unreachable' (no answer)."""
    try:
        with socket.create_connection((peer.address, peer.probe_port), timeout=timeout):
            return "reachable"
    except ConnectionRefusedError:
        return "gone"
    except OSError:  # a timeout, no route to host, network unreachable
        return "unreachable"


def lost_contact_message(me: Peer, peers: list[Peer], exc: BaseException, timeout_seconds: float) -> str:
    """What a rank says when a collective failed: which peers it cannot reach, and what to do."""
    others = [p for p in peers if p.rank != me.rank]
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(others)))) as pool:
        states = dict(zip((p.rank for p in others), pool.map(probe, others)))
    cause = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    unreachable = [p for p in others if states[p.rank] == "unreachable"]
    gone = [p for p in others if states[p.rank] == "gone"]
    said = [f"{me} lost contact with the job: a collective failed ({cause}; distributed.timeout_seconds={timeout_seconds:g})."]
    if unreachable:
        hosts = sorted({p.host for p in unreachable})
        said.append(f"Unreachable: {', '.join(map(str, unreachable))}: no answer within {PROBE_SECONDS:g}s, "
                    f"a cut link or a dead host. Check the network of {', '.join(hosts)}.")
    if gone:
        said.append(f"Gone: {', '.join(map(str, gone))}: the host answers but the process has ended; see its own error.")
    if not unreachable and not gone:
        said.append("Every peer's host still answers, so the network is up: see the other ranks' errors.")
    said.append("Resume from the last checkpoint with --resume once every host is back.")
    return " ".join(said)
