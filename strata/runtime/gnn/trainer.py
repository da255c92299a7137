"""Node classification on the one training loop, in one process or in each of many.

Reads top to bottom: build the model and the executor the config names (the registry builds
it; this module never names one), hand both to :func:`strata.runtime.loop.run_loop` as a
:class:`NodeClassificationJob` (steps of ``grad_accum`` micro-batches, evaluation after every
epoch, the best weights by validation accuracy, early stopping), then report the test
accuracy of the best weights.

With several processes (a :class:`Topology` with world size > 1, inside
:func:`strata.runtime.dist.process_group.process_group`) every rank runs this same code; the
executor keeps the replicas in step, every rank writes its checkpoint shard and rank 0
commits it, and rank 0 alone writes the JSON-lines log.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from strata.errors import ConfigError, StrataError
from strata.models.config import ModelConfig
from strata.models.gnn import build_gnn
from strata.runtime import checkpointing
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.topology import Topology, single_process
from strata.runtime.gnn import elastic, evaluation
from strata.runtime.gnn.config import PipelineConfig, TrainConfig
from strata.runtime.gnn.data import NodeData, load_node_data
from strata.runtime.gnn.executors.base import BuildContext, GNNExecutor
from strata.runtime.gnn.registry import build_executor
from strata.runtime.loop import LoopConfig, LoopState, resolve_bf16, run_loop
from strata.runtime.metrics import TrainingMetrics
from strata.storage import fs, layout
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.store import DatasetMeta, DatasetStore

if TYPE_CHECKING:
    from strata.runtime.gnn.batches import BatchSource

log = logging.getLogger(__name__)


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


@dataclass
class BestSoFar:
    """The early-stopping bookkeeping; saved in every checkpoint."""

    val_acc: float = -1.0
    val_loss: float = math.inf
    epoch: int = -1
    bad_epochs: int = 0


class NodeClassificationJob:
    """What node classification plugs into the loop; resumes at another process count
    (:class:`strata.runtime.loop.ElasticJob`) when its executor can re-split."""

    def __init__(self, executor: GNNExecutor, optimizer: torch.optim.Optimizer, cfg: TrainConfig, metrics: TrainingMetrics,
                 *, comm: Comm | None = None, open_share: Callable[[int, int], BatchSource] | None = None,
                 evaluate: Callable[[], dict[str, float]] | None = None) -> None:
        self.executor = executor
        self.evaluate = evaluate or executor.evaluate
        """Scores of every split: the executor's, or sampled (:mod:`strata.runtime.gnn.evaluation`)."""
        self.model = executor.model
        self.optimizer = optimizer
        self.cfg = cfg
        self.metrics = metrics
        self.comm = comm or Comm(0, 1)
        self.open_share = open_share
        """(old rank, old world size) -> that rank's batch source: minibatch only, for elastic resume."""
        self.remainder: elastic.RemainderBatches | None = None
        """The rest of an epoch interrupted at another process count, while it is being trained."""
        self.recorder = elastic.BatchRecorder.from_env(self.comm.rank)
        self.best = BestSoFar()
        self.best_weights: dict[str, Tensor] = copy.deepcopy(self.model.state_dict())

    def steps_per_epoch(self) -> int:
        if self.remainder is not None:
            return self.remainder.steps_per_epoch()
        return math.ceil(self.executor.steps_per_epoch() / self.cfg.grad_accum)

    def steps(self, epoch: int, start: int) -> Iterator[list[Any]]:
        """The executor's micro-batches, ``grad_accum`` to a step (the last step of an epoch may
        have fewer); the dealt remainder of an epoch interrupted at another process count."""
        steps = self.remainder.steps(start) if self.remainder is not None else self._steps(epoch, start)
        if self.recorder is None:
            return steps
        return self.recorder.recording(steps, epoch, start, self.comm.world_size)

    def _steps(self, epoch: int, start: int) -> Iterator[list[Any]]:
        step: list[Any] = []
        for batch in self.executor.epoch(epoch, start * self.cfg.grad_accum):
            step.append(batch)
            if len(step) == self.cfg.grad_accum:
                yield step
                step = []
        if step:
            yield step

    def after_step(self, state: LoopState) -> None:
        pass

    def end_epoch(self, state: LoopState) -> bool:
        self.close_remainder()
        scores = self.evaluate()
        best = self.best
        acc, loss = scores.get("valid_acc", 0.0), scores.get("valid_loss", math.inf)
        improved_acc, improved_loss = acc > best.val_acc, loss < best.val_loss
        if improved_acc or (acc == best.val_acc and improved_loss):
            self.best_weights = copy.deepcopy(self.model.state_dict())
            best.epoch = state.epoch
        best.bad_epochs = 0 if (improved_acc or improved_loss) else best.bad_epochs + 1
        best.val_acc, best.val_loss = max(best.val_acc, acc), min(best.val_loss, loss)
        train_loss = state.epoch_mean_loss
        self.metrics.log("epoch", epoch=state.epoch, step=state.step, loss=train_loss, last_loss=state.last_loss, **scores)
        state.scores = {"val_acc": acc} if "valid_acc" in scores else {}
        return bool(self.cfg.patience) and best.bad_epochs >= self.cfg.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_model": self.best_weights,
            "job": asdict(self.best),
            "elastic": None if self.remainder is None else self.remainder.remainder.state_dict(),
        }

    def load_state_dict(self, shard: dict[str, Any], step: int, root: str) -> None:
        checkpointing.load_states(step, root, {"model": (self.model, shard["model"]), "optimizer": (self.optimizer, shard["optimizer"])})
        self.best_weights = shard["best_model"]
        self.close_remainder()
        remainder = elastic.remainder_of(shard.get("elastic"))
        if remainder is not None and remainder.epoch == shard["loop"]["epoch"] and self.open_share is not None:
            self._deal(remainder)
        if "job" in shard:
            self.best = BestSoFar(**shard["job"])
        else:  # written before the one loop: the bookkeeping was in the loop state
            old = shard["loop"]
            self.best = BestSoFar(old["best_val_acc"], old["best_val_loss"], old["best_epoch"], old["bad_epochs"])

    def fixed_world_size(self) -> str:
        return elastic.fixed_world_size(self.cfg.executor)

    def resplit(self, written_by: int, state: LoopState) -> None:
        """Shard 0 is loaded (replicated model, optimizer, best weights): a dropout stream of this
        rank's own, and for minibatch the rest of the interrupted epoch dealt over this run's ranks."""
        elastic.reseed(self.cfg.seed, self.comm.rank, state.step)
        if self.open_share is None:
            return  # a full-graph step per epoch: its position is the loop's
        earlier = None if self.remainder is None else self.remainder.remainder
        self.close_remainder()
        self._deal(elastic.Remainder.after(
            earlier, written_by=written_by, epoch=state.epoch, step_in_epoch=state.step_in_epoch,
            world_size=self.comm.world_size, grad_accum=self.cfg.grad_accum,
        ))

    def _deal(self, remainder: elastic.Remainder) -> None:
        open_share, world = self.open_share, remainder.world_size
        assert open_share is not None
        self.remainder = elastic.RemainderBatches(
            remainder, lambda rank: open_share(rank, world), rank=self.comm.rank, grad_accum=self.cfg.grad_accum,
        )

    def close_remainder(self) -> None:
        if self.remainder is not None:
            self.remainder.close()
            self.remainder = None


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


RUN_LENGTH_KEYS = ("epochs", "max_steps", "patience")
"""train keys a resumed run may change: they say how long to go on, not what is trained."""
EVAL_KEYS = ("eval", "eval_nodes")
"""train keys a resumed run may change: how it is scored, not what is trained."""
RECUT_KEYS = ("partition",)
"""train keys a resumed graph_parallel run may change: how the graph is cut, which follows the
number of processes (a stored partition of M parts to resume at M), not what is trained."""


def resume_identity(data_cfg: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig) -> dict[str, Any]:
    """What must stay the same for a run to resume another's checkpoints."""
    train = {key: value for key, value in asdict(cfg).items() if key not in RUN_LENGTH_KEYS + EVAL_KEYS}
    if cfg.executor == "graph_parallel":  # any cut goes; kept (blank) so that earlier runs' RUN.json still match
        train.update(dict.fromkeys(RECUT_KEYS, ""))
    return {"data": asdict(data_cfg), "model": asdict(model_cfg), "train": train}


def _check_training_nodes(meta: DatasetMeta, store: str) -> None:
    shape = meta.arrays.get(layout.split_key("train"), {}).get("shape", [0])
    if not shape or shape[0] == 0:
        raise ConfigError(
            f"store '{store}' has no training nodes (its node/split/train is empty or absent): there is nothing to "
            "train on; re-ingest it with a training split"
        )


def _data_loader(data_cfg: DataConfig, features: FeaturesConfig | None, self_loops: bool, *, spill: bool) -> Callable[[], NodeData]:
    """Loads the data set once, on the first call; features stay in the store when the features
    config serves batches from the store (spilled to a memory-mapped file if ``spill``: for a
    full-graph evaluation)."""
    in_memory = features is None or features.mode == "in_memory"
    return functools.cache(lambda: load_node_data(data_cfg, self_loops=self_loops, load_features=in_memory, spill=spill))


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
    overwrite: bool = False,
) -> TrainResult:
    """Train on every rank of ``topology`` (default: this one process).

    A torchrun restart (``topology.restart_count`` > 0) resumes like ``resume=True``.
    ``on_step`` is called after every step, with the loop state, on every rank. A fresh run
    refuses a checkpoint directory holding another run's checkpoints unless ``overwrite``.
    """
    topology = topology or single_process()
    _check_world(cfg, topology)
    meta = DatasetStore.open(data_cfg.store).meta
    _check_training_nodes(meta, data_cfg.store)
    torch.manual_seed(cfg.seed)
    fs.makedirs(run_dir)
    ckpt_root = ckpt_cfg.dir or fs.join(run_dir, "checkpoints")
    jsonl = metrics_cfg.jsonl or fs.join(run_dir, "metrics.jsonl")
    # The probe draws from the seeded generator before the model, as runs always have: the same
    # seed keeps giving the same initial weights.
    self_loops = build_gnn(model_cfg, 1, 1).self_loops
    model = build_gnn(model_cfg, meta.feat_dim, meta.num_classes).to(topology.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    metrics = TrainingMetrics(
        metrics_cfg, rank=topology.rank, local_rank=topology.local_rank, executor=cfg.executor,
        jsonl_url=jsonl if topology.is_main else None,
    )
    executor: GNNExecutor | None = None
    job: NodeClassificationJob | None = None
    sampled_eval = evaluation.sampled(cfg, features)
    try:
        # per-peer waits cost a slower all-to-all on gloo: only where Prometheus scrapes the ranks
        comm = Comm(topology.rank, topology.world_size, sink=metrics.comm, device=topology.device,
                    peer_waits=bool(metrics_cfg.port))
        ctx = BuildContext(
            train=cfg, pipeline=pipeline or PipelineConfig(), features=features, data_cfg=data_cfg, model=model,
            optimizer=optimizer, comm=comm, device=topology.device,
            load_data=_data_loader(data_cfg, features, self_loops, spill=not sampled_eval),
        )
        executor = build_executor(ctx)
        evaluate = evaluation.build(ctx, ctx.load_data(), progress=progress and topology.is_main) if sampled_eval else None
        if topology.is_distributed:
            torch.manual_seed(checkpointing.rank_seed(cfg.seed, topology.rank))
        open_share = functools.partial(elastic.share_batches, ctx) if cfg.executor == "minibatch" else None
        job = NodeClassificationJob(executor, optimizer, cfg, metrics, comm=comm, open_share=open_share, evaluate=evaluate)
        loop_cfg = LoopConfig(
            epochs=cfg.epochs, max_steps=cfg.max_steps, grad_accum=cfg.grad_accum,
            bf16=resolve_bf16(cfg.precision, topology.device, section="train"), checkpoint_dir=ckpt_root,
            every_steps=ckpt_cfg.every_steps, keep=ckpt_cfg.keep, progress=progress and topology.is_main,
            identity=resume_identity(data_cfg, model_cfg, cfg), overwrite=overwrite,
        )
        start = {
            "config": {"data": asdict(data_cfg), "model": asdict(model_cfg), "train": asdict(cfg)},
            "world_size": topology.world_size, "launcher": topology.launcher, "restart_count": topology.restart_count,
        }
        state = run_loop(job, loop_cfg, comm=comm, metrics=metrics, device=topology.device,
                         resume=resume or topology.restart_count > 0, on_step=on_step, start_record=start)
        return _finish(job, state, comm, metrics, topology, run_dir=run_dir, ckpt_root=ckpt_root, jsonl=jsonl)
    finally:
        if job is not None:
            job.close_remainder()
        if executor is not None:
            executor.close()
        metrics.close()


def _finish(job: NodeClassificationJob, state: LoopState, comm: Comm, metrics: TrainingMetrics, topology: Topology, *,
            run_dir: str, ckpt_root: str, jsonl: str) -> TrainResult:
    """Score the best weights and report the run."""
    job.model.load_state_dict(job.best_weights)
    final = job.evaluate()
    comm_bytes = comm.bytes_over_ranks() if comm.world_size > 1 else {}
    # Throughput of the whole job: every rank's samples over this rank's training time.
    (samples,) = comm.sum_floats([float(state.samples)]) if comm.world_size > 1 else (state.samples,)
    result = TrainResult(
        epochs=state.epoch, steps=state.step, best_epoch=job.best.epoch,
        val_acc=final.get("valid_acc", math.nan), test_acc=final.get("test_acc", math.nan), final_loss=state.last_loss,
        train_seconds=state.train_seconds,
        samples_per_second=samples / state.train_seconds if state.train_seconds else 0.0,
        run_dir=run_dir, checkpoint_dir=ckpt_root, metrics_log=jsonl, metrics_port=metrics.port,
        executor=job.cfg.executor, world_size=topology.world_size, comm_bytes=comm_bytes,
    )
    metrics.log("end", **asdict(result))
    metrics.push()
    return result
