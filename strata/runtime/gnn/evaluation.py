"""Sampled evaluation: validation and test scores without the whole graph's features in memory.

Full-graph evaluation (:func:`strata.runtime.gnn.executors.minibatch.evaluate_full_graph`)
runs one forward pass over every node: the whole feature matrix and every node's hidden
activations at once, which a graph whose features outgrow the machine cannot afford. Here
each split is scored in batches of ``train.batch_size`` nodes whose neighbourhoods are sampled
with ``train.fanouts`` by the training sampler, the way minibatch training sees them:

* the nodes: every node of a split, or a seeded sample of ``train.eval_nodes`` of them, the
  same for the whole run;
* the neighbourhoods: drawn from ``step_seed(seed, EVAL, split, batch)``, the same at every
  evaluation, so scores of different epochs differ only by the weights;
* the features: the batches are taken in groups whose distinct input rows fit ``table_bytes``; a
  group's rows are read in one pass of sorted chunk runs from the store
  (:class:`strata.storage.rows.ChunkedRows`; from memory when the features are loaded), never
  row by row. When every group fits in one, the rows and batches are kept between
  evaluations and only the forward passes are repeated.

With several processes each rank scores every world-size-th batch and the sums are all-reduced.
Memory: the graph's CSC (which training holds already; int32 src ids below 2**31 nodes, see
:func:`strata.runtime.gnn.data.load_node_data`), ``table_bytes`` of rows, one
group's sampled batches and a byte a node to count their distinct inputs. With random node
ids every group's rows are spread over the whole feature array, so each group costs a read of
most of it: size ``train.eval_nodes`` and the host budget so that one group holds them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from strata.models.gnn import LayeredModel
from strata.runtime.dist.comm import Comm
from strata.runtime.gnn.batches import sampled_blocks
from strata.runtime.gnn.config import TrainConfig
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.executors.base import BuildContext, score_sums, split_scores
from strata.runtime.gnn.executors.blocks import graph_arrays, graph_block
from strata.storage import layout
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.sampling import NeighbourSampler, SampledBatch
from strata.storage.rows import ChunkedRows, normalize_rows
from strata.storage.seeds import step_seed
from strata.storage.sorted_unique import sorted_unique
from strata.storage.store import DatasetStore

EVAL = 2
"""``step_seed`` purpose of evaluation (training uses 0 to shuffle and 1 to sample)."""
SPLITS = ("train", "valid", "test")
MIN_TABLE_BYTES = 64 << 20


def sampled(cfg: TrainConfig, features: FeaturesConfig | None) -> bool:
    """Whether a run evaluates on sampled neighbourhoods (``train.eval``; 'auto': minibatch runs
    whose features come from the store)."""
    if cfg.eval != "auto":
        return cfg.eval == "sampled"
    return cfg.executor == "minibatch" and features is not None and features.mode in ("cached", "packed")


def eval_nodes(ids: np.ndarray, limit: int, seed: int, split: int) -> np.ndarray:
    """The nodes of a split that are scored, sorted: all of them (``ids`` itself where it is
    sorted already, as stores write splits: no second copy), or a seeded sample of ``limit``."""
    ids = np.asarray(ids, dtype=np.int64)
    if not limit or len(ids) <= limit:
        return ids if len(ids) < 2 or bool((ids[1:] >= ids[:-1]).all()) else np.sort(ids)
    rng = np.random.default_rng(step_seed(seed, EVAL, split))  # batches draw from (split, batch)
    return np.sort(ids[rng.choice(len(ids), size=limit, replace=False)])


@dataclass
class _Group:
    """Sampled batches whose input rows are read together: (split, batch, rows of its inputs in ``table``)."""

    batches: list[tuple[str, SampledBatch, np.ndarray]]
    table: torch.Tensor  # (unique input nodes, feat_dim)


class SampledEvaluation:
    """``<split>_loss`` and ``<split>_acc`` of every non-empty split on sampled neighbourhoods."""

    def __init__(self, model: LayeredModel, data: NodeData, sampler: NeighbourSampler, rows: Callable[[np.ndarray], np.ndarray],
                 *, batch_size: int, seed: int, max_nodes: int, row_bytes: int, table_bytes: int, comm: Comm,
                 device: str = "cpu", normalize: bool = False, progress: bool = False) -> None:
        self.model, self.data, self.sampler, self.rows = model, data, sampler, rows
        self.batch_size, self.seed, self.comm, self.device = int(batch_size), int(seed), comm, device
        self.normalize, self.progress = normalize, progress
        self.max_rows = max(1, int(table_bytes) // max(int(row_bytes), 1))
        self.nodes = {name: eval_nodes(np.asarray(data.splits[name]), max_nodes, seed, i)
                      for i, name in enumerate(SPLITS) if name in data.splits and len(data.splits[name])}
        self._kept: list[_Group] | None = None

    def _mine(self) -> list[tuple[str, int]]:
        """(split, batch) of every batch this rank scores: every world-size-th of all splits' batches."""
        every = [(name, b) for name, ids in self.nodes.items() for b in range(math.ceil(len(ids) / self.batch_size))]
        return every[self.comm.rank :: self.comm.world_size]

    def _sample(self, name: str, b: int) -> SampledBatch:
        seeds = self.nodes[name][b * self.batch_size : (b + 1) * self.batch_size]
        generator = torch.Generator().manual_seed(step_seed(self.seed, EVAL, SPLITS.index(name), b))
        return self.sampler.sample(seeds, generator)

    def _groups(self) -> Iterator[_Group]:
        """The groups of this rank's batches, each with its rows read; kept when one holds them all."""
        if self._kept is not None:
            yield from self._kept
            return
        pending: list[tuple[str, SampledBatch]] = []
        listed = np.zeros(self.sampler.sampler.num_nodes, dtype=bool)  # (N,) inputs of the pending batches
        rows = 0  # distinct inputs of the pending batches
        groups = 0
        for name, b in self._mine():
            batch = self._sample(name, b)
            new = int(np.count_nonzero(~listed[batch.input_nodes]))
            if pending and rows + new > self.max_rows:
                groups += 1
                yield self._read(pending)  # not kept: only one group's rows are held at once
                listed[:] = False
                pending, rows, new = [], 0, len(batch.input_nodes)
            pending.append((name, batch))
            listed[batch.input_nodes] = True
            rows += new
        last = self._read(pending)
        if groups == 0:
            self._kept = [last]
        yield last

    def _read(self, batches: list[tuple[str, SampledBatch]]) -> _Group:
        wanted = sorted_unique(np.concatenate([batch.input_nodes for _, batch in batches])) if batches else np.empty(0, np.int64)
        table = torch.from_numpy(np.ascontiguousarray(self.rows(wanted), dtype=np.float32))
        if self.normalize:
            table = normalize_rows(table)
        return _Group([(name, batch, np.searchsorted(wanted, batch.input_nodes)) for name, batch in batches], table)

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        self.model.eval()
        sums = {name: [0.0, 0.0] for name in self.nodes}
        with tqdm(total=len(self._mine()), desc="eval", unit="batch", leave=False, disable=not self.progress) as bar:
            for group in self._groups():
                for name, batch, rows in group.batches:
                    blocks = [block.to(self.device) for block in sampled_blocks(batch)]
                    logits = self.model(blocks, group.table[torch.from_numpy(rows)].to(self.device))
                    label = self.data.label[torch.from_numpy(np.ascontiguousarray(batch.output_nodes, dtype=np.int64))]
                    loss, right = score_sums(logits, label.to(self.device, torch.int64))  # labels may be a small type
                    sums[name][0] += loss
                    sums[name][1] += right
                    bar.update(1)
        names = list(self.nodes)
        sizes = {name: len(ids) for name, ids in self.nodes.items()}
        return split_scores(names, [sums[n][0] for n in names], [sums[n][1] for n in names], sizes, self.comm)


def keep_scored_nodes(data: NodeData, cfg: TrainConfig) -> None:
    """Cut ``data``'s valid and test splits, in place, down to the nodes the sampled evaluation
    scores (:func:`eval_nodes`: it picks the same ones again from what is left). Nothing else
    reads them in a run scored this way; the training split is kept whole. With every node of
    a split scored (``eval_nodes`` 0) nothing changes. Call it before the data is shared out."""
    for i, name in enumerate(SPLITS):
        if name != "train" and cfg.eval_nodes and name in data.splits and len(data.splits[name]) > cfg.eval_nodes:
            data.splits[name] = torch.from_numpy(eval_nodes(np.asarray(data.splits[name]), cfg.eval_nodes, cfg.seed, i))


def table_bytes(features: FeaturesConfig | None) -> int:
    """Bytes of feature rows the evaluation holds at once: a quarter of the features' host
    budget (the cache and batches of training keep the rest), at least 64 MiB."""
    return max(MIN_TABLE_BYTES, (features.host_cache_bytes if features is not None else FeaturesConfig.host_cache_bytes) // 4)


def build(ctx: BuildContext, data: NodeData, *, progress: bool = False) -> SampledEvaluation:
    """The sampled evaluation of a minibatch job: its sampler over the data set's graph, its
    rows from the loaded features when they are in memory, else from the store's chunks."""
    cfg, features = ctx.train, ctx.features
    sampler = NeighbourSampler(*graph_arrays(graph_block(data.graph)), list(cfg.fanouts))
    in_memory = features is None or features.mode == "in_memory"
    if in_memory:
        feat = data.feat.numpy()
        rows: Callable[[np.ndarray], np.ndarray] = lambda ids: np.take(feat, ids, axis=0)  # noqa: E731
        row_bytes = int(feat.shape[1]) * feat.itemsize
    else:
        store = DatasetStore.open(ctx.data_cfg.store)
        reader = ChunkedRows(store, layout.FEAT, max_read_bytes=features.max_read_bytes)
        rows, row_bytes = reader.gather_sorted, reader.row_bytes
    return SampledEvaluation(
        ctx.model, data, sampler, rows, batch_size=cfg.batch_size, seed=cfg.seed, max_nodes=cfg.eval_nodes,
        row_bytes=row_bytes, table_bytes=table_bytes(features), comm=ctx.comm, device=ctx.device,
        normalize=ctx.data_cfg.normalize_features and not in_memory, progress=progress,
    )
