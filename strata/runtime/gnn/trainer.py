"""The training loop of a node-classification job, in one process or in each of many.

Reads top to bottom: build data, model and the executor that runs the steps, resume if
asked, then for each epoch run the steps of that epoch (one full-graph step, one step per
sampled mini-batch, or one graph-parallel step), checkpoint every N steps, evaluate, stop
early, and finally report test accuracy of the best model.

With several processes (a :class:`Topology` with world size > 1, inside
:func:`strata.runtime.dist.process_group.process_group`) every rank runs this same loop; the
executor keeps the replicas in step, every rank writes its checkpoint shard and rank 0
commits it, and rank 0 alone writes the JSON-lines log.

Every random choice is a pure function of (seed, epoch, step) or lives in the torch RNG
state that checkpoints carry, so a run resumed from a checkpoint makes exactly the steps the
uninterrupted run would have made.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from strata.errors import ConfigError, StrataError
from strata.models.config import ModelConfig
from strata.models.gnn import LayeredModel, build_gnn
from strata.partitioners import assign
from strata.partitioners.stages import assign_stages
from strata.runtime import checkpointing
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.topology import Topology, single_process
from strata.runtime.gnn.batches import FeatureOptions, StoreBatches, make_batches
from strata.runtime.gnn.config import PipelineConfig, TrainConfig
from strata.runtime.gnn.data import NodeData, load_node_data
from strata.runtime.gnn.executors.base import Executor
from strata.runtime.gnn.executors.graph_parallel import (
    GraphParallelExecutor,
    global_csc,
)
from strata.runtime.gnn.executors.layer_pipeline import LayerPipelineExecutor
from strata.runtime.gnn.executors.minibatch import (
    DataParallelExecutor,
    evaluate_full_graph,
    rank_data,
)
from strata.runtime.gnn.executors.partition import local_partition
from strata.runtime.gnn.executors.pipeline_layout import (
    PipelineLayout,
    chunks_within_parts,
)
from strata.runtime.gnn.part_data import load_part, part_data_in_memory
from strata.runtime.metrics import TrainingMetrics
from strata.storage import fs
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.store import DatasetStore

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_acc: float = -1.0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    last_loss: float = math.nan


@dataclass
class TrainResult:
    """What a finished run reports."""

    epochs: int
    steps: int
    best_epoch: int
    val_acc: float
    test_acc: float
    final_loss: float
    train_seconds: float
    samples_per_second: float
    """Training samples per second of the whole job (all ranks)."""
    run_dir: str
    checkpoint_dir: str
    metrics_log: str
    metrics_port: int | None = None
    executor: str = "full"
    world_size: int = 1
    comm_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes sent by each collective op, summed over all ranks (empty with one process)."""


# -- evaluation ----------------------------------------------------------------------------


def evaluate(model: LayeredModel, data: NodeData) -> dict[str, float]:
    """Loss and accuracy of every split, from one full-graph forward pass."""
    return evaluate_full_graph(model, data)


# -- executors -----------------------------------------------------------------------------


def graph_parallel_executor(
    cfg: TrainConfig, model: LayeredModel, data: NodeData | None, data_cfg: DataConfig, comm: Comm, topology: Topology
) -> GraphParallelExecutor:
    """This rank's part for graph_parallel: read with its share of the data from the store's
    partition ``cfg.partition`` (``data`` is not needed), or assigned in memory over ``data``
    by ``cfg.partitioner`` (rank 0 assigns, every rank gets its answer)."""
    if cfg.partition:
        part, share = load_part(data_cfg, cfg.partition, comm, self_loops=model.self_loops)
        return GraphParallelExecutor(model, share, part, comm, device=topology.device)
    assert data is not None, "graph_parallel without train.partition cuts the data set in memory"
    indptr, indices = global_csc(data.graph)
    num_nodes = len(indptr) - 1
    if comm.rank == 0:
        parts = torch.from_numpy(assign((indptr, indices), comm.world_size, cfg.seed, method=cfg.partitioner).astype(np.int64))
    else:
        parts = torch.empty(num_nodes, dtype=torch.int64)
    assignment = comm.broadcast(parts, 0).numpy()
    part = local_partition(indptr, indices, assignment, comm.rank, num_parts=comm.world_size)
    return GraphParallelExecutor(model, part_data_in_memory(data, part), part, comm, device=topology.device)


def pipeline_executor(
    cfg: TrainConfig, pipeline: PipelineConfig, model: LayeredModel, data: NodeData, comm: Comm, topology: Topology
) -> LayerPipelineExecutor:
    """``pipeline.stages`` stages (0 = one per process) of layers split by the cost model; with
    fewer stages than processes, each stage graph-parallel over G = processes / stages ranks on
    a G-part cut by ``pipeline.part_method``. Chunks are cut inside each part by
    ``pipeline.chunk_method``. Rank 0 cuts, every rank gets its answer."""
    layout = PipelineLayout.of(pipeline.stages, comm.world_size)
    indptr, indices = global_csc(data.graph)
    num_nodes = len(indptr) - 1
    if pipeline.chunks > num_nodes // layout.groups:
        raise ConfigError(
            f"pipeline.chunks is {pipeline.chunks} but each of the {layout.groups} parts has about "
            f"{num_nodes // layout.groups} nodes; use fewer chunks"
        )
    stages = assign_stages(model, layout.stages, data.feat.shape[1], num_nodes, len(indices))
    cuts = torch.empty(2, num_nodes, dtype=torch.int64)
    if comm.rank == 0:
        graph = (indptr, indices)
        part_of = np.zeros(num_nodes, dtype=np.int64)
        if layout.groups > 1:
            part_of = assign(graph, layout.groups, cfg.seed, method=pipeline.part_method).astype(np.int64)
        chunk_of = chunks_within_parts(
            indptr, indices, part_of, pipeline.chunks, lambda sub, k: assign(sub, k, cfg.seed, method=pipeline.chunk_method)
        )
        cuts = torch.from_numpy(np.stack([part_of, chunk_of]))
    part_of, chunk_of = comm.broadcast(cuts, 0).numpy()
    return LayerPipelineExecutor(
        model, data, comm, stages=stages, chunk_of=chunk_of, part_of=part_of, cfg=pipeline,
        device=topology.device, seed=cfg.seed,
    )


def build_executor(
    cfg: TrainConfig, model: LayeredModel, data: NodeData | None, data_cfg: DataConfig, comm: Comm, topology: Topology,
    features: FeaturesConfig | None = None,
    pipeline: PipelineConfig | None = None,
) -> Executor:
    if cfg.executor == "layer_pipeline":
        return pipeline_executor(cfg, pipeline or PipelineConfig(), model, data, comm, topology)
    if cfg.executor == "graph_parallel":
        return graph_parallel_executor(cfg, model, data, data_cfg, comm, topology)
    # Each rank samples its part of every global batch from its own share of the training
    # nodes; evaluation sees all of data.
    options = FeatureOptions.of_job(features, data_cfg, model.self_loops)
    rank_cfg = dataclasses.replace(cfg, batch_size=math.ceil(cfg.batch_size / comm.world_size))
    batches = make_batches(rank_data(data, comm.rank, comm.world_size, cfg.seed), rank_cfg, model.num_graph_layers, options)
    return DataParallelExecutor(cfg.executor, model, data, batches, comm, device=topology.device)


def _check_world(cfg: TrainConfig, topology: Topology) -> None:
    if topology.is_distributed and cfg.executor == "full":
        raise ConfigError(
            f"train.executor 'full' trains the whole graph in one process, but this job has {topology.world_size} "
            "processes; use train.executor=graph_parallel (the graph cut into one part per process) or minibatch"
        )
    if topology.is_distributed and not dist.is_initialized():
        raise StrataError(
            f"a topology of {topology.world_size} processes needs a process group: call train_node_classifier "
            "inside strata.runtime.dist.process_group.process_group(topology)"
        )


# -- checkpoints ---------------------------------------------------------------------------


def _save(root: str, state: LoopState, model: nn.Module, optimizer: torch.optim.Optimizer, best: dict[str, Tensor], keep: int, comm: Comm) -> None:
    shard = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_model": best,
        "torch_rng": torch.get_rng_state(),
        "loop": asdict(state),
    }
    checkpointing.save(root, state.global_step, shard, keep=keep, comm=comm)


def _restore(root: str, model: nn.Module, optimizer: torch.optim.Optimizer, comm: Comm) -> tuple[LoopState, dict[str, Tensor]] | None:
    found = checkpointing.restore(root, comm)
    if found is None:
        return None
    step, shard = found
    checkpointing.load_states(step, root, {"model": (model, shard["model"]), "optimizer": (optimizer, shard["optimizer"])})
    torch.set_rng_state(shard["torch_rng"])
    return LoopState(**shard["loop"]), shard["best_model"]


# -- the loop ------------------------------------------------------------------------------


def train_node_classifier(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    ckpt_cfg: CheckpointConfig,
    metrics_cfg: MetricsConfig,
    *,
    run_dir: str,
    resume: bool = False,
    progress: bool = True,
    topology: Topology | None = None,
    on_step: Callable[[LoopState], None] | None = None,
    features: FeaturesConfig | None = None,
    pipeline: PipelineConfig | None = None,
) -> TrainResult:
    """Train on every rank of ``topology`` (default: this one process).

    A torchrun restart (``topology.restart_count`` > 0) resumes like ``resume=True``.
    ``on_step`` is called after every step, with the loop state, on every rank.
    """
    topology = topology or single_process()
    _check_world(cfg, topology)
    torch.manual_seed(cfg.seed)
    fs.makedirs(run_dir)
    ckpt_root = ckpt_cfg.dir or fs.join(run_dir, "checkpoints")
    jsonl = metrics_cfg.jsonl or fs.join(run_dir, "metrics.jsonl")

    probe = build_gnn(model_cfg, 1, 1)
    if cfg.executor == "graph_parallel" and cfg.partition:
        data = None  # each rank reads its part's share of the store (see load_part)
        meta = DatasetStore.open(data_cfg.store).meta
        feat_dim, num_classes = meta.feat_dim, meta.num_classes
    else:
        data = load_node_data(data_cfg, self_loops=probe.self_loops, load_features=features is None or features.mode == "in_memory")
        feat_dim, num_classes = data.feat.shape[1], data.num_classes
    model = build_gnn(model_cfg, feat_dim, num_classes).to(topology.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    metrics = TrainingMetrics(
        metrics_cfg, rank=topology.rank, local_rank=topology.local_rank, executor=cfg.executor,
        jsonl_url=jsonl if topology.is_main else None,
    )
    bar = None
    store_batches = None
    try:
        comm = Comm(topology.rank, topology.world_size, sink=metrics.comm, device=topology.device)
        executor = build_executor(cfg, model, data, data_cfg, comm, topology, features, pipeline)
        if isinstance(getattr(executor, "batches", None), StoreBatches):
            store_batches = executor.batches
        if topology.is_distributed:
            torch.manual_seed(checkpointing.rank_seed(cfg.seed, topology.rank))

        state, best = LoopState(), copy.deepcopy(model.state_dict())
        if resume or topology.restart_count > 0:
            restored = _restore(ckpt_root, model, optimizer, comm)
            if restored is not None:
                state, best = restored

        metrics.log(
            "start",
            config={"data": asdict(data_cfg), "model": asdict(model_cfg), "train": asdict(cfg)},
            resumed_at=state.global_step,
            world_size=topology.world_size,
            launcher=topology.launcher,
            restart_count=topology.restart_count,
        )
        train_seconds, samples, stop = 0.0, 0, False
        bar = tqdm(total=cfg.epochs, initial=state.epoch, desc="train", unit="epoch", disable=not (progress and topology.is_main))
        for epoch in range(state.epoch, cfg.epochs):
            batches = iter(executor.epoch(epoch, state.step_in_epoch))
            while True:
                waited = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                t0 = time.perf_counter()
                metrics.data_wait.inc(t0 - waited)
                step = executor.train_step(batch, optimizer)
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                samples += step.samples
                state.global_step += 1
                state.step_in_epoch += 1
                state.last_loss = step.loss
                metrics.step(seconds=seconds, samples=step.samples, loss=state.last_loss)
                if isinstance(executor, LayerPipelineExecutor):
                    metrics.bubble.set(executor.stats.bubble_ratio)
                if store_batches is not None:
                    counters = store_batches.counters
                    metrics.observe_feature_totals(cache_hits=counters.cache_hits(), storage_read_bytes=counters.storage_read_bytes)
                if ckpt_cfg.every_steps and state.global_step % ckpt_cfg.every_steps == 0:
                    _save(ckpt_root, state, model, optimizer, best, ckpt_cfg.keep, comm)
                if on_step is not None:
                    on_step(state)
                if cfg.max_steps and state.global_step >= cfg.max_steps:
                    stop = True
                    break
            if stop and state.step_in_epoch < executor.steps_per_epoch():
                break
            state.epoch, state.step_in_epoch = epoch + 1, 0
            scores = executor.evaluate()
            improved_acc = scores.get("valid_acc", 0.0) > state.best_val_acc
            improved_loss = scores.get("valid_loss", math.inf) < state.best_val_loss
            if improved_acc or (scores.get("valid_acc", 0.0) == state.best_val_acc and improved_loss):
                best = copy.deepcopy(model.state_dict())
                state.best_epoch = epoch
            state.bad_epochs = 0 if (improved_acc or improved_loss) else state.bad_epochs + 1
            state.best_val_acc = max(state.best_val_acc, scores.get("valid_acc", 0.0))
            state.best_val_loss = min(state.best_val_loss, scores.get("valid_loss", math.inf))
            metrics.log("epoch", epoch=epoch, step=state.global_step, loss=state.last_loss, **scores)
            bar.update(1)
            bar.set_postfix(loss=f"{state.last_loss:.4f}", val_acc=f"{scores.get('valid_acc', 0):.4f}")
            if stop or (cfg.patience and state.bad_epochs >= cfg.patience):
                break
        _save(ckpt_root, state, model, optimizer, best, ckpt_cfg.keep, comm)
        model.load_state_dict(best)
        final = executor.evaluate()
        comm_bytes = comm.bytes_over_ranks() if comm.world_size > 1 else {}
        # Throughput of the whole job: every rank's samples over rank 0's training time.
        (samples,) = comm.sum_floats([float(samples)]) if comm.world_size > 1 else (samples,)
        result = TrainResult(
            epochs=state.epoch,
            steps=state.global_step,
            best_epoch=state.best_epoch,
            val_acc=final.get("valid_acc", math.nan),
            test_acc=final.get("test_acc", math.nan),
            final_loss=state.last_loss,
            train_seconds=train_seconds,
            samples_per_second=samples / train_seconds if train_seconds else 0.0,
            run_dir=run_dir,
            checkpoint_dir=ckpt_root,
            metrics_log=jsonl,
            metrics_port=metrics.port,
            executor=cfg.executor,
            world_size=topology.world_size,
            comm_bytes=comm_bytes,
        )
        metrics.log("end", **asdict(result))
        metrics.push()
        return result
    finally:
        if bar is not None:
            bar.close()
        if store_batches is not None:
            store_batches.close()
        metrics.close()
