"""Layer-pipeline training (GNNPipe): each stage owns consecutive layers over the whole graph,
and the graph flows through the stages in chunks; in hybrid mode each stage runs its layers
graph-parallel over G ranks.

Graph parallelism exchanges boundary embeddings at every layer, so its traffic grows with
depth; here a node's embedding crosses a stage boundary once per pass in each direction,
whatever the depth.

A stage can only aggregate a node once its neighbours' inputs exist. Each stage therefore
keeps, for every graph layer it runs, a table of the last input embedding of every node it
reads (historical embeddings). A chunk aggregates its own fresh rows plus the table rows of
its in-neighbours outside the chunk: fresh for chunks already computed in this pass, one pass
old for the rest. Only a chunk's own rows carry gradient, so chunks run forward and backward
independently and a schedule (GPipe or 1F1B, :mod:`strata.runtime.pipeline.schedule`, run by
:mod:`strata.runtime.pipeline.interpreter`) can overlap them.

A synchronous pass runs the whole graph as one chunk, which is exact: it computes the loss
and gradients of single-process full-graph training. It runs on the first epoch (to fill
the tables), every ``sync_every`` epochs (the staleness bound), and always when history is
off.

Hybrid (``pipeline.stages`` < processes): ``world = stages x G``; rank (s, g) runs stage s's
layers on part g of a G-part cut of the graph, and the chunks are cut inside each part
(:mod:`pipeline_layout`). Before each graph layer the stage's G ranks exchange, with one
all_to_all, the rows of the current chunk that the other parts hold as halo; halo rows of
other chunks come from the tables. Stage gradients are summed over the G ranks. Rank (s, g)
sends its rows to rank (s + 1, g) only, so every node still crosses a boundary once.

Messages between stages carry ``h`` for the chunk's rows. A model with an initial residual
``h0`` (GCNII) made by per-node layers from the features (its input projection) gets ``h0``
recomputed at every stage instead (``recompute_residual``): each stage holds the features and
a replica of those input layers, whose gradients are summed over all ranks. Their dropout
draws from a generator seeded by (seed, step, chunk), so every stage applies the mask stage 0
applied. Without recomputation ``h0`` travels with ``h``, packed as one tensor.

Traffic of one training pass, all ranks together, ``b`` bytes per element (4 for float32);
N nodes, boundary width ``w_k`` (h, plus h0 when it is not recomputed) at the boundary
after stage k, graph layers l
with input width ``d_l``, ``H_G`` the sum of the halo sizes of the G-part cut::

    send        2 x sum over the S - 1 boundaries of N x w_k x b
    all_to_all  sum over graph layers of H_G x d_l x b, twice (forward and backward) for
                every layer whose input carries gradient (all but one reading raw features)
    all_reduce  (G > 1) each rank: its stage's parameters x b; (S x G > 1, h0 recomputed) each
                rank: the input layers' parameters x b; plus the loss (8 bytes)

The same holds for synchronous and chunked passes: over a pass the chunks' rows partition
every part and every halo. For GCNII (``w = hidden``, ``d = hidden``, L graph layers):
``2 (S-1) N h b + 2 L H_G h b``; with G = 1 this is the pipeline's ``2 (S-1) N h b``, with
S = 1 graph_parallel's ``2 L H h b``. Sending h0 instead doubles the first term (``w = 2h``).
Evaluation is forward only: half of each term.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.errors import ConfigError
from strata.graph.block import Block
from strata.models.gnn import LayeredModel, probe_block, run_layers
from strata.partitioners.assign import assign
from strata.partitioners.stages import assign_stages
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import all_reduce_gradients, broadcast_parameters
from strata.runtime.gnn.config import PipelineConfig
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.executors.base import (
    BuildContext,
    FullGraphStep,
    score_sums,
    split_scores,
)
from strata.runtime.gnn.executors.blocks import csc_block, graph_arrays, graph_block
from strata.runtime.gnn.executors.halo_exchange import fetch_halo
from strata.runtime.gnn.executors.pipeline_layout import (
    PipelineLayout,
    UnitPlan,
    chunks_within_parts,
    plan_units,
)
from strata.runtime.loop import ExecutorStats, StepOutput
from strata.runtime.pipeline.interpreter import PipelineStats, interpret
from strata.runtime.pipeline.schedule import SCHEDULES


@dataclass
class _Unit:
    """A set of destination nodes computed together (a chunk, or the whole part), on the device."""

    plan: UnitPlan
    block: Block
    train: Tensor
    """Positions (among ``dst``) of the training nodes."""
    dst_ids: Tensor
    """Global ids of the nodes computed, made once rather than at every pass."""
    dst_rows: Tensor
    recv_rows: Tensor
    stale_rows: Tensor
    send_pos: Tensor

    @property
    def owned(self) -> np.ndarray:
        return self.plan.dst

    @property
    def rows(self) -> int:
        return len(self.plan.dst)


def residual_prefix(layers: list[nn.Module], widths: list[tuple[int, int]]) -> int:
    """How many leading layers make the initial residual h0 from the features alone: the
    layers up to the one whose output first carries h0, if none of them reads the graph and no
    later layer makes h0 anew. 0 when the model has no h0 or it cannot be recomputed per node."""
    made = next((i + 1 for i, (_, width_h0) in enumerate(widths[1:]) if width_h0), 0)
    if not made or any(layer.uses_graph for layer in layers[:made]):
        return 0
    if any(getattr(layer, "sets_h0", False) for layer in layers[made:]):
        return 0
    return made


def _widths(layers: list[nn.Module], in_dim: int) -> list[tuple[int, int]]:
    """(width of h, width of h0 or 0) before layer 0 and after every layer, from a 2-node probe."""
    probe = probe_block()
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


def _unit(plan: UnitPlan, degrees: tuple[np.ndarray, np.ndarray], train_mask: np.ndarray, device: str) -> _Unit:
    """``plan`` on the device, with its CSC block normalised by the global (out, in) degrees."""

    def dev(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(device)

    out_deg, in_deg = degrees
    block = csc_block(plan.indptr, plan.indices, out_deg[plan.src], in_deg[plan.dst]).to(device)
    train = dev(np.flatnonzero(train_mask[plan.dst]))
    return _Unit(plan, block, train, dev(plan.dst), dev(plan.dst_rows), dev(plan.recv_rows), dev(plan.stale_rows), dev(plan.send_pos))


class LayerPipelineExecutor:
    """Stage ``rank // G`` on part ``rank % G``, over ``len(stages)`` stages x G ranks."""

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
        part_of: np.ndarray | None = None,
        device: str = "cpu",
        seed: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        num_nodes = data.feat.shape[0]
        layout = PipelineLayout.of(len(stages), comm.world_size)
        part_of = np.zeros(num_nodes, dtype=np.int64) if part_of is None else np.asarray(part_of, dtype=np.int64)
        if chunk_of.shape != (num_nodes,) or part_of.shape != (num_nodes,):
            raise ConfigError(
                f"layer_pipeline needs one chunk id and one part id per node ({num_nodes}), got {chunk_of.shape} and {part_of.shape}"
            )
        if num_nodes and (part_of.min() < 0 or part_of.max() >= layout.groups):
            raise ConfigError(f"layer_pipeline: {len(stages)} stages over {comm.world_size} ranks need part ids 0..{layout.groups - 1}")
        self.cfg = cfg
        self.comm = comm
        self.optimizer = optimizer
        self.layout = layout
        self.stage, self.part = layout.stage_of(comm.rank), layout.part_of(comm.rank)
        self.num_stages = layout.stages
        # Every rank creates every stage group, in stage order.
        self.group = comm.subgroups(layout.stage_ranks())
        self.prev_rank = layout.rank_of(self.stage - 1, self.part) if self.stage > 0 else None
        self.next_rank = layout.rank_of(self.stage + 1, self.part) if self.stage < self.num_stages - 1 else None
        self.model = model.to(device)
        self.device = device
        self.seed = seed
        table_widths = self._place_layers(list(model.layers), stages, data.feat.shape[1])
        rows = self._build_units(data, part_of, chunk_of.astype(np.int64))
        # History tables: the last input of every node this rank reads (its part, then its
        # halo), per graph layer of this stage. Not needed when every pass is synchronous.
        self.tables: dict[int, Tensor] = {}
        if cfg.history:
            for i, layer in enumerate(self.layers):
                if layer.uses_graph:
                    self.tables[i] = torch.zeros(rows, table_widths[i], device=device)
        self.last_pass = PipelineStats()
        self._last_sync = -1
        broadcast_parameters(self.model, comm)

    def _place_layers(self, layers: list[nn.Module], stages: list[range], in_dim: int) -> list[int]:
        """This stage's layers, the input layers it replicates to recompute h0, and the widths of
        what it receives and sends. Returns the input width of h at each of this stage's layers."""
        span = stages[self.stage]
        widths = _widths(layers, in_dim)
        prefix = residual_prefix(layers, widths) if self.cfg.recompute_residual else 0
        if prefix > stages[0].stop:
            prefix = 0  # the input layers straddle a stage boundary: send h0 instead
        self.prefix_layers = layers[:prefix]
        """Layers every stage runs on its chunk's features to recompute h0 (none when h0 is sent)."""
        first = max(span.start, prefix)
        self.layers = layers[first : span.stop]
        if prefix:
            widths = [(width_h, 0) for width_h, _ in widths]  # what travels: h alone
        self.in_width, self.out_width = widths[span.start], widths[span.stop]
        return [width_h for width_h, _ in widths[first : span.stop]]

    def _build_units(self, data: NodeData, part_of: np.ndarray, chunk_of: np.ndarray) -> int:
        """The whole part and its chunks as units on the device, the labels, the features where
        this rank reads them, and the split members it computes. Returns the rows of a history
        table: the part's nodes and its halo."""
        num_nodes = data.feat.shape[0]
        indptr, indices = graph_arrays(graph_block(data.graph))
        degrees = (np.bincount(indices, minlength=num_nodes), np.diff(indptr))  # (out, in)
        train_mask = np.zeros(num_nodes, dtype=bool)
        train_mask[data.splits["train"].numpy()] = True
        self.num_train = int(train_mask.sum())
        tables, whole, chunks = plan_units(indptr, indices, part_of, chunk_of, self.part, self.layout.groups)
        self._halo_rows = tables.num_halo
        self.whole = _unit(whole, degrees, train_mask, self.device)
        self.chunks = [_unit(plan, degrees, train_mask, self.device) for plan in chunks]
        self.label = data.label.to(self.device)
        self.feat = data.feat.to(self.device) if self.stage == 0 or self.prefix_layers else None
        # Split members this rank computes, as positions among the whole part's rows.
        position = torch.full((num_nodes,), -1, dtype=torch.int64)
        position[torch.from_numpy(whole.dst)] = torch.arange(len(whole.dst))
        self.split_sizes = {name: len(ids) for name, ids in data.splits.items()}
        self.splits = {name: position[ids][position[ids] >= 0].to(self.device) for name, ids in data.splits.items()}
        return tables.num_owned + tables.num_halo

    # -- one stage's compute -------------------------------------------------------------

    def _stage_forward(self, unit: _Unit, h: Tensor, h0: Tensor | None, *, record: bool) -> tuple[Tensor, Tensor | None]:
        for i, layer in enumerate(self.layers):
            if not layer.uses_graph:
                h, h0 = layer(None, h, h0)
                continue
            table = self.tables.get(i)
            if record and table is not None:
                table[unit.dst_rows] = h.detach()
            sources = [h]  # (dst, width)
            if self.group.world_size > 1:
                fresh = fetch_halo(h, unit.send_pos, unit.plan.send_counts, unit.plan.recv_counts, self.group)  # (recv, width)
                if record and table is not None:
                    table[unit.recv_rows] = fresh.detach()
                sources.append(fresh)
            if len(unit.stale_rows):
                if table is None:
                    raise RuntimeError("a chunked pass reads historical embeddings, but pipeline.history is off")
                sources.append(table[unit.stale_rows])
            h_local = torch.cat(sources) if len(sources) > 1 else h  # (dst + recv + stale, width)
            h, h0 = layer(unit.block, h_local, h0)
        return h, h0

    def _pack(self, h: Tensor, h0: Tensor | None) -> Tensor:
        """The message to the next stage: h, with h0 beside it unless the next stage recomputes it."""
        return h if h0 is None or self.prefix_layers else torch.cat([h, h0], dim=1)

    def _unpack(self, message: Tensor, widths: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        width_h, width_h0 = widths
        if width_h0 == 0:
            return message, None
        return message[:, :width_h], message[:, width_h:]

    @contextmanager
    def _shared_rng(self, step: int, chunk: int) -> Iterator[None]:
        """The global generator seeded by (seed, step, chunk) inside, restored after: the
        input layers' dropout draws the same mask for a chunk on every stage."""
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        key = np.random.SeedSequence([self.seed & 0xFFFFFFFF, step, chunk]).generate_state(1)[0]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(key))
            yield

    def _input(self, unit: _Unit, received: Tensor | None, step: int = 0, chunk: int = 0) -> tuple[Tensor, Tensor | None]:
        if self.prefix_layers:
            with self._shared_rng(step, chunk):
                h, h0 = run_layers(self.prefix_layers, None, self.feat[unit.dst_ids], None)
            return (h, h0) if self.stage == 0 else (received, h0)
        if self.stage == 0:
            return self.feat[unit.dst_ids], None
        return self._unpack(received, self.in_width)

    def _loss(self, unit: _Unit, logits: Tensor) -> Tensor:
        if len(unit.train) == 0:
            return logits.sum() * 0.0  # keeps the chunk's graph connected: its backward sends zeros
        labels = self.label[unit.dst_ids[unit.train]]
        return F.cross_entropy(logits[unit.train], labels, reduction="sum") / self.num_train

    def _buffer(self, rows: int, widths: tuple[int, int]) -> Tensor:
        """An empty message of ``rows`` rows: h, with h0 beside it when it travels.  (rows, sum(widths))"""
        return torch.empty(rows, sum(widths), device=self.device)

    def _recv(self, rows: int, widths: tuple[int, int], src: int) -> Tensor:
        message = self._buffer(rows, widths)
        return self.comm.recv(message, src) if rows else message  # both sides skip empty units

    # -- a pass -------------------------------------------------------------------------

    def run_pass(self, units: list[_Unit], step: int = 0) -> float:
        """Forward and backward of every unit under the configured schedule; returns the loss
        on the last stage (0.0 elsewhere). Parameter gradients accumulate in ``.grad``, this
        rank's share only: :meth:`reduce_gradients` sums them over the ranks that share them.
        ``step`` (the epoch) seeds the input layers' dropout when h0 is recomputed."""
        program = SCHEDULES[self.cfg.schedule](self.stage, self.num_stages, len(units))
        stage = _GraphStage(self, units, step)
        loss, self.last_pass = interpret(program, stage, self.comm, prev_rank=self.prev_rank, next_rank=self.next_rank)
        return loss

    def halo_rows(self) -> int:
        """Halo nodes of this rank's part in the stage's G-part cut (0 with G = 1)."""
        return self._halo_rows

    def stage_parameters(self) -> list[nn.Parameter]:
        """Parameters only this stage uses (the replicated input layers are not among them)."""
        return [p for layer in self.layers for p in layer.parameters()]

    def reduce_gradients(self) -> None:
        """Sum this stage's parameter gradients over its graph-parallel ranks (no-op with G = 1),
        and the replicated input layers' gradients over every rank."""
        all_reduce_gradients(self.stage_parameters(), self.group, average=False)
        if self.prefix_layers:
            all_reduce_gradients([p for layer in self.prefix_layers for p in layer.parameters()], self.comm, average=False)

    # -- the executor protocol -----------------------------------------------------------

    def steps_per_epoch(self) -> int:
        return 1

    def epoch(self, epoch: int, start: int) -> Iterator[FullGraphStep]:
        if start == 0:
            yield FullGraphStep(epoch)

    def _synchronous(self, epoch: int) -> bool:
        if not self.cfg.history or self._last_sync < 0:
            return True
        return self.cfg.sync_every > 0 and epoch - self._last_sync >= self.cfg.sync_every

    def forward_backward(self, batch: FullGraphStep, scale: float) -> StepOutput:
        if scale != 1.0:
            raise ConfigError("layer_pipeline runs one pass per step; it takes no gradient accumulation (train.grad_accum: 1)")
        epoch = batch.epoch
        synchronous = self._synchronous(epoch)
        self.model.train()
        loss = self.run_pass([self.whole] if synchronous else self.chunks, step=epoch)
        if synchronous:
            self._last_sync = epoch
        last = self.stage == self.num_stages - 1
        return StepOutput(loss=loss, samples=len(self.whole.train) if last else 0)

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        assert self.optimizer is not None, "a layer_pipeline executor built without an optimizer only evaluates"
        self.reduce_gradients()
        self.optimizer.step()

    def stats(self) -> ExecutorStats:
        return ExecutorStats(bubble_ratio=self.last_pass.bubble_ratio)

    def close(self) -> None:
        pass

    @torch.no_grad()
    def logits(self) -> Tensor | None:
        """Forward of this rank's whole part through all stages, without touching history;
        logits of the part's nodes on the last stage.  (num_part_nodes, num_classes)"""
        self.model.eval()
        received = None if self.prev_rank is None else self._recv(self.whole.rows, self.in_width, self.prev_rank)
        h, h0 = self._input(self.whole, received)
        h, h0 = self._stage_forward(self.whole, h, h0, record=False)
        if self.next_rank is not None:
            if self.whole.rows:
                self.comm.send(self._pack(h, h0), self.next_rank)
            return None
        return h

    def evaluate(self) -> dict[str, float]:
        logits = self.logits()
        names = [name for name, size in self.split_sizes.items() if size]
        loss_sums, correct = [], []
        for name in names:
            if logits is None:  # not the last stage: it adds nothing to the sums
                loss_sums.append(0.0)
                correct.append(0.0)
                continue
            pos = self.splits[name]
            sums = score_sums(logits[pos], self.label[self.whole.dst_ids[pos]])
            loss_sums.append(sums[0])
            correct.append(sums[1])
        return split_scores(names, loss_sums, correct, self.split_sizes, self.comm)


@dataclass
class _GraphStage:
    """This rank's stage over one pass's units, as the pipeline interpreter sees it: a message
    is one tensor, h packed with h0 when h0 travels, and an empty unit's is empty (not sent)."""

    executor: LayerPipelineExecutor
    units: list[_Unit]
    step: int

    def activation_buffers(self, chunk: int) -> list[Tensor]:
        return [self.executor._buffer(self.units[chunk].rows, self.executor.in_width)]

    def forward(self, chunk: int, inputs: list[Tensor] | None) -> Tensor | Sequence[Tensor]:
        executor, unit = self.executor, self.units[chunk]
        h, h0 = executor._input(unit, None if inputs is None else inputs[0], self.step, chunk)
        h, h0 = executor._stage_forward(unit, h, h0, record=True)
        if executor.stage == executor.num_stages - 1:
            return executor._loss(unit, h)
        return [executor._pack(h, h0)]

    def grad_buffers(self, chunk: int) -> list[Tensor]:
        return [self.executor._buffer(self.units[chunk].rows, self.executor.out_width)]


def build(ctx: BuildContext) -> LayerPipelineExecutor:
    """``pipeline.stages`` stages (0 = one per process) of layers split by the cost model; with
    fewer stages than processes, each stage graph-parallel over G = processes / stages ranks on
    a G-part cut by ``pipeline.part_method``. Chunks are cut inside each part by
    ``pipeline.chunk_method``. Rank 0 cuts, every rank gets its answer."""
    cfg, pipeline, comm, model = ctx.train, ctx.pipeline, ctx.comm, ctx.model
    data = ctx.load_data()
    layout = PipelineLayout.of(pipeline.stages, comm.world_size)
    indptr, indices = graph_arrays(graph_block(data.graph))
    num_nodes = len(indptr) - 1
    if pipeline.chunks > num_nodes // layout.groups:
        raise ConfigError(
            f"pipeline.chunks is {pipeline.chunks} but each of the {layout.groups} parts has about "
            f"{num_nodes // layout.groups} nodes; use fewer chunks"
        )
    stages = assign_stages(model, layout.stages, data.feat.shape[1], num_nodes, len(indices))
    cuts = torch.empty(2, num_nodes, dtype=torch.int64)
    if comm.rank == 0:
        part_of = np.zeros(num_nodes, dtype=np.int64)
        if layout.groups > 1:
            part_of = assign((indptr, indices), layout.groups, cfg.seed, method=pipeline.part_method).astype(np.int64)
        chunk_of = chunks_within_parts(
            indptr, indices, part_of, pipeline.chunks, lambda sub, k: assign(sub, k, cfg.seed, method=pipeline.chunk_method)
        )
        cuts = torch.from_numpy(np.stack([part_of, chunk_of]))
    part_of, chunk_of = comm.broadcast(cuts, 0).numpy()
    return LayerPipelineExecutor(
        model, data, comm, stages=stages, chunk_of=chunk_of, part_of=part_of, cfg=pipeline,
        device=ctx.device, seed=cfg.seed, optimizer=ctx.optimizer,
    )
