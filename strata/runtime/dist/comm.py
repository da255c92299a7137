"""Counted collectives: every collective and point-to-point op of a run goes through one
:class:`Comm`, which times it and counts its bytes by op for the metrics.

Bytes are the payload this rank sends: the whole tensor for all_reduce, all_gather,
broadcast (at the source) and send; only the rows meant for other ranks for all_to_all;
nothing for recv and barrier. With one process every op is the identity and nothing is
counted.

The sink also learns, per peer, how long this rank waited for that peer's data: on CPU (gloo)
and when a sink listens (``peer_waits``), all_to_all_single runs as one receive and one send
per peer, all posted at once, and each receive's arrival is timed; recv is timed too. A
synchronous collective takes every rank as long as its slowest peer, so op seconds cannot tell
which peer is slow; these waits can (``strata_comm_peer_wait_seconds``, alert StrataStragglerRank).

:meth:`Comm.subgroups` splits the ranks into process groups (a pipeline stage's
graph-parallel ranks, a diffusion expert's data-parallel ranks): every rank calls it with the
same list of groups, so every rank creates every ``torch.distributed`` group in the same
order, as torch requires, and gets back the :class:`Comm` of its own group. A group's Comm
counts into the same totals and the same sink as its parent, so a job's bytes by op are
complete whichever groups carried them. Ranks given to a group's Comm are ranks within that
group; point-to-point ops translate them to global ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

CommSink = Callable[..., None]
"""Receives (op, bytes, seconds) after every op, and a fourth argument, {peer's global rank:
seconds waited on it}, after the ops that know it (all_to_all on CPU, recv); e.g.
``TrainingMetrics.comm``."""

COUNTED_OPS = ("all_to_all", "all_reduce", "broadcast", "all_gather", "send")
"""The ops that carry payload (recv and barrier count none)."""
DEEPSPEED_OPS = tuple(
    f"deepspeed_{op}"
    for op in ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce", "all_gather", "all_to_all_single")
)
"""The names DeepSpeed's traffic is recorded under (see :meth:`Comm.record`)."""

MAX_WAIT_THREADS = 32
"""Threads that wait on one all_to_all's receives at once (beyond it, arrival times of the
later peers include waiting for earlier ones)."""

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@dataclass
class OpTotals:
    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0


class Comm:
    """The collectives of one rank on the default process group, or on one subgroup of it."""

    def __init__(
        self, rank: int, world_size: int, *, sink: CommSink | None = None, device: str = "cpu", peer_waits: bool | None = None
    ) -> None:
        if world_size > 1 and not dist.is_initialized():
            raise RuntimeError(f"Comm for {world_size} ranks needs a process group; form one with runtime.distributed.process_group")
        self.rank = rank
        """This rank's index in the group (the global rank on the default group)."""
        self.world_size = world_size
        """Ranks in the group."""
        self.sink = sink
        self.device = torch.device(device)
        """Where the small tensors of :meth:`sum_floats` live (NCCL reduces device tensors only)."""
        self.totals: dict[str, OpTotals] = {}
        self.ranks: tuple[int, ...] = tuple(range(world_size))
        """Global rank of each group rank."""
        self.group: object | None = None
        """The ``torch.distributed`` group; None for the default group or a group of one."""
        self.peer_waits = sink is not None if peer_waits is None else peer_waits
        """Time each peer's part of all_to_all_single on CPU: one receive and one send per peer,
        waited on by a few threads, which costs more CPU and latency than gloo's own all-to-all.
        On by default when a sink listens; the GNN trainer asks for it only where the ranks serve
        Prometheus metrics (metrics.port). Off, it is gloo's."""
        self._waiter: ThreadPoolExecutor | None = None

    def subgroups(self, groups: Sequence[Sequence[int]]) -> Comm:
        """Split this Comm's ranks into ``groups`` (lists of ranks of this Comm that together
        hold every rank exactly once) and return the Comm of the group holding this rank.

        Every rank must call this with the same ``groups`` at the same point of the program:
        each rank creates every group of more than one rank, in list order (torch's rule for
        ``new_group``). The returned Comm shares this one's totals and sink."""
        groups = [tuple(int(r) for r in g) for g in groups]
        if sorted(r for g in groups for r in g) != list(range(self.world_size)) or not all(groups):
            raise ValueError(f"subgroups must hold ranks 0..{self.world_size - 1} each exactly once, in non-empty groups; got {groups}")
        mine = self
        for members in groups:
            handle = dist.new_group([self.ranks[r] for r in members]) if len(members) > 1 else None
            if self.rank in members:
                mine = Comm.__new__(Comm)
                mine.rank, mine.world_size = members.index(self.rank), len(members)
                mine.sink, mine.device, mine.totals, mine.peer_waits = self.sink, self.device, self.totals, self.peer_waits
                mine.ranks, mine.group = tuple(self.ranks[r] for r in members), handle
                mine._waiter = None
        return mine

    def _done(self, op: str, nbytes: int, started: float, tensors: Sequence[Tensor], waits: dict[int, float] | None = None) -> None:
        if any(t.is_cuda for t in tensors):
            # NCCL ops are asynchronous to the host: wait so the seconds are the op's.
            torch.cuda.synchronize(tensors[0].device)
        self.record(op, nbytes, time.perf_counter() - started, waits)

    def record(self, op: str, nbytes: int, seconds: float, waits: dict[int, float] | None = None) -> None:
        """Account one op; also what another library sent on this rank's behalf (e.g. DeepSpeed).
        ``waits``: seconds of the op spent waiting on each peer (by global rank), where known."""
        totals = self.totals.setdefault(op, OpTotals())
        totals.calls += 1
        totals.bytes += nbytes
        totals.seconds += seconds
        if self.sink is not None:
            if waits:
                self.sink(op, nbytes, seconds, waits)
            else:
                self.sink(op, nbytes, seconds)

    def bytes_by_op(self) -> dict[str, int]:
        return {op: t.bytes for op, t in self.totals.items()}

    # -- collectives -----------------------------------------------------------------------

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """Reduce ``tensor`` over all ranks, in place; returns it."""
        if self.world_size == 1:
            return tensor
        started = time.perf_counter()
        dist.all_reduce(tensor, op=_REDUCE_OPS[op], group=self.group)
        self._done("all_reduce", _nbytes(tensor), started, [tensor])
        return tensor

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` (same shape on every rank), in rank order."""
        if self.world_size == 1:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        started = time.perf_counter()
        dist.all_gather(out, tensor.contiguous(), group=self.group)
        self._done("all_gather", _nbytes(tensor), started, [tensor])
        return out

    def broadcast(self, tensor: Tensor, src: int = 0) -> Tensor:
        """Overwrite ``tensor`` with rank ``src``'s, in place; returns it."""
        if self.world_size == 1:
            return tensor
        started = time.perf_counter()
        dist.broadcast(tensor, src=self.ranks[src], group=self.group)
        self._done("broadcast", _nbytes(tensor) if self.rank == src else 0, started, [tensor])
        return tensor

    def all_to_all_single(self, tensor: Tensor, send_counts: Sequence[int], recv_counts: Sequence[int]) -> Tensor:
        """Send rows ``[sum(send_counts[:j]), sum(send_counts[:j+1]))`` of ``tensor`` to rank j;
        returns the rows received, grouped by source rank.  (sum(recv_counts), *tensor.shape[1:])"""
        if len(send_counts) != self.world_size or len(recv_counts) != self.world_size:
            raise ValueError(f"all_to_all_single needs {self.world_size} send and receive counts")
        if sum(send_counts) != tensor.shape[0]:
            raise ValueError(f"send counts sum to {sum(send_counts)} but the tensor has {tensor.shape[0]} rows")
        out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
        if self.world_size == 1:
            return out.copy_(tensor)
        started = time.perf_counter()
        if tensor.is_cuda or not self.peer_waits:
            dist.all_to_all_single(out, tensor.contiguous(), list(recv_counts), list(send_counts), group=self.group)
            waits = None
        else:
            waits = self._exchange_by_peer(out, tensor, send_counts, recv_counts)
        row_bytes = _nbytes(tensor[:1]) if tensor.shape[0] else 0
        sent = (sum(send_counts) - send_counts[self.rank]) * row_bytes
        self._done("all_to_all", sent, started, [tensor], waits)
        return out

    def _exchange_by_peer(self, out: Tensor, tensor: Tensor, send_counts: Sequence[int], recv_counts: Sequence[int]) -> dict[int, float]:
        """all_to_all_single as one receive and one send per peer, all posted at once, so the
        time each peer's rows took to arrive is known: {global rank: seconds}. A rank whose
        link or host is slow is the one every other host waits on."""
        sends = tensor.contiguous().split(list(send_counts))
        received = out.split(list(recv_counts))
        received[self.rank].copy_(sends[self.rank])
        peers = [j for j in range(self.world_size) if j != self.rank]
        began = time.perf_counter()
        recvs = {self.ranks[j]: dist.irecv(received[j], src=self.ranks[j], group=self.group) for j in peers if recv_counts[j]}
        posted = [dist.isend(sends[j], dst=self.ranks[j], group=self.group) for j in peers if send_counts[j]]
        waits = self._arrivals(recvs, began)
        for work in posted:
            work.wait()
        return waits

    def _arrivals(self, recvs: dict[int, dist.Work], began: float) -> dict[int, float]:
        """Seconds from ``began`` until each posted receive completed. Each is waited on in its
        own thread (gloo's works have no completion callback), so one slow peer does not hide
        how soon the others' rows arrived; a failed receive raises here."""

        def arrival(work: dist.Work) -> float:
            work.wait()
            return time.perf_counter() - began

        if len(recvs) <= 1:
            return {peer: arrival(work) for peer, work in recvs.items()}
        if self._waiter is None:
            self._waiter = ThreadPoolExecutor(min(self.world_size - 1, MAX_WAIT_THREADS), thread_name_prefix="strata-recv")
        futures = {peer: self._waiter.submit(arrival, work) for peer, work in recvs.items()}
        return {peer: future.result() for peer, future in futures.items()}

    def all_to_all(self, outputs: list[Tensor], inputs: list[Tensor]) -> list[Tensor]:
        """Send ``inputs[j]`` to rank j and receive rank j's into ``outputs[j]``; returns ``outputs``."""
        if len(outputs) != self.world_size or len(inputs) != self.world_size:
            raise ValueError(f"all_to_all needs {self.world_size} inputs and outputs")
        if self.world_size == 1:
            outputs[0].copy_(inputs[0])
            return outputs
        started = time.perf_counter()
        dist.all_to_all(outputs, [t.contiguous() for t in inputs], group=self.group)
        sent = sum(_nbytes(t) for j, t in enumerate(inputs) if j != self.rank)
        self._done("all_to_all", sent, started, inputs)
        return outputs

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        started = time.perf_counter()
        dist.barrier(group=self.group)
        self._done("barrier", 0, started, [])

    # -- point to point --------------------------------------------------------------------

    def send(self, tensor: Tensor, dst: int) -> None:
        started = time.perf_counter()
        dist.send(tensor.contiguous(), dst=self.ranks[dst])
        self._done("send", _nbytes(tensor), started, [tensor])

    def isend(self, tensor: Tensor, dst: int) -> dist.Work:
        """Post a send and return at once; the caller keeps ``tensor`` alive until ``wait()``."""
        if not tensor.is_contiguous():
            raise ValueError("isend needs a contiguous tensor: a temporary copy could be freed before the send ends")
        started = time.perf_counter()
        work = dist.isend(tensor, dst=self.ranks[dst])
        self._done("send", _nbytes(tensor), started, [])
        return work

    def recv(self, tensor: Tensor, src: int) -> Tensor:
        started = time.perf_counter()
        dist.recv(tensor, src=self.ranks[src])
        self._done("recv", 0, started, [tensor], {self.ranks[src]: time.perf_counter() - started})
        return tensor

    # -- derived ---------------------------------------------------------------------------

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Sum a few Python numbers over all ranks (float64)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return self.all_reduce(tensor).tolist()

    def bytes_over_ranks(self) -> dict[str, int]:
        """Bytes sent by each op, summed over all ranks (collective: every rank calls it)."""
        mine = self.bytes_by_op()
        if self.world_size == 1:
            return {op: n for op, n in mine.items() if n}
        # Ranks may have used different ops (a pipeline's first stage never receives), so
        # they sum over one fixed vocabulary rather than over what each happened to use.
        ops = COUNTED_OPS + DEEPSPEED_OPS
        totals = self.sum_floats([float(mine.get(op, 0)) for op in ops])
        return {op: int(total) for op, total in zip(ops, totals) if total}

    def broadcast_int(self, value: int, src: int = 0) -> int:
        return int(self.broadcast(torch.tensor([value], dtype=torch.int64, device=self.device), src).item())


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()
