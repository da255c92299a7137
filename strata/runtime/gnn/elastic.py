"""Elastic resume of data-parallel node classification: checkpointed at N processes, going on at M.

The model and the optimizer are replicas (the same on every rank), so every new rank loads
them from shard 0; each new rank's torch RNG (dropout) is derived afresh from (seed, rank,
step). What needs care is the data position of the minibatch executor: rank r of N trains
on its own balanced share of the training nodes, and its micro-batch m of an epoch is a pure
function of (seed, epoch, m, share). The micro-batches of the interrupted epoch that the
N-process run had not trained yet are exactly those the N-process run would still have
trained, and :class:`Remainder` lists them in a fixed order, micro-step by micro-step, old
rank by old rank::

    (r=0, m=k) (r=1, m=k) ... (r=N-1, m=k) (r=0, m=k+1) ...

and deals them over the M ranks: each step takes the next M x grad_accum of them, position
p of the step going to new rank p mod M. At M = N this is the N-process run's own dealing,
batch for batch. Each micro-batch is drawn by the batch source of its old share (at the old
per-rank batch size), so sampled blocks, features and packed batches are the very ones the
N-process run would have used. Later epochs are dealt as an M-process run deals them.

Where fewer than M x grad_accum micro-batches are left for the epoch's last step, a new rank
may get none: it still takes part in the step's collectives with a zero gradient. Gradients
are averaged over all M ranks, so that step's update is the mean of the ranks that had a
batch scaled by (ranks with a batch) / M. Adam divides by the running gradient scale, so
mostly the moment estimates notice, not the step's size.

A checkpoint written during such a remainder records it (:meth:`Remainder.state_dict`), so
the run resumes from there at any number of processes again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from strata.runtime.gnn.batches import Batch, BatchSource
    from strata.runtime.gnn.executors.base import BuildContext

RESPLITTABLE = {
    "full": "",
    "minibatch": "",
    "graph_parallel": "",
    "layer_pipeline": (
        "layer_pipeline gives each process a stage of the model's layers, so each shard holds only its stage's "
        "parameters and optimizer state, cut for that many stages"
    ),
}
"""Why each node-classification executor cannot resume at another process count (empty: it can)."""


def fixed_world_size(executor: str) -> str:
    """Why ``executor`` resumes only at the process count that wrote its checkpoint; empty when it can re-split."""
    return RESPLITTABLE.get(executor, f"executor '{executor}' does not say how its shards re-split")


def resume_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of new rank ``rank`` resuming at ``step`` at another process count: a pure
    function of (seed, rank, step), unlike every rank's dropout stream so far."""
    return int(np.random.SeedSequence([seed, rank, step, 1]).generate_state(1)[0])


@dataclass(frozen=True)
class Remainder:
    """The micro-batches of an interrupted epoch left to train, and how they are being dealt."""

    epoch: int
    world_size: int
    """N: the processes whose shares these micro-batches are."""
    start: int
    """The first micro-step of each old share still to train (N's step in the epoch x grad_accum)."""
    consumed: int
    """Of these micro-batches in dealing order, how many were trained before :attr:`dealt_from`."""
    dealt_from: int
    """The loop's step in the epoch at which the dealing over :attr:`dealt_over` processes began."""
    dealt_over: int

    @classmethod
    def after(cls, earlier: Remainder | None, *, written_by: int, epoch: int, step_in_epoch: int, world_size: int,
              grad_accum: int) -> Remainder:
        """What is left of ``epoch`` for ``world_size`` processes, resuming at ``step_in_epoch``
        from a checkpoint that ``written_by`` processes wrote (``earlier``: the remainder they
        were dealing, if any)."""
        if earlier is not None and earlier.epoch == epoch:
            consumed = earlier.consumed_at(step_in_epoch, grad_accum)
            return cls(epoch, earlier.world_size, earlier.start, consumed, step_in_epoch, world_size)
        return cls(epoch, written_by, step_in_epoch * grad_accum, 0, step_in_epoch, world_size)

    def units(self, micro_steps: int) -> list[tuple[int, int]]:
        """(old rank, micro-step) of every micro-batch left after :attr:`start`, in dealing order;
        ``micro_steps``: micro-batches per epoch of an old share."""
        return [(rank, step) for step in range(self.start, micro_steps) for rank in range(self.world_size)]

    def consumed_at(self, step_in_epoch: int, grad_accum: int) -> int:
        """Micro-batches trained once the loop is at ``step_in_epoch`` of this epoch."""
        return self.consumed + max(0, step_in_epoch - self.dealt_from) * self.dealt_over * grad_accum

    def steps(self, micro_steps: int, grad_accum: int) -> int:
        """Steps of this epoch in all, as dealt over :attr:`dealt_over` processes."""
        left = max(0, self.world_size * (micro_steps - self.start) - self.consumed)
        return self.dealt_from + math.ceil(left / (self.dealt_over * grad_accum))

    def dealt(self, micro_steps: int, grad_accum: int, rank: int, step_in_epoch: int) -> list[tuple[int, int]]:
        """(old rank, micro-step) of new rank ``rank``'s micro-batches at ``step_in_epoch``
        (possibly none at the last step)."""
        units = self.units(micro_steps)
        base = self.consumed_at(step_in_epoch, grad_accum)
        width = self.dealt_over * grad_accum
        return [units[p] for p in range(base + rank, min(base + width, len(units)), self.dealt_over)]

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def share_batches(ctx: BuildContext, rank: int, world_size: int) -> BatchSource:
    """The batch source rank ``rank`` of a ``world_size``-process minibatch run trains on: its
    balanced share at its per-rank batch size (as :func:`strata.runtime.gnn.executors.minibatch.build` deals them)."""
    from strata.runtime.gnn.batches import FeatureOptions, make_batches
    from strata.runtime.gnn.executors.minibatch import rank_data

    cfg = ctx.train
    micro = math.ceil(cfg.batch_size / world_size / cfg.grad_accum)
    options = FeatureOptions.of_job(ctx.features, ctx.data_cfg, ctx.model.self_loops)
    share = rank_data(ctx.load_data(), rank, world_size, cfg.seed)
    return make_batches(share, dataclasses.replace(cfg, batch_size=micro), ctx.model.num_graph_layers, options)


class RemainderBatches:
    """This rank's steps of an interrupted epoch's remainder, each micro-batch drawn by the batch
    source of the old share it belongs to (opened on first use, closed by :meth:`close`)."""

    def __init__(self, remainder: Remainder, open_share: Callable[[int], BatchSource], *, rank: int, grad_accum: int) -> None:
        self.remainder = remainder
        self.open_share = open_share
        self.rank = rank
        self.grad_accum = grad_accum
        self.sources: dict[int, BatchSource] = {}

    def source(self, old_rank: int) -> BatchSource:
        if old_rank not in self.sources:
            self.sources[old_rank] = self.open_share(old_rank)
        return self.sources[old_rank]

    def micro_steps(self) -> int:
        """Micro-batches per epoch of every old share (balanced shares are all one size)."""
        return self.source(0).steps_per_epoch()

    def steps_per_epoch(self) -> int:
        return self.remainder.steps(self.micro_steps(), self.grad_accum)

    def steps(self, start: int) -> Iterator[list[Batch]]:
        """This rank's micro-batches of every step of the epoch from ``start`` on."""
        micro_steps = self.micro_steps()
        for step in range(max(start, self.remainder.dealt_from), self.steps_per_epoch()):
            dealt = self.remainder.dealt(micro_steps, self.grad_accum, self.rank, step)
            yield [self.one(old_rank, micro_step) for old_rank, micro_step in dealt]

    def one(self, old_rank: int, micro_step: int) -> Batch:
        """Micro-batch ``micro_step`` of old share ``old_rank`` in the remainder's epoch."""
        batches = self.source(old_rank).epoch(self.remainder.epoch, micro_step)
        try:
            return next(iter(batches))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # a prefetching source stops loading ahead

    def close(self) -> None:
        for source in self.sources.values():
            source.close()
        self.sources.clear()


def reseed(seed: int, rank: int, step: int) -> None:
    """Re-derive this rank's torch RNG for an elastic resume."""
    torch.manual_seed(resume_seed(seed, rank, step))


def remainder_of(saved: dict[str, Any] | None) -> Remainder | None:
    return None if not saved else Remainder(**saved)


RECORD_ENV = "STRATA_RECORD_BATCHES"
"""A folder: every rank appends the seed nodes of each micro-batch it trains to
``rank-<r>.jsonl`` there (a debugging aid; the elastic-resume tests compare sample streams with it)."""


class BatchRecorder:
    """Writes, per trained micro-batch: epoch, step in the epoch, rank, world size, its seed
    nodes (global ids) and a hash of its sampled input nodes (a line with no seeds for a step
    in which this rank had no micro-batch)."""

    def __init__(self, path: str, rank: int) -> None:
        self.path = path
        self.rank = rank

    @classmethod
    def from_env(cls, rank: int) -> BatchRecorder | None:
        folder = os.environ.get(RECORD_ENV, "")
        if not folder:
            return None
        os.makedirs(folder, exist_ok=True)
        return cls(os.path.join(folder, f"rank-{rank}.jsonl"), rank)

    def recording(self, steps: Iterator[list[Any]], epoch: int, start: int, world_size: int) -> Iterator[list[Any]]:
        for index, micro_batches in enumerate(steps):
            where = {"epoch": epoch, "step": start + index, "rank": self.rank, "world_size": world_size}
            lines = [{**where, "seeds": None, "inputs": None}] if not micro_batches else []
            lines += [{**where, **dict(zip(("seeds", "inputs"), _ids(batch)))} for batch in micro_batches]
            with open(self.path, "a") as out:
                out.writelines(json.dumps(line) + "\n" for line in lines)
            yield micro_batches


def _ids(batch: Any) -> tuple[list[int] | None, str | None]:
    """(seed node ids, hash of the input node ids) of a sampled batch; None where it has none."""
    graphs = getattr(batch, "graphs", None)
    if not isinstance(graphs, list) or not graphs or graphs[-1].dst_ids is None:
        return None, None
    inputs = np.ascontiguousarray(graphs[0].src_ids.numpy(), dtype="<i8")
    return graphs[-1].dst_ids.tolist(), hashlib.blake2b(inputs.tobytes(), digest_size=8).hexdigest()
