"""The training loop of a node-classification job, in one process.

Reads top to bottom: build data and model, resume if asked, then for each epoch run the
steps of that epoch (one full-graph step, or one step per sampled mini-batch), checkpoint
every N steps, evaluate, stop early, and finally report test accuracy of the best model.

Every random choice is a pure function of (seed, epoch, step) or lives in the torch RNG
state that checkpoints carry, so a run resumed from a checkpoint makes exactly the steps the
uninterrupted run would have made.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from strata.errors import CheckpointError, ConfigError
from strata.models import LayeredModel, ModelConfig, build_gnn
from strata.runtime.batches import make_batches
from strata.runtime.data import DataConfig, NodeData, load_node_data
from strata.runtime.metrics import MetricsConfig, TrainingMetrics
from strata.storage import checkpoint, fs

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How to train."""

    mode: str = "full"
    """'full' (one step per epoch over the whole graph) or 'minibatch' (sampled neighbourhoods)."""
    epochs: int = 200
    """Maximum number of epochs."""
    lr: float = 0.01
    """Adam learning rate."""
    weight_decay: float = 5e-4
    """Adam L2 weight decay."""
    batch_size: int = 1024
    """Seed nodes per mini-batch (minibatch mode)."""
    fanouts: list[int] = field(default_factory=lambda: [10, 10])
    """Neighbours sampled per node at each layer, input layer first (minibatch mode)."""
    patience: int = 0
    """Stop after this many epochs without a better validation accuracy or loss; 0 = never."""
    seed: int = 0
    """Seed of parameters, dropout, shuffling and sampling."""
    max_steps: int = 0
    """Stop after this many steps in total; 0 = no limit."""

    def __post_init__(self) -> None:
        if self.mode not in ("full", "minibatch"):
            raise ConfigError(f"train.mode must be 'full' or 'minibatch', got '{self.mode}'")
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
        if self.patience < 0 or self.max_steps < 0:
            raise ConfigError("train.patience and train.max_steps must be >= 0")


@dataclass
class CheckpointConfig:
    """When and where to checkpoint."""

    every_steps: int = 0
    """Write a checkpoint every this many steps; 0 = only at the end."""
    dir: str = ""
    """Checkpoint root (any fsspec URL); empty = checkpoints/ in the run directory."""
    keep: int = 3
    """How many complete checkpoints to keep; 0 = all."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep < 0:
            raise ConfigError("checkpoint.every_steps and checkpoint.keep must be >= 0")


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
    run_dir: str
    checkpoint_dir: str
    metrics_log: str
    metrics_port: int | None = None


# -- evaluation ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: LayeredModel, data: NodeData) -> dict[str, float]:
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


# -- checkpoints ---------------------------------------------------------------------------


def _save(root: str, state: LoopState, model: nn.Module, optimizer: torch.optim.Optimizer, best: dict[str, Tensor], keep: int) -> None:
    checkpoint.write_shard(
        root,
        state.global_step,
        0,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_model": best,
            "torch_rng": torch.get_rng_state(),
            "loop": asdict(state),
        },
    )
    checkpoint.commit(root, state.global_step, world_size=1, keep=keep)


def _restore(root: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[LoopState, dict[str, Tensor]] | None:
    step = checkpoint.latest_step(root)
    if step is None:
        log.info("no complete checkpoint under %s: starting from scratch", root)
        return None
    shard = checkpoint.read_shard(root, step, 0)
    try:
        model.load_state_dict(shard["model"])
        optimizer.load_state_dict(shard["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint step {step} under '{root}' does not fit this model: {exc}") from exc
    torch.set_rng_state(shard["torch_rng"])
    log.info("resumed from checkpoint step %d under %s", step, root)
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
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    fs.makedirs(run_dir)
    ckpt_root = ckpt_cfg.dir or fs.join(run_dir, "checkpoints")
    jsonl = metrics_cfg.jsonl or fs.join(run_dir, "metrics.jsonl")

    probe = build_gnn(model_cfg, 1, 1)
    data = load_node_data(data_cfg, self_loops=probe.self_loops)
    model = build_gnn(model_cfg, data.feat.shape[1], data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = make_batches(data, cfg, model.num_graph_layers)

    state, best = LoopState(), copy.deepcopy(model.state_dict())
    if resume:
        restored = _restore(ckpt_root, model, optimizer)
        if restored is not None:
            state, best = restored

    metrics = TrainingMetrics(metrics_cfg, rank=0, local_rank=0, executor=cfg.mode, jsonl_url=jsonl)
    metrics.log("start", config={"data": asdict(data_cfg), "model": asdict(model_cfg), "train": asdict(cfg)}, resumed_at=state.global_step)
    train_seconds, samples, stop = 0.0, 0, False
    bar = tqdm(total=cfg.epochs, initial=state.epoch, desc="train", unit="epoch", disable=not progress)
    try:
        for epoch in range(state.epoch, cfg.epochs):
            for batch in batches.epoch(epoch, state.step_in_epoch):
                t0 = time.perf_counter()
                model.train()
                logits = model(batch.graphs, batch.x)
                loss = F.cross_entropy(logits[batch.seeds], batch.y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                samples += len(batch.seeds)
                state.global_step += 1
                state.step_in_epoch += 1
                state.last_loss = loss.item()
                metrics.step(seconds=seconds, samples=len(batch.seeds), loss=state.last_loss)
                if ckpt_cfg.every_steps and state.global_step % ckpt_cfg.every_steps == 0:
                    _save(ckpt_root, state, model, optimizer, best, ckpt_cfg.keep)
                if cfg.max_steps and state.global_step >= cfg.max_steps:
                    stop = True
                    break
            if stop and state.step_in_epoch < batches.steps_per_epoch():
                break
            state.epoch, state.step_in_epoch = epoch + 1, 0
            scores = evaluate(model, data)
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
        _save(ckpt_root, state, model, optimizer, best, ckpt_cfg.keep)
        model.load_state_dict(best)
        final = evaluate(model, data)
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
        )
        metrics.log("end", **asdict(result))
        metrics.push()
        return result
    finally:
        bar.close()
        metrics.close()
