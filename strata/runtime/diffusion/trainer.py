"""The training loop of a diffusion job, in one process or in each of many.

Reads top to bottom: load the images, build the model, its noise schedule and the engine that
runs a step (DDP, DeepSpeed ZeRO, or a pipeline over the model's blocks), resume if asked,
then for every step draw the global batch of that step, take this rank's rows, let the engine
train on them, update the EMA of the weights, and now and then log, checkpoint and write a
PNG grid of class-conditional samples from the EMA weights.

Checkpoints, metrics, the process group and the counted collectives are the GNN trainer's;
only the step differs. A step's batch is a pure function of (seed, step), so the step number
is the data position, and a run killed and resumed from a checkpoint continues the
uninterrupted run's loss curve.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from strata.errors import ConfigError, StrataError
from strata.models.diffusion.config import (
    DiffusionModelConfig,
    NoiseConfig,
    build_diffusion,
)
from strata.models.diffusion.sampling import ddim_sample
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime import checkpointing
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.diffusion.config import DiffusionTrainConfig
from strata.runtime.diffusion.ema import EMA
from strata.runtime.diffusion.engines import (
    DataParallelEngine,
    DeepSpeedEngine,
    DiffusionEngine,
    global_batch,
    rank_rows,
)
from strata.runtime.diffusion.image_data import ImageData, load_image_data
from strata.runtime.diffusion.image_grid import write_grid
from strata.runtime.diffusion.model_loading import model_card
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.topology import Topology, single_process
from strata.runtime.metrics import TrainingMetrics
from strata.storage import fs

log = logging.getLogger(__name__)


@dataclass
class DiffusionState:
    """Where the loop is; saved in every checkpoint. ``step`` is also the data position."""

    step: int = 0
    images_seen: int = 0
    last_loss: float = math.nan


@dataclass
class DiffusionResult:
    steps: int
    final_loss: float
    train_seconds: float
    images_per_second: float
    """Training images per second of the whole job."""
    run_dir: str
    checkpoint_dir: str
    metrics_log: str
    samples: str
    """URL of the last grid of samples (empty when none was written)."""
    executor: str
    world_size: int
    comm_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes sent by each op, summed over all ranks."""
    metrics_port: int | None = None


def check_model_fits(model_cfg: DiffusionModelConfig, data: ImageData, store: str) -> None:
    channels, size = data.images.shape[1], data.images.shape[2]
    if data.images.shape[2] != data.images.shape[3]:
        raise ConfigError(f"the images of '{store}' are {tuple(data.images.shape[2:])}; diffusion models here need square images")
    wrong = [
        f"{key} is {mine} but the store's images have {theirs}"
        for key, mine, theirs in (
            ("image_size", model_cfg.image_size, size),
            ("channels", model_cfg.channels, channels),
            ("num_classes", model_cfg.num_classes, data.num_classes),
        )
        if mine != theirs
    ]
    if wrong:
        raise ConfigError(f"diffusion_model does not fit '{store}': " + "; ".join(wrong))


def batch_rows(cfg: DiffusionTrainConfig, comm: Comm) -> slice:
    """The rows of each global batch this rank trains on: its share under data parallelism,
    all of them in a pipeline (every stage sees every micro-batch)."""
    if cfg.executor == "pipeline":
        if cfg.batch_size % cfg.pipeline_chunks:
            raise ConfigError(
                f"diffusion.batch_size {cfg.batch_size} must split evenly into diffusion.pipeline_chunks {cfg.pipeline_chunks}"
            )
        return slice(0, cfg.batch_size)
    return rank_rows(cfg.batch_size, cfg.grad_accum, comm.rank, comm.world_size)


def uses_bf16(cfg: DiffusionTrainConfig, device: str) -> bool:
    """Whether training on ``device`` runs its forward passes in bfloat16, per ``cfg.precision``."""
    if cfg.precision == "auto":
        return cfg.executor != "pipeline" and device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return cfg.precision == "bf16"


def build_engine(cfg: DiffusionTrainConfig, model: nn.Module, schedule: NoiseSchedule, comm: Comm, device: str) -> DiffusionEngine:
    rows = batch_rows(cfg, comm)
    if cfg.executor == "pipeline":
        from strata.runtime.diffusion.block_pipeline import BlockPipelineEngine

        return BlockPipelineEngine(model, schedule, comm, cfg.optimizer, chunks=cfg.pipeline_chunks, schedule_name=cfg.pipeline_schedule)
    bf16 = uses_bf16(cfg, device)
    if cfg.engine == "deepspeed":
        if bf16 and not device.startswith("cuda"):
            raise ConfigError("diffusion.precision=bf16 with engine=deepspeed needs a CUDA device here; use engine=ddp for bf16 on CPU")
        micro = (rows.stop - rows.start) // cfg.grad_accum
        return DeepSpeedEngine(
            model, schedule, comm, cfg.optimizer, zero_stage=cfg.zero_stage, micro_batch=micro, accum=cfg.grad_accum,
            device=device, bf16=bf16,
        )
    return DataParallelEngine(model, schedule, comm, cfg.optimizer, bf16=bf16, device=device)


@torch.no_grad()
def sample_grid(model: nn.Module, schedule: NoiseSchedule, num_classes: int, cfg: DiffusionTrainConfig, url: str) -> None:
    """One row of ``sample_per_class`` samples per class (one row of unconditional samples for
    unlabelled data), from a fixed noise seed so grids of different steps compare."""
    classes = max(num_classes, 1)
    y = torch.arange(classes).repeat_interleave(cfg.sample_per_class) if num_classes else None
    generator = torch.Generator().manual_seed(cfg.seed)
    images = ddim_sample(
        model, schedule, classes * cfg.sample_per_class, steps=cfg.sample_steps, y=y,
        guidance_scale=cfg.guidance_scale if num_classes else 1.0, generator=generator,
    )
    scale = max(1, 64 // images.shape[-1])
    write_grid(url, images, rows=classes, scale=scale)


def train_diffusion(
    data_cfg: DataConfig,
    model_cfg: DiffusionModelConfig,
    noise_cfg: NoiseConfig,
    cfg: DiffusionTrainConfig,
    ckpt_cfg: CheckpointConfig,
    metrics_cfg: MetricsConfig,
    *,
    run_dir: str,
    resume: bool = False,
    progress: bool = True,
    topology: Topology | None = None,
    on_step: Callable[[DiffusionState], None] | None = None,
) -> DiffusionResult:
    """Train a diffusion model on every rank of ``topology`` (default: this one process).

    A torchrun restart (``topology.restart_count`` > 0) resumes like ``resume=True``.
    ``on_step`` is called after every step, with the loop state, on every rank.
    """
    topology = topology or single_process()
    if cfg.executor == "experts":
        raise ConfigError("diffusion.executor=experts trains through strata.runtime.diffusion.experts.train_experts")
    fs.makedirs(run_dir)
    jsonl = metrics_cfg.jsonl or fs.join(run_dir, "metrics.jsonl")
    data = load_image_data(data_cfg.store, in_memory=cfg.images_in_memory, cache_bytes=cfg.image_cache_mb << 20)
    check_model_fits(model_cfg, data, data_cfg.store)
    metrics = TrainingMetrics(
        metrics_cfg, rank=topology.rank, local_rank=topology.local_rank, executor=executor_label(cfg),
        jsonl_url=jsonl if topology.is_main else None,
    )
    try:
        comm = Comm(topology.rank, topology.world_size, sink=metrics.comm, device=topology.device)
        metrics.log(
            "start",
            config={"data": asdict(data_cfg), "diffusion_model": asdict(model_cfg), "noise": asdict(noise_cfg), "diffusion": asdict(cfg)},
            world_size=topology.world_size, launcher=topology.launcher, restart_count=topology.restart_count,
        )
        result = fit(
            data, model_cfg, noise_cfg, cfg, ckpt_cfg, comm=comm, metrics=metrics, run_dir=run_dir, device=topology.device,
            resume=resume or topology.restart_count > 0, progress=progress and topology.is_main, on_step=on_step,
        )
        result.comm_bytes = comm.bytes_over_ranks()
        result.metrics_log, result.metrics_port = jsonl, metrics.port
        metrics.log("end", **asdict(result))
        metrics.push()
        return result
    finally:
        metrics.close()


def fit(
    data: ImageData,
    model_cfg: DiffusionModelConfig,
    noise_cfg: NoiseConfig,
    cfg: DiffusionTrainConfig,
    ckpt_cfg: CheckpointConfig,
    *,
    comm: Comm,
    metrics: TrainingMetrics,
    run_dir: str,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = False,
    on_step: Callable[[DiffusionState], None] | None = None,
) -> DiffusionResult:
    """The loop itself: train one model on ``data`` over the ranks of ``comm`` (the whole job,
    or one expert's group), checkpointing under ``run_dir`` unless ``ckpt_cfg.dir`` says otherwise."""
    ckpt_root = ckpt_cfg.dir or fs.join(run_dir, "checkpoints")
    card = model_card(model_cfg, noise_cfg, cfg.executor)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_diffusion(model_cfg).to(device)
    schedule = NoiseSchedule(noise_cfg).to(device)
    engine: DiffusionEngine | None = None
    bar = None
    try:
        engine = build_engine(cfg, model, schedule, comm, device)
        ema = EMA(engine.module, cfg.ema_decay)
        rows = batch_rows(cfg, comm)
        samples_per_step = (rows.stop - rows.start) if cfg.executor != "pipeline" else cfg.batch_size * (comm.rank == 0)
        state = DiffusionState()
        if resume:
            state = _restore(ckpt_root, engine, ema, comm) or state
            metrics.log("resumed", step=state.step)
        train_seconds, grid_url, images_trained = 0.0, "", 0
        bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step", disable=not progress)
        while state.step < cfg.steps:
            batch = global_batch(
                data, state.step, batch_size=cfg.batch_size, seed=cfg.seed, timesteps=schedule.timesteps,
                null_label=model.null_label, label_dropout=cfg.label_dropout, rows=rows,
            ).to(device)
            t0 = time.perf_counter()
            loss = engine.train_step(batch.split(cfg.grad_accum))
            ema.update(engine.module)
            seconds = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise StrataError(f"the training loss became {loss} at step {state.step}; lower diffusion.lr or raise grad_clip")
            train_seconds += seconds
            images_trained += cfg.batch_size
            state.step += 1
            state.images_seen += cfg.batch_size
            state.last_loss = loss
            metrics.step(seconds=seconds, samples=samples_per_step, loss=loss)
            if hasattr(engine, "stats"):
                metrics.bubble.set(engine.stats.bubble_ratio)
            if cfg.log_every and state.step % cfg.log_every == 0:
                metrics.log("step", step=state.step, loss=loss, images_per_second=cfg.batch_size / seconds)
            if cfg.sample_every and state.step % cfg.sample_every == 0:
                grid_url = _write_samples(engine, ema, schedule, data.num_classes, cfg, run_dir, state.step, comm)
            if ckpt_cfg.every_steps and state.step % ckpt_cfg.every_steps == 0:
                _save(ckpt_root, state, engine, ema, ckpt_cfg.keep, comm, card)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if on_step is not None:
                on_step(state)
        _save(ckpt_root, state, engine, ema, ckpt_cfg.keep, comm, card)
        if not (cfg.sample_every and state.step % cfg.sample_every == 0):
            grid_url = _write_samples(engine, ema, schedule, data.num_classes, cfg, run_dir, state.step, comm)
        return DiffusionResult(
            steps=state.step, final_loss=state.last_loss, train_seconds=train_seconds,
            images_per_second=images_trained / train_seconds if train_seconds else 0.0,
            run_dir=run_dir, checkpoint_dir=ckpt_root, metrics_log="", samples=grid_url,
            executor=executor_label(cfg), world_size=comm.world_size,
        )
    finally:
        if bar is not None:
            bar.close()
        if engine is not None:
            engine.close()


def executor_label(cfg: DiffusionTrainConfig) -> str:
    if cfg.executor != "data_parallel":
        return f"diffusion_{cfg.executor}"
    return "diffusion_ddp" if cfg.engine == "ddp" else f"diffusion_zero{cfg.zero_stage}"


def _write_samples(
    engine: DiffusionEngine, ema: EMA, schedule: NoiseSchedule, num_classes: int, cfg: DiffusionTrainConfig,
    run_dir: str, step: int, comm: Comm,
) -> str:
    """Rank 0 samples from the EMA weights; the others wait so no rank runs ahead."""
    url = fs.join(run_dir, "samples", f"step-{step:08d}.png")
    averaged = ema.averaged(engine.module)
    engine.assemble(averaged)
    if comm.rank == 0:
        sample_grid(averaged, schedule, num_classes, cfg, url)
    comm.barrier()
    return url


def _save(root: str, state: DiffusionState, engine: DiffusionEngine, ema: EMA, keep: int, comm: Comm, card: dict) -> None:
    shard = {
        "config": card,  # what the weights are, so `strata sample` can rebuild the model from a run directory
        "model": engine.module.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": engine.optimizer_state(),
        "torch_rng": torch.get_rng_state(),
        "loop": asdict(state),
    }
    checkpointing.save(root, state.step, shard, keep=keep, comm=comm)


def _restore(root: str, engine: DiffusionEngine, ema: EMA, comm: Comm) -> DiffusionState | None:
    found = checkpointing.restore(root, comm)
    if found is None:
        return None
    step, shard = found
    checkpointing.load_states(step, root, {"model": (engine.module, shard["model"]), "EMA": (ema, shard["ema"])})
    checkpointing.load_states(step, root, {"optimizer": (_OptimizerSlot(engine), shard["optimizer"])})
    torch.set_rng_state(shard["torch_rng"])
    return DiffusionState(**shard["loop"])


@dataclass
class _OptimizerSlot:
    engine: DiffusionEngine

    def load_state_dict(self, state: dict) -> None:
        self.engine.load_optimizer_state(state)
