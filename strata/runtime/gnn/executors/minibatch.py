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
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from strata._dgl import dgl
from strata.models.gnn import LayeredModel
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import all_reduce_gradients, broadcast_parameters
from strata.runtime.gnn.batches import BatchSource
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.executors.base import StepResult

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
def evaluate_full_graph(model: LayeredModel, data: NodeData) -> dict[str, float]:
    """Loss and accuracy of every split, from one full-graph forward pass."""
    model.eval()
    logits = model(data.graph, data.feat)
    out = {}
    for name, ids in data.splits.items():
        if len(ids) == 0:
            continue
        out[f"{name}_loss"] = float(F.cross_entropy(logits[ids], data.label[ids]))
        out[f"{name}_acc"] = float((logits[ids].argmax(1) == data.label[ids]).float().mean())
    return out


class DataParallelExecutor:
    """Steps over a batch source, gradients averaged over ranks."""

    def __init__(
        self, name: str, model: LayeredModel, data: NodeData, batches: BatchSource, comm: Comm, *, device: str = "cpu"
    ) -> None:
        self.name = name
        self.model = model.to(device)
        self.data = data
        self.batches = batches
        self.comm = comm
        self.device = device
        broadcast_parameters(self.model, comm)
        if comm.world_size > 1:
            graph = data.graph
            self._in_deg = graph.in_degrees()  # type: ignore[attr-defined]
            self._out_deg = graph.out_degrees()  # type: ignore[attr-defined]
            self._sampler = dgl.dataloading.MultiLayerFullNeighborSampler(model.num_graph_layers)

    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch()

    def epoch(self, epoch: int, start: int) -> Iterator[object]:
        return self.batches.epoch(epoch, start)

    def train_step(self, batch: object, optimizer: torch.optim.Optimizer) -> StepResult:
        self.model.train()
        graphs = batch.graphs  # type: ignore[attr-defined]
        graphs = [b.to(self.device) for b in graphs] if isinstance(graphs, list) else graphs.to(self.device)
        logits = self.model(graphs, batch.x.to(self.device))  # type: ignore[attr-defined]
        loss = F.cross_entropy(logits[batch.seeds], batch.y.to(self.device))  # type: ignore[attr-defined]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(self.model.parameters(), self.comm, average=True)
        optimizer.step()
        value = loss.item()
        if self.comm.world_size > 1:
            (value,) = self.comm.sum_floats([value / self.comm.world_size])
        return StepResult(loss=value, samples=len(batch.seeds))  # type: ignore[attr-defined]

    def evaluate(self) -> dict[str, float]:
        if self.comm.world_size == 1:
            return evaluate_full_graph(self.model, self.data)
        return self._evaluate_sharded()

    @torch.no_grad()
    def _evaluate_sharded(self) -> dict[str, float]:
        self.model.eval()
        names = [name for name, ids in self.data.splits.items() if len(ids) > 0]
        sums = []
        for name in names:
            ids = self.data.splits[name]
            mine = ids[self.comm.rank :: self.comm.world_size]
            loss_sum, correct = 0.0, 0.0
            for start in range(0, len(mine), EVAL_CHUNK):
                logits, label = self._logits(mine[start : start + EVAL_CHUNK])
                loss_sum += float(F.cross_entropy(logits, label, reduction="sum"))
                correct += float((logits.argmax(1) == label).sum())
            sums += [loss_sum, correct]
        totals = self.comm.sum_floats(sums)
        out = {}
        for i, name in enumerate(names):
            size = len(self.data.splits[name])
            out[f"{name}_loss"] = totals[2 * i] / size
            out[f"{name}_acc"] = totals[2 * i + 1] / size
        return out

    def _logits(self, seeds: Tensor) -> tuple[Tensor, Tensor]:
        """Exact logits of ``seeds`` from their full L-hop neighbourhood.  (len(seeds), classes)"""
        _, output_nodes, blocks = self._sampler.sample_blocks(self.data.graph, seeds)
        for block in blocks:
            # Sampled blocks see only their own edges; the model must see the graph's degrees.
            block.srcdata["out_deg"] = self._out_deg[block.srcdata[dgl.NID]]
            block.dstdata["in_deg"] = self._in_deg[block.dstdata[dgl.NID]]
        x = self.data.feat[blocks[0].srcdata[dgl.NID]]
        logits = self.model([b.to(self.device) for b in blocks], x.to(self.device))
        return logits, self.data.label[output_nodes].to(self.device)
