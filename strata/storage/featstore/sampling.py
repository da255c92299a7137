"""Deterministic neighbour sampling, shared by online training and the offline packer.

A mini-batch is a pure function of (seed, epoch, step): the seed order of an epoch comes from
``step_seed(seed, SHUFFLE, epoch, 0)`` and the neighbours of step ``s`` from
``step_seed(seed, SAMPLE, epoch, s)`` (:func:`strata.storage.seeds.step_seed`), both through
numpy generators. DGL's own neighbour sampler is not used here: its thread-local generators
are seeded with ``seed + a per-process thread counter``, so with more than one OpenMP thread
(or from a prefetch thread, or in another process such as ``strata pack``) the same seed gives
different neighbours. DGL still builds the blocks (``dgl.create_block``), from the arrays
sampled here.

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

from strata._dgl import dgl
from strata.errors import ConfigError
from strata.graph.csc import edge_ranges
from strata.storage.seeds import step_seed

SHUFFLE, SAMPLE = 0, 1
SAMPLER_VERSION = "strata-uniform-v1"
"""Names the sampling algorithm; part of a pack's fingerprint, bumped whenever results change."""


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
    """The sampled neighbourhood of one step; everything needed to rebuild its DGL blocks."""

    input_nodes: np.ndarray
    """Global ids of the first block's source nodes; every block's nodes are a prefix of these."""
    layers: list[BlockCSC] = field(default_factory=list)
    """One block per graph layer, input layer first."""

    @property
    def output_nodes(self) -> np.ndarray:
        return self.input_nodes[: self.layers[-1].num_dst]

    def to_blocks(self) -> list[object]:
        """DGL blocks with ``dgl.NID`` set on source and destination nodes."""
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
    """Uniform neighbour sampling without replacement over a CSC graph, all in numpy.

    For each destination with more in-edges than the fanout, ``fanout`` distinct edges are
    drawn with Floyd's algorithm (O(fanout^2) per node, whatever its degree, so hubs cost no
    more than anyone else); the chosen edges keep their CSC order. New source nodes follow
    the destinations in ascending id order, which also makes feature reads more sequential.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, fanouts: list[int]) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.fanouts = list(fanouts)

    def sample(self, seeds: np.ndarray, rng: np.random.Generator) -> SampledBatch:
        nodes = np.asarray(seeds, dtype=np.int64)
        layers: list[BlockCSC] = []
        for fanout in reversed(self.fanouts):
            block, nodes = self._sample_layer(nodes, fanout, rng)
            layers.insert(0, block)
        return SampledBatch(input_nodes=nodes, layers=layers)

    def _sample_layer(self, dst: np.ndarray, fanout: int, rng: np.random.Generator) -> tuple[BlockCSC, np.ndarray]:
        starts = self.indptr[dst]
        deg = self.indptr[dst + 1] - starts
        take = deg if fanout < 0 else np.minimum(deg, fanout)
        out_indptr = np.zeros(len(dst) + 1, dtype=np.int64)
        np.cumsum(take, out=out_indptr[1:])
        edge_pos = np.empty(out_indptr[-1], dtype=np.int64)  # (num_edges,) positions in self.indices

        whole = take == deg  # every in-edge taken, in CSC order
        edge_pos[edge_ranges(out_indptr, np.flatnonzero(whole))[1]] = edge_ranges(self.indptr, dst[whole])[1]
        if not whole.all():
            picked = _floyd_sample(deg[~whole], fanout, rng)  # (num_big, fanout), sorted per row
            target = out_indptr[:-1][~whole][:, None] + np.arange(fanout)
            edge_pos[target] = picked + starts[~whole][:, None]

        src_global = self.indices[edge_pos]
        new = np.setdiff1d(src_global, dst)  # sorted, unique, not already a destination
        src_nodes = np.concatenate([dst, new])
        by_id = np.argsort(src_nodes, kind="stable")
        local_src = by_id[np.searchsorted(src_nodes[by_id], src_global)]
        block = BlockCSC(num_src=len(src_nodes), num_dst=len(dst), indptr=out_indptr, indices=local_src)
        return block, src_nodes


def _floyd_sample(deg: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """For each row, ``k`` distinct positions in [0, deg) chosen uniformly, sorted; needs deg > k."""
    chosen = np.empty((len(deg), k), dtype=np.int64)
    for i in range(k):
        upper = deg - k + i  # Floyd: j runs over deg-k .. deg-1
        t = rng.integers(0, upper + 1)
        seen = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(seen, upper, t)
    chosen.sort(axis=1)
    return chosen


def sample_step(sampler: NeighbourSampler, plan: EpochPlan, order: np.ndarray, epoch: int, step: int) -> SampledBatch:
    """The batch of (plan.seed, epoch, step), given the epoch's seed ``order``."""
    rng = np.random.default_rng(step_seed(plan.seed, SAMPLE, epoch, step))
    return sampler.sample(plan.seeds(order, step), rng)

