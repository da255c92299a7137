"""Feeding sampled batches to the training device, one batch ahead, copies overlapping compute.

On a CUDA device, :class:`DeviceFeed` takes batch i+1 from the batch source while batch i is
still training: it pins the host tensors (features assembled by the tiered store are pinned
already), issues their host-to-device copies with ``non_blocking=True`` on a side stream,
fills the rows the store's device tier serves (hot rows resident on the GPU, never copied),
and records a CUDA event. The training stream waits on that event before it uses the batch,
so the copy of batch i+1 runs on the copy engine while batch i's kernels run.

On the CPU the same code path runs with the copies left out: the feed yields the very batches
it is given (same objects, same order), so the trainer has one path whatever the device.

Figures (:class:`FeedStats`): the copy time each batch took on the side stream and how long
the training stream had to wait for it; the share of copy time hidden behind compute is
``1 - waited / copied`` (H2D overlap).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from strata.graph.block import Block
from strata.runtime.gnn.batches import Batch
from strata.storage.featstore.tiered import DeviceRows


@dataclass
class FeedStats:
    """What the copies of a feed cost and how much of it compute hid (CUDA only; zeros on CPU)."""

    batches: int = 0
    copied_bytes: int = 0
    """Bytes copied host to device (features, blocks, seeds, labels)."""
    device_rows: int = 0
    """Feature rows taken from the device tier instead of being copied."""
    copy_seconds: float = 0.0
    """GPU time of the copies on the side stream (placing the device tier's rows included)."""
    wait_seconds: float = 0.0
    """GPU time the training stream waited for a copy to finish."""

    @property
    def overlap(self) -> float:
        """Share of copy time hidden behind compute (1: no wait at all; 0: every copy waited for)."""
        if self.copy_seconds <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - self.wait_seconds / self.copy_seconds))

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "h2d_overlap": self.overlap}


@dataclass
class _Timing:
    """Events of one batch's copy: start and end on the side stream, and when the training
    stream reached the batch (before waiting for it)."""

    start: torch.cuda.Event
    done: torch.cuda.Event
    wanted: torch.cuda.Event | None = None


@dataclass
class _InFlight:
    batch: Batch
    done: torch.cuda.Event
    timing: _Timing | None


@dataclass
class DeviceFeed:
    """Batches of ``source`` on ``device``, each copied while the one before it trains."""

    device: torch.device
    measure: bool = True
    """Time every copy with CUDA events (cheap: two events a batch) for :attr:`stats`."""
    stats: FeedStats = field(default_factory=FeedStats)
    _stream: torch.cuda.Stream | None = field(default=None, init=False, repr=False)
    _timings: deque[_Timing] = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self._stream = torch.cuda.Stream(self.device)

    @property
    def copies(self) -> bool:
        """Whether batches are copied (a CUDA device) or passed through (the CPU)."""
        return self._stream is not None

    def __call__(self, source: Iterator[Batch]) -> Iterator[Batch]:
        """The batches of ``source``, in order, on the device; the next one copied ahead."""
        if not self.copies:
            for batch in source:
                self.stats.batches += 1
                yield batch
            return
        ahead: _InFlight | None = None
        for batch in source:
            issued = self._issue(batch)
            if ahead is not None:
                yield self._handover(ahead)
            ahead = issued
        if ahead is not None:
            yield self._handover(ahead)

    # -- CUDA --------------------------------------------------------------------------------

    def _issue(self, batch: Batch) -> _InFlight:
        """Start batch's copies on the side stream; nothing here waits for the device."""
        assert self._stream is not None
        host = pinned(batch)
        timing = _Timing(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if self.measure else None
        with torch.cuda.stream(self._stream):
            if timing is not None:
                timing.start.record(self._stream)
            moved = self._moved(host)
            done = timing.done if timing is not None else torch.cuda.Event()
            done.record(self._stream)
        self.stats.batches += 1
        self.stats.copied_bytes += batch_bytes(host)
        return _InFlight(moved, done, timing)

    def _moved(self, host: Batch) -> Batch:
        if host.device_rows is not None:
            self.stats.device_rows += len(host.device_rows.positions)
        return on_device(host, self.device)

    def _handover(self, flight: _InFlight) -> Batch:
        """Make the training stream wait for the batch's copies, then give the batch out."""
        current = torch.cuda.current_stream(self.device)
        if flight.timing is not None:
            flight.timing.wanted = torch.cuda.Event(enable_timing=True)
            flight.timing.wanted.record(current)
            self._timings.append(flight.timing)
            self._settle(block=False)
        current.wait_event(flight.done)
        for tensor in batch_tensors(flight.batch):
            tensor.record_stream(current)  # allocated on the side stream, used on this one
        return flight.batch

    def _settle(self, *, block: bool) -> None:
        """Fold the timings of finished batches into :attr:`stats`."""
        while self._timings:
            timing = self._timings[0]
            assert timing.wanted is not None
            if not block and not (timing.done.query() and timing.wanted.query()):
                return
            if block:
                timing.done.synchronize()
                timing.wanted.synchronize()
            self._timings.popleft()
            self.stats.copy_seconds += timing.start.elapsed_time(timing.done) / 1e3
            self.stats.wait_seconds += max(0.0, timing.wanted.elapsed_time(timing.done) / 1e3)

    def summary(self) -> FeedStats:
        """:attr:`stats`, every batch given out so far counted (waits for their copies)."""
        self._settle(block=True)
        return self.stats


def on_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` on ``device`` (copies issued ``non_blocking``, on the current stream), the device
    tier's rows placed in its features."""
    x = batch.x.to(device, non_blocking=True)
    if batch.device_rows is not None:
        x = batch.device_rows.place(x)  # hot rows, resident on the device: never copied
    graphs = batch.graphs
    graphs = [b.to(device, non_blocking=True) for b in graphs] if isinstance(graphs, list) else graphs.to(device, non_blocking=True)
    return Batch(graphs, x, batch.seeds.to(device, non_blocking=True), batch.y.to(device, non_blocking=True))


def placed(batch: Batch, device: torch.device | str) -> Batch:
    """``batch`` as it is, or, staged (features on the host, device-tier rows apart), on ``device``
    with those rows placed: a staged batch is never trained on incomplete features."""
    return batch if batch.device_rows is None else on_device(batch, torch.device(device))


def pinned(batch: Batch) -> Batch:
    """``batch`` with its host tensors in page-locked memory (tensors pinned already are kept)."""
    def pin(t: Tensor) -> Tensor:
        return t if t.device.type != "cpu" or t.is_pinned() else t.pin_memory()

    def pin_block(b: Block) -> Block:
        return b if b.device.type != "cpu" else b.pin_memory()

    graphs = batch.graphs
    graphs = [pin_block(b) for b in graphs] if isinstance(graphs, list) else pin_block(graphs)
    rows = batch.device_rows
    if rows is not None:
        rows = dataclasses.replace(rows, positions=pin(rows.positions), slots=pin(rows.slots),
                                   host_positions=pin(rows.host_positions))
    return dataclasses.replace(batch, graphs=graphs, x=pin(batch.x), seeds=pin(batch.seeds), y=pin(batch.y), device_rows=rows)


def batch_tensors(batch: Batch) -> list[Tensor]:
    """Every tensor a batch holds."""
    graphs = batch.graphs if isinstance(batch.graphs, list) else [batch.graphs]
    out = [batch.x, batch.seeds, batch.y]
    for block in graphs:
        out += [t for t in block_tensors(block)]
    return out


def block_tensors(block: Block) -> list[Tensor]:
    return [t for t in (block.indptr, block.indices, block.src_ids, block.dst_ids, block.out_deg, block.in_deg) if t is not None]


def batch_bytes(batch: Batch) -> int:
    return sum(t.numel() * t.element_size() for t in batch_tensors(batch))


__all__ = ["DeviceFeed", "DeviceRows", "FeedStats", "batch_tensors", "on_device", "pinned", "placed"]
