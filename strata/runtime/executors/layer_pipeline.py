"""Layer-pipeline training (GNNPipe): each rank is a stage that owns consecutive layers over
the whole graph, and the graph flows through the stages in chunks.

Graph parallelism exchanges boundary embeddings at every layer, so its traffic grows with
depth; here a node's embedding crosses a stage boundary once per pass in each direction,
``2 x (stages - 1) x nodes x width x bytes`` per pass, whatever the depth.

A stage can only aggregate a node once its neighbours' inputs exist. Each stage therefore
keeps, for every graph layer it runs, a table of the last input embedding of every node
(historical embeddings). A chunk aggregates its own fresh rows plus the table rows of its
in-neighbours outside the chunk: fresh for chunks already computed in this pass, one pass
old for the rest. Only a chunk's own rows carry gradient, so chunks run forward and backward
independently and a schedule (GPipe or 1F1B, :mod:`pipeline_schedule`) can overlap them.

A synchronous pass runs the whole graph as one chunk, which is exact: it computes the loss
and gradients of single-process full-graph training. It runs on the first epoch (to fill
the tables), every ``sync_every`` epochs (the staleness bound), and always when history is
off.

Messages between stages carry ``h`` (and GCNII's initial residual ``h0`` when the model
has one) for the chunk's rows, packed as one tensor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.errors import ConfigError
from strata.models import LayeredModel
from strata.runtime.comm import Comm
from strata.runtime.data import NodeData
from strata.runtime.executors.base import StepResult, broadcast_parameters
from strata.runtime.executors.graph_parallel import global_csc, local_block
from strata.runtime.executors.partition import LocalPartition, local_partition
from strata.runtime.executors.pipeline_schedule import (
    SCHEDULES,
    Backward,
    Forward,
    RecvActivation,
    RecvGrad,
    SendActivation,
    SendGrad,
)


@dataclass
class PipelineConfig:
    """How the layer pipeline cuts the model and the graph."""

    chunks: int = 4
    """Graph chunks per pass."""
    schedule: str = "1f1b"
    """'gpipe' (fill-drain) or '1f1b' (fewer chunks in flight per stage)."""
    history: bool = True
    """Use historical embeddings for neighbours in chunks not yet computed; off = every pass exact."""
    sync_every: int = 10
    """Run a full synchronous (exact) pass every this many epochs; bounds staleness. 0 = only the first."""
    chunk_method: str = "metis"
    """Partitioner that cuts the graph into locality-preserving chunks."""

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ConfigError(f"pipeline.chunks must be at least 1, got {self.chunks}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"pipeline.schedule must be one of {', '.join(sorted(SCHEDULES))}, got '{self.schedule}'")
        if self.sync_every < 0:
            raise ConfigError(f"pipeline.sync_every must be >= 0, got {self.sync_every}")


@dataclass
class _Unit:
    """A set of destination nodes computed together: a chunk, or the whole graph."""

    part: LocalPartition
    block: object
    train: Tensor
    """Positions (among ``part.owned``) of the training nodes."""
    owned_ids: Tensor
    """``part.owned`` on the device, made once rather than at every pass."""
    halo_ids: Tensor

    @property
    def owned(self) -> np.ndarray:
        return self.part.owned


@dataclass
class PipelineStats:
    """What one training pass of this stage did."""

    busy_seconds: float = 0.0
    pass_seconds: float = 0.0
    sent_bytes: int = 0
    synchronous: bool = True
    epochs_since_sync: int = 0
    bubbles: list[float] = field(default_factory=list)

    @property
    def bubble_ratio(self) -> float:
        return 1.0 - self.busy_seconds / self.pass_seconds if self.pass_seconds else 0.0


def _widths(layers: list[nn.Module], in_dim: int) -> list[tuple[int, int]]:
    """(width of h, width of h0 or 0) before layer 0 and after every layer, from a 2-node probe."""
    from strata._dgl import dgl

    probe = dgl.graph(([0, 1, 0, 1], [1, 0, 0, 1]), num_nodes=2)
    h, h0 = torch.zeros(2, in_dim), None
    out = [(in_dim, 0)]
    modes = [layer.training for layer in layers]
    with torch.no_grad():
        for layer in layers:
            layer.eval()
            h, h0 = layer(probe, h, h0)
            out.append((h.shape[1], 0 if h0 is None else h0.shape[1]))
    for layer, mode in zip(layers, modes):
        layer.train(mode)
    return out


class LayerPipelineExecutor:
    """One pipeline stage per rank over ``comm.world_size`` stages."""

    name = "layer_pipeline"

    def __init__(
        self,
        model: LayeredModel,
        data: NodeData,
        comm: Comm,
        *,
        stages: list[range],
        chunk_of: np.ndarray,
        cfg: PipelineConfig,
        device: str = "cpu",
    ) -> None:
        num_nodes = data.feat.shape[0]
        if len(stages) != comm.world_size:
            raise ConfigError(f"layer_pipeline: {len(stages)} stages for {comm.world_size} ranks; one stage per rank")
        if chunk_of.shape != (num_nodes,):
            raise ConfigError(f"layer_pipeline needs one chunk id per node ({num_nodes}), got {chunk_of.shape}")
        self.cfg = cfg
        self.comm = comm
        self.stage = comm.rank
        self.num_stages = comm.world_size
        self.model = model.to(device)
        self.device = device
        span = stages[self.stage]
        self.layers = list(model.layers)[span.start : span.stop]
        widths = _widths(list(model.layers), data.feat.shape[1])
        self.in_width, self.out_width = widths[span.start], widths[span.stop]

        indptr, indices = global_csc(data.graph)
        in_deg, out_deg = np.diff(indptr), np.bincount(indices, minlength=num_nodes)
        train_mask = np.zeros(num_nodes, dtype=bool)
        train_mask[data.splits["train"].numpy()] = True
        self.num_train = int(train_mask.sum())

        def unit(assignment: np.ndarray, index: int, parts: int) -> _Unit:
            part = local_partition(indptr, indices, assignment, index, num_parts=parts)
            block = local_block(part, in_deg, out_deg).to(device)
            train = torch.from_numpy(np.flatnonzero(train_mask[part.owned])).to(device)
            owned, halo = torch.from_numpy(part.owned).to(device), torch.from_numpy(part.halo).to(device)
            return _Unit(part, block, train, owned, halo)

        self.whole = unit(np.zeros(num_nodes, dtype=np.int64), 0, 1)
        num_chunks = int(chunk_of.max()) + 1 if num_nodes else 1
        self.chunks = [unit(chunk_of.astype(np.int64), c, num_chunks) for c in range(num_chunks)]
        self.label = data.label.to(device)
        self.feat = data.feat.to(device) if self.stage == 0 else None
        self.splits = {name: ids.to(device) for name, ids in data.splits.items()}
        # History tables: the last input of every node, per graph layer of this stage.
        self.tables: dict[int, Tensor] = {}
        for i, layer in enumerate(self.layers):
            if layer.uses_graph:
                self.tables[i] = torch.zeros(num_nodes, widths[span.start + i][0], device=device)
        self.stats = PipelineStats()
        self._last_sync = -1
        broadcast_parameters(self.model, comm)

    # -- one stage's compute -------------------------------------------------------------

    def _stage_forward(self, unit: _Unit, h: Tensor, h0: Tensor | None, *, record: bool) -> tuple[Tensor, Tensor | None]:
        owned, halo = unit.owned_ids, unit.halo_ids
        for i, layer in enumerate(self.layers):
            if not layer.uses_graph:
                h, h0 = layer(None, h, h0)
                continue
            table = self.tables[i]
            if record:
                table[owned] = h.detach()
            h_local = torch.cat([h, table[halo]]) if len(halo) else h  # (owned + halo, width)
            h, h0 = layer(unit.block, h_local, h0)
        return h, h0

    def _pack(self, h: Tensor, h0: Tensor | None) -> Tensor:
        return h if h0 is None else torch.cat([h, h0], dim=1)

    def _unpack(self, message: Tensor, widths: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        width_h, width_h0 = widths
        if width_h0 == 0:
            return message, None
        return message[:, :width_h], message[:, width_h:]

    def _input(self, unit: _Unit, received: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.stage == 0:
            return self.feat[unit.owned_ids], None
        return self._unpack(received, self.in_width)

    def _loss(self, unit: _Unit, logits: Tensor) -> Tensor:
        owned = unit.owned_ids
        if len(unit.train) == 0:
            return logits.sum() * 0.0  # keeps the chunk's graph connected: its backward sends zeros
        labels = self.label[owned[unit.train]]
        return F.cross_entropy(logits[unit.train], labels, reduction="sum") / self.num_train

    # -- the interpreter -----------------------------------------------------------------

    def run_pass(self, units: list[_Unit]) -> float:
        """Forward and backward of every unit under the configured schedule; returns the loss
        on the last stage (0.0 elsewhere). Parameter gradients accumulate in ``.grad``."""
        program = SCHEDULES[self.cfg.schedule](self.stage, self.num_stages, len(units))
        received: dict[int, Tensor] = {}
        outputs: dict[int, Tensor] = {}
        grads: dict[int, Tensor] = {}
        pending: list[tuple[object, Tensor]] = []
        loss_total = 0.0
        busy = 0.0
        started = time.perf_counter()
        for op in program:
            unit = units[op.chunk]
            rows = len(unit.owned)
            if isinstance(op, RecvActivation):
                message = torch.empty(rows, sum(self.in_width), device=self.device)
                received[op.chunk] = self.comm.recv(message, self.stage - 1).requires_grad_()
            elif isinstance(op, Forward):
                t0 = time.perf_counter()
                h, h0 = self._input(unit, received.get(op.chunk))
                h, h0 = self._stage_forward(unit, h, h0, record=True)
                if self.stage == self.num_stages - 1:
                    outputs[op.chunk] = self._loss(unit, h)
                    loss_total += float(outputs[op.chunk].detach())
                else:
                    outputs[op.chunk] = self._pack(h, h0)
                busy += time.perf_counter() - t0
            elif isinstance(op, SendActivation):
                message = outputs[op.chunk].detach().contiguous()
                pending.append((self.comm.isend(message, self.stage + 1), message))
            elif isinstance(op, RecvGrad):
                grads[op.chunk] = self.comm.recv(torch.empty(rows, sum(self.out_width), device=self.device), self.stage + 1)
            elif isinstance(op, Backward):
                t0 = time.perf_counter()
                out = outputs.pop(op.chunk)
                if self.stage == self.num_stages - 1:
                    out.backward()
                elif out.requires_grad:
                    out.backward(grads.pop(op.chunk))
                busy += time.perf_counter() - t0
            elif isinstance(op, SendGrad):
                grad = received.pop(op.chunk).grad
                message = torch.zeros(rows, sum(self.in_width), device=self.device) if grad is None else grad.contiguous()
                pending.append((self.comm.isend(message, self.stage - 1), message))
            else:  # pragma: no cover - the schedule module defines no other instructions
                raise TypeError(f"unknown pipeline instruction {op!r}")
        for work, _ in pending:
            work.wait()
        self.stats.busy_seconds = busy
        self.stats.pass_seconds = time.perf_counter() - started
        return loss_total

    # -- the Executor protocol -----------------------------------------------------------

    def steps_per_epoch(self) -> int:
        return 1

    def epoch(self, epoch: int, start: int) -> Iterator[object]:
        if start == 0:
            yield epoch

    def _synchronous(self, epoch: int) -> bool:
        if not self.cfg.history or self._last_sync < 0:
            return True
        return self.cfg.sync_every > 0 and epoch - self._last_sync >= self.cfg.sync_every

    def train_step(self, batch: object, optimizer: torch.optim.Optimizer) -> StepResult:
        epoch = int(batch)  # type: ignore[arg-type]
        synchronous = self._synchronous(epoch)
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = self.run_pass([self.whole] if synchronous else self.chunks)
        optimizer.step()
        if synchronous:
            self._last_sync = epoch
        self.stats.synchronous = synchronous
        self.stats.epochs_since_sync = epoch - self._last_sync
        (total,) = self.comm.sum_floats([loss])
        return StepResult(loss=total, samples=self.num_train if self.stage == self.num_stages - 1 else 0)

    @torch.no_grad()
    def logits(self) -> Tensor | None:
        """Full-graph forward through all stages, without touching history; logits on the last stage."""
        self.model.eval()
        rows = len(self.whole.owned)
        if self.stage == 0:
            h, h0 = self._input(self.whole, None)
        else:
            h, h0 = self._unpack(self.comm.recv(torch.empty(rows, sum(self.in_width), device=self.device), self.stage - 1), self.in_width)
        h, h0 = self._stage_forward(self.whole, h, h0, record=False)
        if self.stage < self.num_stages - 1:
            self.comm.send(self._pack(h, h0), self.stage + 1)
            return None
        return h

    def evaluate(self) -> dict[str, float]:
        logits = self.logits()
        names = [name for name, ids in self.splits.items() if len(ids)]
        sums = []
        for name in names:
            ids = self.splits[name]
            if logits is None:
                sums += [0.0, 0.0]
            else:
                sums.append(float(F.cross_entropy(logits[ids], self.label[ids], reduction="sum")))
                sums.append(float((logits[ids].argmax(1) == self.label[ids]).sum()))
        totals = self.comm.sum_floats(sums)
        out = {}
        for i, name in enumerate(names):
            size = len(self.splits[name])
            out[f"{name}_loss"] = totals[2 * i] / size
            out[f"{name}_acc"] = totals[2 * i + 1] / size
        return out
