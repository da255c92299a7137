"""Graph-parallel full-graph training: each rank owns one part of the nodes.

Every rank holds the in-edges of its owned nodes and the 1-hop halo those edges reach.
Before each graph layer it fetches the halo nodes' current inputs from their owners (one
all_to_all; the backward pass returns the halo gradients the same way), then runs the layer
on its local block to get its owned nodes' outputs. Blocks carry the global degrees, so with
dropout off the loss and parameter gradients, all-reduced, equal single-process full-graph
training up to float rounding. A rank holds only its share of the data set
(:class:`strata.runtime.gnn.part_data.PartData`: its owned nodes' features and labels, its
nodes' degrees), read straight from a stored partition or cut from a data set in memory.

Per step and graph layer l whose input has width d_l, the all_to_all volume over all ranks
is num_halo_total * d_l * bytes forward, and the same again backward when the input needs
gradients. The raw features of the first layer never change: their halo is fetched once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from strata.errors import ConfigError
from strata.models.gnn import LayeredModel
from strata.partitioners.assign import assign
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import all_reduce_gradients, broadcast_parameters
from strata.runtime.gnn.executors.base import (
    BuildContext,
    FullGraphStep,
    score_sums,
    split_scores,
)
from strata.runtime.gnn.executors.blocks import csc_block, graph_arrays, graph_block
from strata.runtime.gnn.executors.halo_exchange import exchange_halo
from strata.runtime.gnn.executors.partition import LocalPartition, local_partition
from strata.runtime.gnn.part_data import PartData, load_part, part_data_in_memory
from strata.runtime.loop import ExecutorStats, StepOutput


class GraphParallelExecutor:
    """Full-graph training over ``comm.world_size`` parts, one per rank."""

    name = "graph_parallel"

    def __init__(
        self, model: LayeredModel, data: PartData, part: LocalPartition, comm: Comm,
        optimizer: torch.optim.Optimizer | None = None, *, device: str = "cpu",
    ) -> None:
        if part.num_parts != comm.world_size or part.rank != comm.rank:
            raise ConfigError(
                f"rank {comm.rank} of {comm.world_size} got part {part.rank} of {part.num_parts}: "
                "graph_parallel needs one part per process"
            )
        if data.split_sizes.get("train", 0) == 0:
            raise ConfigError("graph_parallel: the data set has no training nodes")
        if data.feat.shape[0] != part.num_owned or len(data.out_deg) != part.num_owned + part.num_halo:
            raise ConfigError(
                f"graph_parallel: rank {comm.rank} owns {part.num_owned} nodes with {part.num_halo} halo nodes, but its "
                f"data has {data.feat.shape[0]} feature rows and {len(data.out_deg)} degrees"
            )
        self.model = model.to(device)
        self.comm = comm
        self.optimizer = optimizer
        self.device = device
        self.part = part
        self.block = csc_block(part.indptr, part.indices, data.out_deg, data.in_deg).to(device)
        self.send_index = torch.from_numpy(self.part.send_index).to(device)
        self.x = data.feat.to(device)  # (num_owned, feat_dim)
        with torch.no_grad():
            self.x_with_halo = exchange_halo(self.x, self.send_index, self.part, comm)
        self.label = data.label.to(device)
        self.splits = {name: ids.to(device) for name, ids in data.splits.items()}
        self.split_sizes = dict(data.split_sizes)
        broadcast_parameters(self.model, comm)

    def forward(self) -> Tensor:
        """Logits of the owned nodes.  (num_owned, num_classes)"""
        h, h0 = self.x, None
        for layer in self.model.layers:
            if not layer.uses_graph:
                h, h0 = layer(None, h, h0)
                continue
            h_local = self.x_with_halo if h is self.x else exchange_halo(h, self.send_index, self.part, self.comm)
            h, h0 = layer(self.block, h_local, h0)
        return h

    def steps_per_epoch(self) -> int:
        return 1

    def epoch(self, epoch: int, start: int) -> Iterator[FullGraphStep]:
        if start == 0:
            yield FullGraphStep(epoch)

    def forward_backward(self, batch: FullGraphStep, scale: float) -> StepOutput:
        self.model.train()
        train = self.splits["train"]
        logits = self.forward()
        # The global mean is a sum of per-rank sums over one global count.
        loss = F.cross_entropy(logits[train].float(), self.label[train], reduction="sum") / self.split_sizes["train"]
        (loss * scale).backward()
        return StepOutput(loss=loss.item() * scale, samples=len(train))

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        assert self.optimizer is not None, "a graph_parallel executor built without an optimizer only evaluates"
        all_reduce_gradients(self.model.parameters(), self.comm, average=False)
        self.optimizer.step()

    def stats(self) -> ExecutorStats:
        return ExecutorStats()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        logits = self.forward()
        names = [name for name, size in self.split_sizes.items() if size > 0]
        sums = [score_sums(logits[self.splits[name]], self.label[self.splits[name]]) for name in names]
        return split_scores(names, [s[0] for s in sums], [s[1] for s in sums], self.split_sizes, self.comm)

    def close(self) -> None:
        pass

    def halo_rows(self) -> int:
        """Halo nodes of this rank: rows received per exchange."""
        return self.part.num_halo


def build(ctx: BuildContext) -> GraphParallelExecutor:
    """This rank's part: read with its share of the data from the store's partition
    ``train.partition`` (the data set is never loaded whole), or assigned in memory by
    ``train.partitioner`` (rank 0 assigns, every rank gets its answer)."""
    cfg, comm = ctx.train, ctx.comm
    if cfg.partition:
        part, share = load_part(ctx.data_cfg, cfg.partition, comm, self_loops=ctx.model.self_loops)
        return GraphParallelExecutor(ctx.model, share, part, comm, ctx.optimizer, device=ctx.device)
    data = ctx.load_data()
    graph = graph_block(data.graph)
    indptr, indices = graph_arrays(graph)
    num_nodes = len(indptr) - 1
    if comm.rank == 0:
        parts = torch.from_numpy(assign((indptr, indices), comm.world_size, cfg.seed, method=cfg.partitioner).astype(np.int64))
    else:
        parts = torch.empty(num_nodes, dtype=torch.int64)
    assignment = comm.broadcast(parts, 0).numpy()
    part = local_partition(indptr, indices, assignment, comm.rank, num_parts=comm.world_size)
    return GraphParallelExecutor(ctx.model, part_data_in_memory(data, part, graph), part, comm, ctx.optimizer, device=ctx.device)
