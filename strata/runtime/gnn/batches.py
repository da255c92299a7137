"""Where training batches come from: the whole graph, or neighbour-sampled mini-batches.

A batch source yields the steps of one epoch, starting at a given step, and depends only on
(seed, epoch, step), so a resumed run sees exactly the batches the uninterrupted run saw.

Sampled batches come in three ways that differ only in how feature bytes arrive
(``features.mode``): ``in_memory`` gathers rows from the loaded feature matrix; ``cached``
samples online and reads rows through the tiered feature store; ``packed`` reads blocks and
rows that ``strata pack`` wrote ahead of time. All three use one sampler
(:mod:`strata.storage.featstore.sampling`) with the same seeds, so for a given seed they
yield the same blocks and the same ``x``, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from strata.errors import ConfigError
from strata.graph.block import Block
from strata.runtime.config import DataConfig
from strata.runtime.gnn.data import NodeData
from strata.runtime.gnn.executors.blocks import as_blocks, graph_arrays, graph_block
from strata.storage.featstore.caches import FeatureCounters
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.sampling import (  # noqa: F401  (SHUFFLE, SAMPLE re-exported)
    SAMPLE,
    SHUFFLE,
    EpochPlan,
    NeighbourSampler,
    SampledBatch,
    SamplerConfig,
    sample_step,
)
from strata.storage.featstore.tiered import DeviceRows

if TYPE_CHECKING:
    from strata.runtime.gnn.config import TrainConfig
    from strata.storage.featstore.loader import FeatureLoader


# -- batches -------------------------------------------------------------------------------


@dataclass
class Batch:
    graphs: Block | list[Block]
    """The full graph, or one sampled Block per graph layer (input layer first)."""
    x: Tensor
    """Input features of the graphs' source nodes."""
    seeds: Tensor
    """Output rows whose loss counts."""
    y: Tensor
    device_rows: DeviceRows | None = None
    """Feature rows the store's device tier serves, still to be placed in ``x`` once it is on
    the GPU (a staged batch: see :mod:`strata.runtime.gnn.device_feed`); None for the rest."""

    def __len__(self) -> int:
        return len(self.seeds)


class BatchSource(Protocol):
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]: ...

    def close(self) -> None: ...


class FullGraphBatches:
    """One batch per epoch: the whole graph, loss over the training nodes."""

    def __init__(self, data: NodeData, graph: Block | None = None) -> None:
        self.data = data
        self.graph = (graph_block(data.graph) if graph is None else graph).with_int64_indices()
        """The whole graph, one Block for every step (kernels derive their structures once)."""
        self.train = data.splits["train"]

    def steps_per_epoch(self) -> int:
        return 1

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        if start == 0:
            yield Batch(self.graph, self.data.feat, self.train, self.data.label[self.train].to(torch.int64))

    def close(self) -> None:
        pass


def _train_ids(data: NodeData) -> np.ndarray:
    train = data.splits["train"]
    return np.asarray(train.numpy() if isinstance(train, Tensor) else train, dtype=np.int64)


def _batch(data: NodeData, blocks: list[Block], x: Tensor, output_nodes: np.ndarray, device_rows: DeviceRows | None = None) -> Batch:
    out = torch.from_numpy(np.ascontiguousarray(output_nodes, dtype=np.int64))
    # labels may be held in a small type (NodeData.label); the loss takes int64
    return Batch(blocks, x, torch.arange(len(out)), data.label[out].to(torch.int64), device_rows)


def sampled_blocks(sampled: SampledBatch) -> list[Block]:
    """One Block per sampled layer (input layer first), with the global ids of its nodes."""
    ids = torch.from_numpy(np.ascontiguousarray(sampled.input_nodes, dtype=np.int64))
    return [
        Block.from_csc(layer.indptr, layer.indices, num_src=layer.num_src, src_ids=ids[: layer.num_src],
                       dst_ids=ids[: layer.num_dst], check=False)
        for layer in sampled.layers
    ]


class SampledBatches:
    """Shuffled seed batches with neighbour-sampled blocks, features from memory;
    deterministic per (seed, epoch, step), whatever the number of threads or processes.

    ``prefetch`` > 0 samples and gathers that many batches ahead on one background thread. It
    is off by default: on 2 CPU cores a 200k-node GraphSAGE loop trained 0.85-0.97x as many seeds
    per second with it (the two threads contend for the GIL and memory bandwidth; see
    ``benchmarks/sampler.py --prefetch``)."""

    def __init__(self, data: NodeData, cfg: TrainConfig, num_graph_layers: int, *, prefetch: int = 0) -> None:
        _check_fanouts(cfg, num_graph_layers)
        self.data = data
        self.plan = EpochPlan(_train_ids(data), cfg.batch_size, cfg.seed)
        self.sampler = NeighbourSampler(*graph_arrays(graph_block(data.graph)), list(cfg.fanouts))
        self.prefetch = prefetch

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch()

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        from strata.storage.featstore.prefetch import prefetched

        order = self.plan.order(epoch)

        def load(step: int) -> Batch:
            sampled = sample_step(self.sampler, self.plan, order, epoch, step)
            x = gather_rows(self.data.feat, sampled.input_nodes)
            return _batch(self.data, sampled_blocks(sampled), x, sampled.output_nodes)

        # one worker: the sampler reuses its node map between calls
        yield from prefetched(load, range(start, self.steps_per_epoch()), depth=self.prefetch, workers=1)

    def close(self) -> None:
        pass


def gather_rows(feat: Tensor, ids: np.ndarray) -> Tensor:
    """``feat[ids]``; on the CPU through numpy's take, several times faster than torch indexing."""
    if feat.device.type == "cpu":
        return torch.from_numpy(np.take(feat.numpy(), ids, axis=0))
    return feat[torch.from_numpy(ids).to(feat.device)]


class StoreBatches:
    """Sampled batches whose blocks and features come from the tiered feature store
    (``cached`` or ``packed`` mode), loaded ahead on background threads. ``staged``: features
    stay in pinned host memory, the device tier's rows apart, for a device feed to copy."""

    def __init__(self, data: NodeData, loader: FeatureLoader, features: FeaturesConfig, *, staged: bool = False) -> None:
        self.data = data
        self.loader = loader
        self.features = features
        self.staged = staged

    @property
    def counters(self) -> FeatureCounters:
        """Hits, bytes and seconds per tier (for strata_cache_hits_total and
        strata_storage_read_bytes_total)."""
        return self.loader.counters

    def steps_per_epoch(self) -> int:
        return self.loader.steps_per_epoch()

    def epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        from strata.storage.featstore.prefetch import prefetched

        def load(step: int) -> Batch:
            loaded = self.loader.load(epoch, step, staged=self.staged)
            return _batch(self.data, as_blocks(loaded.blocks), loaded.x, loaded.output_nodes, loaded.device_rows)

        steps = range(start, self.steps_per_epoch())
        yield from prefetched(load, steps, depth=self.features.prefetch, workers=self.features.workers)

    def close(self) -> None:
        self.loader.close()


def _check_fanouts(cfg: TrainConfig, num_graph_layers: int) -> None:
    if len(cfg.fanouts) != num_graph_layers:
        raise ConfigError(f"train.fanouts has {len(cfg.fanouts)} entries but the model has {num_graph_layers} graph layers")


@dataclass
class FeatureOptions:
    """What the cached and packed modes need beyond the train config: they read features
    from the store, not from ``data.feat``."""

    features: FeaturesConfig
    """The job's ``features`` section."""
    store: str
    """URL of the dataset store (data.store)."""
    self_loops: bool = False
    """Whether the model's graph has self loops (the sampler walks them too)."""
    normalize: bool = False
    """data.normalize_features."""
    partition: str = ""
    """Name of the partition whose part ``data``'s training nodes are, if any."""
    part: int = -1
    device: torch.device | None = None
    """Where batches are assembled (a CUDA device enables the device cache); default CPU."""

    @classmethod
    def of_job(cls, features: FeaturesConfig | None, data_cfg: DataConfig, self_loops: bool) -> FeatureOptions | None:
        """The options of a job's ``features`` and ``data`` sections; None means in memory."""
        if features is None:
            return None
        return cls(features, data_cfg.store, self_loops, data_cfg.normalize_features)


def make_batches(
    data: NodeData, cfg: TrainConfig, num_graph_layers: int, options: FeatureOptions | None = None
) -> BatchSource:
    """The batch source ``cfg.mode`` and ``options.features.mode`` ask for (in memory by default)."""
    mode = options.features.mode if options is not None else "in_memory"
    if cfg.mode == "full":
        if mode != "in_memory":
            raise ConfigError(f"features.mode '{mode}' serves sampled mini-batches; train.mode 'full' needs features.mode 'in_memory'")
        return FullGraphBatches(data)
    if mode == "in_memory":
        return SampledBatches(data, cfg, num_graph_layers)
    assert options is not None
    _check_fanouts(cfg, num_graph_layers)
    if not options.store:
        raise ConfigError(f"features.mode '{mode}' reads features from the store, but no store URL was given")
    from strata.storage.featstore import loader as featloader
    from strata.storage.store import DatasetStore

    sampler = SamplerConfig(list(cfg.fanouts), cfg.batch_size, cfg.seed, options.self_loops)
    if mode == "packed":
        loader: FeatureLoader = featloader.open_packed(
            options.features, options.store, sampler, cfg.epochs, _train_ids(data),
            partition=options.partition, part=options.part, normalize=options.normalize, device=options.device,
        )
    else:
        loader = featloader.CachedLoader(
            DatasetStore.open(options.store), graph_arrays(graph_block(data.graph)), sampler, _train_ids(data), options.features,
            normalize=options.normalize, device=options.device,
        )
    staged = options.device is not None and options.device.type == "cuda"
    return StoreBatches(data, loader, options.features, staged=staged)
