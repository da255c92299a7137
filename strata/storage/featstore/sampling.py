"""Deterministic neighbour sampling, shared by online training and the offline packer.

A mini-batch is a pure function of (seed, epoch, step): the seed order of an epoch comes from
``step_seed(seed, SHUFFLE, epoch, 0)`` (a numpy generator) and the neighbours of step ``s``
from a ``torch.Generator`` seeded with ``step_seed(seed, SAMPLE, epoch, s)``
(:func:`strata.storage.seeds.step_seed`), drawn by strata's torch sampler
(:class:`strata.graph.sampler.TorchSampler`, on the CPU). DGL's own neighbour sampler is not
used here: its thread-local generators are seeded with ``seed + a per-process thread
counter``, so with more than one OpenMP thread (or from a prefetch thread, or in another
process such as ``strata pack``) the same seed gives different neighbours.

A sampled batch is stored as numpy arrays (:class:`SampledBatch`) so the packer can write
it and the reader rebuild exactly the same blocks. Node ids nest: the source nodes of every
block are a prefix of ``input_nodes``, and its destination nodes are the first ``num_dst``
of its sources (the DGL block convention), so one id array serves all layers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from strata.errors import ConfigError
from strata.graph.block import Block
from strata.graph.sampler import SampledBlocks, TorchSampler
from strata.storage.seeds import step_seed

SHUFFLE, SAMPLE = 0, 1
SAMPLER_VERSION = "strata-uniform-v2"
"""Names the sampling algorithm; part of a pack's fingerprint, bumped whenever results change
(v2: torch's generator and first-appearance order of new nodes; v1 packs are refused)."""


@dataclass
class SamplerConfig:
    """What decides the batches of a run: every field changes which nodes a step sees."""

    fanouts: list[int]
    """Neighbours sampled per node at each layer, input layer first; -1 takes all."""
    batch_size: int
    """Seed nodes per mini-batch."""
    seed: int = 0
    """Seed of shuffling and sampling."""
    self_loops: bool = False
    """Whether the graph gets exactly one self loop per node before sampling (GCN, GAT)."""

    def __post_init__(self) -> None:
        self.fanouts = [int(f) for f in self.fanouts]
        if not self.fanouts or any(f < 1 and f != -1 for f in self.fanouts):
            raise ConfigError(f"fanouts must be a non-empty list of positive ints (or -1 for all), got {self.fanouts}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def max_input_rows(self, num_nodes: int) -> int:
        """An upper bound on the input nodes of one batch."""
        rows = self.batch_size
        for f in self.fanouts:
            rows = num_nodes if f < 0 else rows * (1 + f)
        return min(rows, num_nodes)


# -- seeds of an epoch -----------------------------------------------------------------------


@dataclass
class EpochPlan:
    """Which seed nodes each step of an epoch trains on."""

    train_ids: np.ndarray
    batch_size: int
    seed: int

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_ids) / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The training seeds of ``epoch`` in the order they are visited."""
        rng = np.random.default_rng(step_seed(self.seed, SHUFFLE, epoch, 0))
        return self.train_ids[rng.permutation(len(self.train_ids))]

    def seeds(self, order: np.ndarray, step: int) -> np.ndarray:
        return order[step * self.batch_size : (step + 1) * self.batch_size]


def train_ids_checksum(train_ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(train_ids, dtype="<i8").tobytes(), digest_size=16).hexdigest()


# -- one sampled batch -----------------------------------------------------------------------


@dataclass
class BlockCSC:
    """One sampled block: in-edges of its ``num_dst`` destinations, as local source ids."""

    num_src: int
    num_dst: int
    indptr: np.ndarray
    """(num_dst + 1,) offsets into ``indices``."""
    indices: np.ndarray
    """(num_edges,) local source ids in [0, num_src)."""


@dataclass
class SampledBatch:
    """The sampled neighbourhood of one step, as numpy arrays: everything needed to rebuild its blocks."""

    input_nodes: np.ndarray
    """Global ids of the first block's source nodes; every block's nodes are a prefix of these."""
    layers: list[BlockCSC] = field(default_factory=list)
    """One block per graph layer, input layer first."""

    @property
    def output_nodes(self) -> np.ndarray:
        return self.input_nodes[: self.layers[-1].num_dst]

    @classmethod
    def from_blocks(cls, sampled: SampledBlocks) -> SampledBatch:
        """The numpy arrays of a sampler's CPU Blocks (shared, not copied)."""
        layers = [BlockCSC(b.num_src, b.num_dst, b.indptr.numpy(), b.indices.numpy()) for b in sampled.blocks]
        return cls(input_nodes=sampled.input_nodes.numpy(), layers=layers)

    def to_graph_blocks(self) -> list[Block]:
        """strata Blocks (CSC tensors sharing these arrays' memory; ``src_ids`` and ``dst_ids``
        prefixes of ``input_nodes``), input layer first."""
        ids = torch.from_numpy(np.ascontiguousarray(self.input_nodes, dtype=np.int64))
        return [
            Block(torch.from_numpy(np.ascontiguousarray(layer.indptr, dtype=np.int64)),
                  torch.from_numpy(np.ascontiguousarray(layer.indices, dtype=np.int64)),
                  layer.num_src, layer.num_dst, src_ids=ids[: layer.num_src], dst_ids=ids[: layer.num_dst])
            for layer in self.layers
        ]

    def to_blocks(self) -> list[object]:
        """DGL blocks with ``dgl.NID`` set on source and destination nodes."""
        from strata._dgl import dgl

        ids = torch.from_numpy(np.ascontiguousarray(self.input_nodes, dtype=np.int64))
        no_eids = torch.empty(0, dtype=torch.int64)
        blocks = []
        for layer in self.layers:
            csc = (
                torch.from_numpy(np.ascontiguousarray(layer.indptr, dtype=np.int64)),
                torch.from_numpy(np.ascontiguousarray(layer.indices, dtype=np.int64)),
                no_eids,
            )
            block = dgl.create_block(("csc", csc), num_src_nodes=layer.num_src, num_dst_nodes=layer.num_dst)
            block.srcdata[dgl.NID] = ids[: layer.num_src]
            block.dstdata[dgl.NID] = ids[: layer.num_dst]
            blocks.append(block)
        return blocks


class NeighbourSampler:
    """Uniform neighbour sampling without replacement over a CSC graph, numpy in and out.

    The sampling is :class:`strata.graph.sampler.TorchSampler`'s (vectorised torch; Floyd's
    algorithm for nodes with more in-edges than the fanout, so hubs cost no more than anyone
    else; the chosen edges keep their CSC order); this class keeps the numpy arrays of
    :class:`SampledBatch` that the packer writes. New source nodes follow the destinations in
    the order they first appear among the sampled edges. ``indices`` may be int32 (4 bytes an
    edge, :func:`strata.storage.compact.compact_csc`): the batches are the same, bit for bit.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, fanouts: list[int]) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        indices = np.asarray(indices)
        # int32 ids (a graph under 2**31 nodes, see strata.storage.compact) are walked as they are: same neighbours
        self.indices = indices if indices.dtype == np.int32 else indices.astype(np.int64, copy=False)
        self.fanouts = list(fanouts)
        self.sampler = TorchSampler(self.indptr, self.indices, self.fanouts)  # shares the arrays' memory

    def sample(self, seeds: np.ndarray, rng: torch.Generator | np.random.Generator) -> SampledBatch:
        """The batch of ``seeds``, drawing from ``rng`` (a numpy generator seeds a torch one)."""
        if isinstance(rng, np.random.Generator):
            rng = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        sampled = self.sampler.sample(torch.from_numpy(np.ascontiguousarray(seeds, dtype=np.int64)), rng)
        return SampledBatch.from_blocks(sampled)


def sample_step(sampler: NeighbourSampler, plan: EpochPlan, order: np.ndarray, epoch: int, step: int) -> SampledBatch:
    """The batch of (plan.seed, epoch, step), given the epoch's seed ``order``."""
    generator = torch.Generator().manual_seed(step_seed(plan.seed, SAMPLE, epoch, step))
    return sampler.sample(plan.seeds(order, step), generator)

