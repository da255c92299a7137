"""Diffusion training on the one loop, in one process or in each of many.

Reads top to bottom: load the images, build the model, its noise schedule and the engine the
config names (DDP, DeepSpeed ZeRO, or a pipeline over the model's blocks; the registry builds
it), then hand a :class:`DiffusionJob` to :func:`strata.runtime.loop.run_loop`: every step
draws the global batch of that step, takes this rank's rows as ``grad_accum`` micro-batches,
and after the step updates the EMA of the weights and now and then logs and writes a PNG
grid of class-conditional samples from the EMA weights.

A step's batch is a pure function of (seed, step), so the step number is the data position,
and a run killed and resumed from a checkpoint continues the uninterrupted run's loss curve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from strata.errors import ConfigError
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
    DiffusionBatch,
    DiffusionEngine,
    EngineContext,
    global_batch,
    rank_rows,
)
from strata.runtime.diffusion.image_data import ImageData, load_image_data
from strata.runtime.diffusion.image_grid import write_grid
from strata.runtime.diffusion.model_loading import model_card
from strata.runtime.diffusion.registry import build_engine, engine_name
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.topology import Topology, single_process
from strata.runtime.loop import LoopConfig, LoopState, resolve_bf16, run_loop
from strata.runtime.metrics import TrainingMetrics
from strata.storage import fs

log = logging.getLogger(__name__)


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
    """Whether training on ``device`` runs its forward passes in bfloat16, per ``cfg.precision``
    ('auto': on CUDA GPUs that support it, except in the pipeline, whose messages are fp32)."""
    if cfg.precision == "auto" and cfg.executor == "pipeline":
        return False
    return resolve_bf16(cfg.precision, device, section="diffusion")


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
    on_step: Callable[[LoopState], None] | None = None,
    overwrite: bool = False,
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
        start = {
            "config": {
                "data": asdict(data_cfg), "diffusion_model": asdict(model_cfg), "noise": asdict(noise_cfg), "diffusion": asdict(cfg),
            },
            "world_size": topology.world_size, "launcher": topology.launcher, "restart_count": topology.restart_count,
        }
        result = fit(
            data, model_cfg, noise_cfg, cfg, ckpt_cfg, comm=comm, metrics=metrics, run_dir=run_dir, device=topology.device,
            resume=resume or topology.restart_count > 0, progress=progress and topology.is_main, on_step=on_step,
            start_record=start, identity=resume_identity(data_cfg, model_cfg, noise_cfg, cfg), overwrite=overwrite,
        )
        result.comm_bytes = comm.bytes_over_ranks()
        result.metrics_log, result.metrics_port = jsonl, metrics.port
        metrics.log("end", **asdict(result))
        metrics.push()
        return result
    finally:
        metrics.close()


class DiffusionJob:
    """What diffusion training plugs into the loop: one epoch of ``diffusion.steps`` steps."""

    def __init__(self, engine: DiffusionEngine, data: ImageData, schedule: NoiseSchedule, cfg: DiffusionTrainConfig, *,
                 comm: Comm, metrics: TrainingMetrics, run_dir: str, card: dict, device: str) -> None:
        self.executor = engine
        self.engine, self.data, self.schedule, self.cfg = engine, data, schedule, cfg
        self.comm, self.metrics, self.run_dir, self.card, self.device = comm, metrics, run_dir, card, device
        self.ema = EMA(engine.module, cfg.ema_decay)
        self.rows = batch_rows(cfg, comm)
        self.null_label = engine.module.null_label
        self.grid_url = ""
        self.last_grid_step = -1
        self.images_trained = 0
        """Images of the global batches this run trained on (all ranks together)."""

    def steps_per_epoch(self) -> int:
        return self.cfg.steps

    def steps(self, epoch: int, start: int) -> Iterator[list[DiffusionBatch]]:
        cfg = self.cfg
        for step in range(start, cfg.steps):
            batch = global_batch(
                self.data, step, batch_size=cfg.batch_size, seed=cfg.seed, timesteps=self.schedule.timesteps,
                null_label=self.null_label, label_dropout=cfg.label_dropout, rows=self.rows,
            ).to(self.device)
            # The pipeline cuts the whole batch into its own chunks.
            yield [batch] if cfg.executor == "pipeline" else batch.split(cfg.grad_accum)

    def after_step(self, state: LoopState) -> None:
        self.ema.update(self.engine.module)
        cfg = self.cfg
        self.images_trained += cfg.batch_size
        if cfg.log_every and state.step % cfg.log_every == 0:
            self.metrics.log("step", step=state.step, loss=state.last_loss)
        if cfg.sample_every and state.step % cfg.sample_every == 0:
            self.write_samples(state.step)

    def end_epoch(self, state: LoopState) -> bool:
        return True  # never called: the job has no epochs

    def write_samples(self, step: int) -> None:
        """Rank 0 samples from the EMA weights; the others wait so no rank runs ahead."""
        url = fs.join(self.run_dir, "samples", f"step-{step:08d}.png")
        averaged = self.ema.averaged(self.engine.module)
        self.engine.assemble(averaged)
        if self.comm.rank == 0:
            sample_grid(averaged, self.schedule, self.data.num_classes, self.cfg, url)
        self.comm.barrier()
        self.grid_url, self.last_grid_step = url, step

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.card,  # what the weights are, so `strata sample` can rebuild the model from a run directory
            "model": self.engine.module.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.engine.optimizer_state(),
        }

    def load_state_dict(self, shard: dict[str, Any], step: int, root: str) -> None:
        checkpointing.load_states(step, root, {"model": (self.engine.module, shard["model"]), "EMA": (self.ema, shard["ema"])})
        checkpointing.load_states(step, root, {"optimizer": (_OptimizerSlot(self.engine), shard["optimizer"])})


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
    on_step: Callable[[LoopState], None] | None = None,
    start_record: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> DiffusionResult:
    """Train one model on ``data`` over the ranks of ``comm`` (the whole job, or one expert's
    group), checkpointing under ``run_dir`` unless ``ckpt_cfg.dir`` says otherwise. With an
    ``identity``, the checkpoints are claimed for this run (see checkpointing.claim)."""
    ckpt_root = ckpt_cfg.dir or fs.join(run_dir, "checkpoints")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_diffusion(model_cfg).to(device)
    schedule = NoiseSchedule(noise_cfg).to(device)
    bf16 = uses_bf16(cfg, device)
    engine: DiffusionEngine | None = None
    try:
        engine = build_engine(EngineContext(cfg, model, schedule, comm, device, batch_rows(cfg, comm), bf16))
        job = DiffusionJob(engine, data, schedule, cfg, comm=comm, metrics=metrics, run_dir=run_dir,
                           card=model_card(model_cfg, noise_cfg, cfg.executor), device=device)
        loop_cfg = LoopConfig(
            epochs=0, max_steps=cfg.steps, grad_accum=cfg.grad_accum, bf16=bf16 and engine_name(cfg) != "deepspeed",
            checkpoint_dir=ckpt_root, every_steps=ckpt_cfg.every_steps, keep=ckpt_cfg.keep, progress=progress,
            identity=identity, overwrite=overwrite,
        )
        state = run_loop(job, loop_cfg, comm=comm, metrics=metrics, device=device, resume=resume, on_step=on_step,
                         start_record=start_record)
        if job.last_grid_step != state.step:
            job.write_samples(state.step)
        images = job.images_trained
        return DiffusionResult(
            steps=state.step, final_loss=state.last_loss, train_seconds=state.train_seconds,
            images_per_second=images / state.train_seconds if state.train_seconds else 0.0,
            run_dir=run_dir, checkpoint_dir=ckpt_root, metrics_log="", samples=job.grid_url,
            executor=executor_label(cfg), world_size=comm.world_size,
        )
    finally:
        if engine is not None:
            engine.close()


RUN_LENGTH_KEYS = ("steps", "log_every", "sample_every", "sample_per_class", "sample_steps", "guidance_scale", "image_cache_mb")
"""diffusion keys a resumed run may change: how long it goes on and what it reports."""


def resume_identity(data_cfg: DataConfig, model_cfg: DiffusionModelConfig, noise_cfg: NoiseConfig,
                    cfg: DiffusionTrainConfig) -> dict[str, Any]:
    """What must stay the same for a run to resume another's checkpoints."""
    train = {key: value for key, value in asdict(cfg).items() if key not in RUN_LENGTH_KEYS}
    return {"data": asdict(data_cfg), "diffusion_model": asdict(model_cfg), "noise": asdict(noise_cfg), "diffusion": train}


def executor_label(cfg: DiffusionTrainConfig) -> str:
    if cfg.executor != "data_parallel":
        return f"diffusion_{cfg.executor}"
    return "diffusion_ddp" if cfg.engine == "ddp" else f"diffusion_zero{cfg.zero_stage}"


@dataclass
class _OptimizerSlot:
    engine: DiffusionEngine

    def load_state_dict(self, state: dict) -> None:
        self.engine.load_optimizer_state(state)
