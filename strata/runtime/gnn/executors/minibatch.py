"""Data-parallel training: every rank holds the model, trains on its own seed nodes, and the
gradients are averaged over all ranks before each optimizer step (DDP's arithmetic, with the
all-reduce going through the counted :class:`Comm`).

With one process this is plain training on whatever the batch source yields: the whole
graph ('full') or sampled mini-batches ('minibatch'). With several, each rank takes a
balanced share of the training nodes, so every rank makes the same number of steps, and
evaluation is sharded too: each rank scores its share of every split on full neighbourhoods
(global degrees), and the sums are all-reduced.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from strata.graph.block import Block
from strata.models.gnn import LayeredModel
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import all_reduce_gradients, broadcast_parameters
from strata.runtime.gnn import evaluation
from strata.runtime.gnn.batches import Batch, BatchSource, FeatureOptions, FullGraphBatches, make_batches
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.device_feed import DeviceFeed, placed
from strata.runtime.gnn.executors.base import BuildContext, score_sums, split_scores
from strata.runtime.gnn.executors.blocks import full_neighbourhood_blocks, graph_block
from strata.runtime.loop import ExecutorStats, StepOutput

EVAL_CHUNK = 8192
"""Seed nodes per evaluation forward pass on sampled full neighbourhoods."""


def balanced_share(ids: Tensor, rank: int, world_size: int, seed: int) -> Tensor:
    """Rank ``rank``'s share of ``ids``: a seeded shuffle cut round-robin, padded by repeating
    its head so that every share has the same size (one process: ``ids`` unchanged)."""
    if world_size == 1:
        return ids
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    padding = (-len(order)) % world_size
    order = torch.cat([order, order[:padding]])
    return order[rank::world_size].sort().values


def rank_data(data: NodeData, rank: int, world_size: int, seed: int) -> NodeData:
    """``data`` with its training split cut down to this rank's share."""
    share = balanced_share(data.splits["train"], rank, world_size, seed)
    return dataclasses.replace(data, splits={**data.splits, "train": share})


@torch.no_grad()
def evaluate_full_graph(model: LayeredModel, data: NodeData, graph: Block | None = None) -> dict[str, float]:
    """Loss and accuracy of every split, from one full-graph forward pass over ``graph``
    (``data``'s graph as a Block, on the model's device; built here when not given)."""
    model.eval()
    graph = graph_block(data.graph).with_int64_indices() if graph is None else graph
    logits = model(graph, data.feat.to(graph.device)).float().cpu()  # (num_nodes, num_classes)
    out = {}
    for name, ids in data.splits.items():
        if len(ids) == 0:
            continue
        label = data.label[ids].to(torch.int64)
        out[f"{name}_loss"] = float(F.cross_entropy(logits[ids], label))
        out[f"{name}_acc"] = float((logits[ids].argmax(1) == label).float().mean())
    return out


class DataParallelExecutor:
    """Steps over a batch source, gradients averaged over ranks."""

    def __init__(
        self, name: str, model: LayeredModel, data: NodeData, batches: BatchSource, comm: Comm,
        optimizer: torch.optim.Optimizer, *, device: str = "cpu",
    ) -> None:
        self.name = name
        self.model = model.to(device)
        self.data = data
        self.batches = batches
        self.comm = comm
        self.optimizer = optimizer
        self.device = device
        self._whole: Block | None = batches.graph if isinstance(batches, FullGraphBatches) else None
        """The whole graph on the host: the full-graph steps' Block, else taken from ``data`` on first use."""
        self._graph: Block | None = None
        self.feed = DeviceFeed(torch.device(device))
        """Sampled batches to the device, each copied while the one before it trains."""
        broadcast_parameters(self.model, comm)

    @property
    def whole(self) -> Block:
        """The whole graph on the host (possibly compact: int32 indices, for sampling)."""
        if self._whole is None:
            self._whole = graph_block(self.data.graph)
        return self._whole

    @property
    def graph(self) -> Block:
        """The whole graph on the device with int64 indices, for full-graph steps and the
        full-graph evaluation: built and moved on first use, then kept, so kernels derive their
        structures once. A run that only samples (a packed run scored by the sampled
        evaluation) never builds it: no int64 copy of a compact graph, nothing moved to a GPU."""
        if self._graph is None:
            self._graph = self.whole.with_int64_indices().to(self.device)
        return self._graph

    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch()

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        batches = self.batches.epoch(epoch, start)
        return batches if isinstance(self.batches, FullGraphBatches) else self.feed(batches)

    def forward_backward(self, batch: Batch, scale: float) -> StepOutput:
        self.model.train()
        batch = placed(batch, self.device)  # a staged batch that came by another way than the feed
        graphs = batch.graphs
        if isinstance(graphs, list):
            graphs = [b.to(self.device) for b in graphs]
        else:
            graphs = self.graph if graphs is self._whole else graphs.to(self.device)  # a full-graph step: the one kept
        logits = self.model(graphs, batch.x.to(self.device))
        loss = F.cross_entropy(logits[batch.seeds].float(), batch.y.to(self.device))
        (loss * scale).backward()
        return StepOutput(loss=loss.item() * scale / self.comm.world_size, samples=len(batch.seeds))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        all_reduce_gradients(self.model.parameters(), self.comm, average=True)
        self.optimizer.step()

    def stats(self) -> ExecutorStats:
        counters = getattr(self.batches, "counters", None)
        if counters is None:
            return ExecutorStats()
        return ExecutorStats(cache_hits=counters.cache_hits(), storage_read_bytes=counters.storage_read_bytes)

    def evaluate(self) -> dict[str, float]:
        if self.comm.world_size == 1:
            return evaluate_full_graph(self.model, self.data, self.graph)
        return self._evaluate_sharded()

    def close(self) -> None:
        self.batches.close()

    @torch.no_grad()
    def _evaluate_sharded(self) -> dict[str, float]:
        self.model.eval()
        names = [name for name, ids in self.data.splits.items() if len(ids) > 0]
        loss_sums, correct = [], []
        for name in names:
            mine = self.data.splits[name][self.comm.rank :: self.comm.world_size]
            loss_sum, right = 0.0, 0.0
            for start in range(0, len(mine), EVAL_CHUNK):
                sums = score_sums(*self._logits(mine[start : start + EVAL_CHUNK]))
                loss_sum, right = loss_sum + sums[0], right + sums[1]
            loss_sums.append(loss_sum)
            correct.append(right)
        sizes = {name: len(self.data.splits[name]) for name in names}
        return split_scores(names, loss_sums, correct, sizes, self.comm)

    def _logits(self, seeds: Tensor) -> tuple[Tensor, Tensor]:
        """Exact logits of ``seeds`` from their full L-hop neighbourhood.  (len(seeds), classes)"""
        input_nodes, blocks = full_neighbourhood_blocks(self.whole, seeds, self.model.num_graph_layers)
        x = self.data.feat[input_nodes]
        logits = self.model([b.to(self.device) for b in blocks], x.to(self.device))
        return logits, self.data.label[seeds].to(self.device, torch.int64)


def build(ctx: BuildContext) -> DataParallelExecutor:
    """'full' (one process, the whole graph each step) and 'minibatch' (sampled mini-batches,
    data parallel): each rank samples its micro-batches from its balanced share of the
    training nodes, ceil(batch_size / processes / grad_accum) seeds each; evaluation sees all
    of the data."""
    cfg, comm = ctx.train, ctx.comm
    data = ctx.load_data()
    if evaluation.sampled(cfg, ctx.features):
        evaluation.keep_scored_nodes(data, cfg)  # before rank_data shares the splits out
    options = FeatureOptions.of_job(ctx.features, ctx.data_cfg, ctx.model.self_loops)
    if options is not None:
        options.device = torch.device(ctx.device)  # a GPU's device tier holds the hottest rows
    micro = math.ceil(cfg.batch_size / comm.world_size / cfg.grad_accum)
    rank_cfg = dataclasses.replace(cfg, batch_size=micro)
    batches = make_batches(rank_data(data, comm.rank, comm.world_size, cfg.seed), rank_cfg, ctx.model.num_graph_layers, options)
    return DataParallelExecutor(cfg.executor, ctx.model, data, batches, comm, ctx.optimizer, device=ctx.device)
