"""Where training batches come from: the whole graph, or neighbour-sampled mini-batches.

A batch source yields the steps of one epoch, starting at a given step, and depends only on
(seed, epoch, step), so a resumed run sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

from strata._dgl import dgl
from strata.errors import ConfigError
from strata.runtime.data import NodeData

if TYPE_CHECKING:
    from strata.runtime.trainer import TrainConfig

SHUFFLE, SAMPLE = 0, 1


def step_seed(seed: int, purpose: int, epoch: int, step: int = 0) -> int:
    """A seed for one ``purpose`` (SHUFFLE, SAMPLE) that depends only on (seed, epoch, step)."""
    # DGL takes seeds below 2**31.
    return int(np.random.SeedSequence([seed, purpose, epoch, step]).generate_state(1, dtype=np.uint32)[0] >> 1)


# -- batches -------------------------------------------------------------------------------


@dataclass
class Batch:
    graphs: object
    """The full graph, or one sampled block per graph layer."""
    x: Tensor
    """Input features of the graphs' source nodes."""
    seeds: Tensor
    """Output rows whose loss counts."""
    y: Tensor


class BatchSource(Protocol):
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]: ...


class FullGraphBatches:
    """One batch per epoch: the whole graph, loss over the training nodes."""

    def __init__(self, data: NodeData) -> None:
        self.data = data
        self.train = data.splits["train"]

    def steps_per_epoch(self) -> int:
        return 1

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        if start == 0:
            yield Batch(self.data.graph, self.data.feat, self.train, self.data.label[self.train])


class SampledBatches:
    """Shuffled seed batches with neighbour-sampled blocks; deterministic per (seed, epoch, step)."""

    def __init__(self, data: NodeData, cfg: "TrainConfig", num_graph_layers: int) -> None:
        if len(cfg.fanouts) != num_graph_layers:
            raise ConfigError(
                f"train.fanouts has {len(cfg.fanouts)} entries but the model has {num_graph_layers} graph layers"
            )
        self.data = data
        self.cfg = cfg
        self.train = data.splits["train"]
        self.sampler = dgl.dataloading.NeighborSampler(list(cfg.fanouts))

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.cfg.batch_size)

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(step_seed(self.cfg.seed, SHUFFLE, epoch))
        order = self.train[torch.randperm(len(self.train), generator=generator)]
        for step in range(start, self.steps_per_epoch()):
            seeds = order[step * self.cfg.batch_size : (step + 1) * self.cfg.batch_size]
            dgl.seed(step_seed(self.cfg.seed, SAMPLE, epoch, step))
            input_nodes, output_nodes, blocks = self.sampler.sample_blocks(self.data.graph, seeds)
            yield Batch(blocks, self.data.feat[input_nodes], torch.arange(len(output_nodes)), self.data.label[output_nodes])



def make_batches(data: NodeData, cfg: "TrainConfig", num_graph_layers: int) -> BatchSource:
    """The batch source ``cfg.mode`` asks for."""
    if cfg.mode == "full":
        return FullGraphBatches(data)
    return SampledBatches(data, cfg, num_graph_layers)
