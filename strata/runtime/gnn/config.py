"""The config sections of a node-classification job: train and pipeline."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from strata.errors import ConfigError
from strata.partitioners.config import METHODS as PARTITION_METHODS
from strata.runtime.config import PRECISIONS
from strata.runtime.gnn.registry import EXECUTORS, FULL_GRAPH
from strata.runtime.pipeline.schedule import SCHEDULES


@dataclass
class TrainConfig:
    """How to train."""

    mode: str = ""
    """'full' (one step per epoch over the whole graph) or 'minibatch' (sampled neighbourhoods);
    empty = what ``executor`` implies ('full' when both are empty)."""
    executor: str = ""
    """How steps run: 'full' (the whole graph in one process), 'minibatch' (sampled mini-batches,
    data parallel over all processes), 'graph_parallel' (the whole graph cut into one part per
    process, halo embeddings exchanged at every layer) or 'layer_pipeline' (each process a stage of
    consecutive layers over the whole graph, see the pipeline section); empty = the executor of ``mode``."""
    partition: str = ""
    """graph_parallel: name of a partition of the store (written by 'strata partition --parts N
    --name NAME', N = number of processes); empty = assign nodes to processes in memory."""
    partitioner: str = "metis"
    """graph_parallel without ``partition``: the partitioner, one of random, range, metis, ldg, fennel."""
    epochs: int = 200
    """Maximum number of epochs."""
    lr: float = 0.01
    """Adam learning rate."""
    weight_decay: float = 5e-4
    """Adam L2 weight decay."""
    batch_size: int = 1024
    """Seed nodes per mini-batch (minibatch mode), over all processes: each of N processes takes
    ceil(batch_size / N), so a config means the same training at any number of processes."""
    fanouts: list[int] = field(default_factory=lambda: [10, 10])
    """Neighbours sampled per node at each layer, input layer first (minibatch mode)."""
    patience: int = 0
    """Stop after this many epochs without a better validation accuracy or loss; 0 = never."""
    seed: int = 0
    """Seed of parameters, dropout, shuffling and sampling."""
    max_steps: int = 0
    """Stop after this many steps in total; 0 = no limit."""
    grad_accum: int = 1
    """minibatch: micro-batches per optimizer step. Each step's batch_size seeds are sampled as
    grad_accum micro-batches (ceil(batch_size / processes / grad_accum) seeds each, one after
    another, so memory holds one), whose gradients add up to the whole batch's."""
    precision: str = "auto"
    """'auto' (bf16 on CUDA GPUs that support it, fp32 on CPU), 'fp32', or 'bf16' (forward passes
    autocast to bfloat16 on any device; weights, gradients and optimizer state stay fp32).
    full and minibatch only: graph_parallel and layer_pipeline exchange fp32 messages."""
    eval: str = "auto"
    """How validation and test scores are computed: 'full' (every node's full neighbourhood:
    the whole graph and feature matrix in memory), 'sampled' (minibatch: neighbourhoods sampled
    with ``fanouts`` in batches, features read from the store; see
    :mod:`strata.runtime.gnn.evaluation`), or 'auto' (sampled for minibatch runs whose
    features.mode is cached or packed, full otherwise)."""
    eval_nodes: int = 0
    """Sampled evaluation: score at most this many nodes of each split, a seeded sample fixed
    for the run; 0 = every node of every split."""

    def __post_init__(self) -> None:
        if self.mode not in ("", "full", "minibatch"):
            raise ConfigError(f"train.mode must be 'full' or 'minibatch', got '{self.mode}'")
        if self.executor not in ("", *EXECUTORS):
            raise ConfigError(f"train.executor must be one of {', '.join(EXECUTORS)}, got '{self.executor}'")
        self.executor = self.executor or self.mode or "full"
        implied = "minibatch" if self.executor == "minibatch" else "full"
        if self.mode and self.mode != implied:
            raise ConfigError(
                f"train.mode '{self.mode}' contradicts train.executor '{self.executor}', which trains on "
                f"{'sampled mini-batches' if implied == 'minibatch' else 'the whole graph'}; drop train.mode"
            )
        self.mode = implied
        if self.partition and self.executor != "graph_parallel":
            raise ConfigError(
                f"train.partition names the parts of graph_parallel, but train.executor is '{self.executor}' "
                "(minibatch ranks take balanced shares of the training nodes); drop train.partition"
            )
        if self.partitioner not in PARTITION_METHODS:
            raise ConfigError(f"train.partitioner must be one of {', '.join(PARTITION_METHODS)}, got '{self.partitioner}'")
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"train.lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be at least 1, got {self.batch_size}")
        if not self.fanouts or any(f < 1 and f != -1 for f in self.fanouts):
            raise ConfigError(f"train.fanouts must be a non-empty list of positive ints (or -1 for all), got {self.fanouts}")
        if self.grad_accum < 1:
            raise ConfigError(f"train.grad_accum must be at least 1, got {self.grad_accum}")
        if self.grad_accum > 1 and self.executor in FULL_GRAPH:
            raise ConfigError(
                f"train.grad_accum is {self.grad_accum}, but train.executor '{self.executor}' takes one full-graph step "
                "per epoch, which already covers every training node; use train.executor=minibatch or grad_accum: 1"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.precision == "bf16" and self.executor in ("graph_parallel", "layer_pipeline"):
            raise ConfigError(
                f"train.precision=bf16 is for the full and minibatch executors; '{self.executor}' exchanges fp32 "
                "embeddings between processes. Use precision auto or fp32"
            )
        if self.eval not in ("auto", "full", "sampled"):
            raise ConfigError(f"train.eval must be auto, full or sampled, got '{self.eval}'")
        if self.eval == "sampled" and self.executor != "minibatch":
            raise ConfigError(
                f"train.eval=sampled samples neighbourhoods with train.fanouts: it needs train.executor=minibatch, "
                f"not '{self.executor}'"
            )
        if self.eval_nodes < 0:
            raise ConfigError(f"train.eval_nodes must be >= 0 (0 = every node), got {self.eval_nodes}")
        if self.patience < 0 or self.max_steps < 0:
            raise ConfigError("train.patience and train.max_steps must be >= 0")


@dataclass
class PipelineConfig:
    """How the layer pipeline cuts the model and the graph."""

    stages: int = 0
    """Pipeline stages; 0 = one per process. Fewer stages than processes runs each stage
    graph-parallel over processes / stages ranks (hybrid); the processes must divide evenly."""
    chunks: int = 4
    """Graph chunks per pass (per part, in hybrid mode)."""
    schedule: str = "1f1b"
    """'gpipe' (fill-drain) or '1f1b' (fewer chunks in flight per stage)."""
    history: bool = True
    """Use historical embeddings for neighbours in chunks not yet computed; off = every pass exact."""
    sync_every: int = 10
    """Run a full synchronous (exact) pass every this many epochs; bounds staleness. 0 = only the first."""
    chunk_method: str = "metis"
    """Partitioner that cuts the graph (each part, in hybrid mode) into locality-preserving chunks."""
    part_method: str = "metis"
    """Hybrid: partitioner that cuts the graph into the parts of a stage's graph-parallel ranks."""
    recompute_residual: bool = True
    """Recompute an initial residual (GCNII's h0) at every stage from the features rather than
    send it with h: half the boundary traffic, for one input layer per stage."""

    def __post_init__(self) -> None:
        if self.stages < 0:
            raise ConfigError(f"pipeline.stages must be >= 0 (0 = one stage per process), got {self.stages}")
        if self.chunks < 1:
            raise ConfigError(f"pipeline.chunks must be at least 1, got {self.chunks}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"pipeline.schedule must be one of {', '.join(sorted(SCHEDULES))}, got '{self.schedule}'")
        if self.sync_every < 0:
            raise ConfigError(f"pipeline.sync_every must be >= 0, got {self.sync_every}")
        for key in ("chunk_method", "part_method"):
            if getattr(self, key) not in PARTITION_METHODS:
                raise ConfigError(f"pipeline.{key} must be one of {', '.join(PARTITION_METHODS)}, got '{getattr(self, key)}'")
