"""The one step loop every training job runs.

A job (node classification, diffusion, the experts' router) says what differs: the batches of
an epoch, the executor that turns a micro-batch into gradients and applies an optimizer step,
what happens after a step and at the end of an epoch, and what its checkpoint holds. The loop
owns what is the same everywhere: step timing and metrics, gradient accumulation (a step is
``grad_accum`` micro-batches whose gradients add up to the whole batch's), mixed precision
(autocast), stopping at ``max_steps`` or a non-finite loss, checkpoint cadence and retention,
which run owns the checkpoints, resume from the newest intact checkpoint, a checkpoint and a
clean stop on SIGTERM/SIGUSR1/SIGINT agreed by every rank, ``on_step`` and the progress bar.

Every random choice of a job is a pure function of (seed, epoch, step) or lives in the torch
RNG state that the checkpoint carries, so a resumed run makes exactly the steps the
uninterrupted run would have made.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from strata.errors import ConfigError, Preempted, StrataError
from strata.runtime import checkpointing
from strata.runtime.config import PRECISIONS
from strata.runtime.dist.comm import Comm
from strata.runtime.metrics import TrainingMetrics
from strata.runtime.progress import Progress, progress_bar

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """What one micro-batch's forward and backward report."""

    loss: float
    """This rank's share of the step's loss: the global loss is the sum over ranks and
    micro-batches (an executor that averages over ranks divides by the world size)."""
    samples: int
    """Samples (seed nodes, images) this rank trained on."""


@dataclass
class ExecutorStats:
    """Figures an executor reports after a step, for the metrics; None = not measured."""

    bubble_ratio: float | None = None
    """Share of a pipeline pass a stage sat idle."""
    cache_hits: dict[str, int] | None = None
    """Feature-store hits per tier, totals since the start."""
    storage_read_bytes: int | None = None
    """Bytes the feature store read from storage, total since the start."""


class Executor(Protocol):
    """Runs the steps of one job on this rank."""

    def forward_backward(self, batch: Any, scale: float) -> StepOutput:
        """Forward and backward of one micro-batch, its loss multiplied by ``scale`` before the
        backward, so that the gradients of a step's micro-batches add up to the whole batch's."""
        ...

    def zero_grad(self) -> None:
        """Clear the gradients before a step (they stay readable after it, as in torch)."""
        ...

    def optimizer_step(self) -> None:
        """Make the gradients of this step whole (all-reduce, clip) and apply them."""
        ...

    def stats(self) -> ExecutorStats: ...


class Job(Protocol):
    """What a job plugs into :func:`run_loop`."""

    executor: Executor

    def steps_per_epoch(self) -> int: ...

    def steps(self, epoch: int, start: int) -> Iterator[Sequence[Any]]:
        """The micro-batches of every step of ``epoch`` from step ``start`` on; each micro-batch
        has a ``len`` (its samples), which weighs its share of the step's gradient."""
        ...

    def after_step(self, state: LoopState) -> None:
        """After every optimizer step (EMA, periodic logs and samples)."""
        ...

    def end_epoch(self, state: LoopState) -> bool:
        """After every complete epoch (evaluate, keep the best weights); True stops training."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds beyond the loop's state and the RNG."""
        ...

    def load_state_dict(self, shard: dict[str, Any], step: int, root: str) -> None:
        """Restore from a checkpoint shard (the whole shard, as :meth:`state_dict` wrote it)."""
        ...


class ElasticJob(Job, Protocol):
    """A job that may resume at another number of processes than wrote its checkpoint (elastic
    resume). A job without these methods resumes only at the same number."""

    def fixed_world_size(self) -> str:
        """Why this job resumes only at the process count that wrote its checkpoint; empty when it
        can re-split (every rank then loads shard 0 and :meth:`resplit` does the rest)."""
        ...

    def resplit(self, written_by: int, state: LoopState) -> None:
        """After :meth:`Job.load_state_dict` of shard 0 of a checkpoint that ``written_by``
        processes wrote at ``state``: re-derive this rank's RNG and data position."""
        ...


@dataclass
class LoopConfig:
    """How the loop runs a job; each job maps its config section onto it."""

    epochs: int = 1
    """Epochs at most; 0 = a job without epochs: one endless epoch that ``max_steps`` ends, so a
    resumed run may go on to a larger ``max_steps`` (its step is its data position)."""
    max_steps: int = 0
    """Stop after this many optimizer steps in total; 0 = no limit."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    bf16: bool = False
    """Autocast forward passes to bfloat16 (weights, gradients and optimizer state stay fp32)."""
    checkpoint_dir: str = ""
    every_steps: int = 0
    """Checkpoint every this many steps; 0 = only at the end."""
    keep: int = 3
    """Complete checkpoints kept; 0 = all."""
    progress: bool = False
    desc: str = "train"
    identity: dict[str, Any] | None = None
    """The config that matters for resuming, recorded beside the checkpoints; a fresh run then
    refuses a directory holding another run's checkpoints (see checkpointing.claim). None = no check."""
    overwrite: bool = False
    """A fresh run deletes another run's checkpoints instead of refusing them."""
    stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    """Signals that make every rank finish its step, checkpoint together and stop (raising
    :class:`strata.errors.Preempted`): a scheduler's notice (SLURM's --signal, Kubernetes'
    SIGTERM before the grace period ends) or ^C. Handled in the main thread only."""


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint."""

    step: int = 0
    """Optimizer steps taken in total."""
    epoch: int = 0
    step_in_epoch: int = 0
    last_loss: float = math.nan
    """The last step's loss, the same on every rank."""
    epoch_loss: float = 0.0
    """Sum of this epoch's step losses so far (their mean is the epoch's training loss)."""
    samples: int = 0
    """Samples this rank trained on in this run (not restored on resume)."""
    train_seconds: float = 0.0
    """Seconds spent in steps in this run (not restored on resume)."""
    scores: dict[str, float] = field(default_factory=dict)
    """The job's latest evaluation, for the progress bar."""
    resumed_from: int = 0
    """Processes that wrote the checkpoint this run resumed from, when not as many as this run
    has (elastic resume); 0 otherwise (not saved)."""

    @property
    def global_step(self) -> int:
        return self.step

    @property
    def epoch_mean_loss(self) -> float:
        return self.epoch_loss / self.step_in_epoch if self.step_in_epoch else math.nan


LOOP_KEYS = ("step", "epoch", "step_in_epoch", "last_loss", "epoch_loss")
"""The loop state a checkpoint carries."""


def resolve_bf16(precision: str, device: str, *, section: str) -> bool:
    """Whether ``precision`` ('auto', 'fp32', 'bf16') autocasts to bfloat16 on ``device``:
    'auto' does on CUDA GPUs that support bfloat16, never on CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{section}.precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def autocast(device: str, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when enabled, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def micro_scales(micro_batches: Sequence[Any]) -> list[float]:
    """Each micro-batch's weight in its step: its share of the step's samples."""
    sizes = [len(batch) for batch in micro_batches]
    total = sum(sizes)
    if not sizes:  # a rank with no micro-batch left in an elastic resume's last step of an epoch
        return []
    if total == 0:
        return [1.0 / len(sizes)] * len(sizes)
    return [size / total for size in sizes]


def save_checkpoint(job: Job, state: LoopState, cfg: LoopConfig, comm: Comm) -> None:
    shard = job.state_dict()
    shard["loop"] = {key: getattr(state, key) for key in LOOP_KEYS}
    shard["torch_rng"] = torch.get_rng_state()
    checkpointing.save(cfg.checkpoint_dir, state.step, shard, keep=cfg.keep, comm=comm)


def restore_checkpoint(job: Job, cfg: LoopConfig, comm: Comm) -> LoopState | None:
    """The loop state of the newest complete checkpoint, with the job restored; None if none.

    A checkpoint written by another number of processes resumes when the job can re-split
    (:class:`ElasticJob`): every rank loads shard 0, then the job re-derives its RNG and data
    position; otherwise it is refused, saying why."""
    fixed = job.fixed_world_size() if hasattr(job, "fixed_world_size") else checkpointing.FIXED_SHARDS
    found = checkpointing.restore(cfg.checkpoint_dir, comm, fixed=fixed)
    if found is None:
        return None
    step, shard = found
    state = LoopState(**loop_state_of(shard.get("loop", {}), step, cfg.checkpoint_dir))
    job.load_state_dict(shard, step, cfg.checkpoint_dir)
    written_by = checkpointing.written_by(cfg.checkpoint_dir, step)
    if written_by == comm.world_size:
        torch.set_rng_state(shard["torch_rng"])
        return state
    job.resplit(written_by, state)  # type: ignore[attr-defined]
    state.resumed_from = written_by
    if comm.rank == 0:
        log.warning("resumed step %d, written by %d processes, at %d processes", step, written_by, comm.world_size)
    return state


def loop_state_of(saved: dict[str, Any], step: int, root: str) -> dict[str, Any]:
    """The loop keys of a checkpoint, also from the two formats written before the one loop:
    the GNN trainer's (``global_step``) and the diffusion trainer's (``step`` without epochs)."""
    if "global_step" in saved:
        return {"step": saved["global_step"], "epoch": saved["epoch"], "step_in_epoch": saved["step_in_epoch"],
                "last_loss": saved.get("last_loss", math.nan), "epoch_loss": 0.0}
    if "step" in saved and "epoch" not in saved:
        return {"step": saved["step"], "epoch": 0, "step_in_epoch": saved["step"],
                "last_loss": saved.get("last_loss", saved.get("loss", math.nan)), "epoch_loss": 0.0}
    missing = [key for key in LOOP_KEYS if key not in saved]
    if missing:
        raise StrataError(
            f"checkpoint step {step} under '{root}' has no loop state ({', '.join(missing)} missing): it was not "
            "written by strata's training loop; start afresh with another checkpoint.dir"
        )
    return {key: saved[key] for key in LOOP_KEYS}


def run_loop(
    job: Job,
    cfg: LoopConfig,
    *,
    comm: Comm,
    metrics: TrainingMetrics,
    device: str = "cpu",
    resume: bool = False,
    on_step: Callable[[LoopState], None] | None = None,
    start_record: dict[str, Any] | None = None,
) -> LoopState:
    """Train ``job`` on this rank until ``cfg.epochs`` epochs or ``cfg.max_steps`` steps are
    done or the job stops it; checkpoint at the end. Every rank of ``comm`` calls it.

    The metrics log gets a ``start`` record (``start_record`` and the step it resumed at) once
    the newest checkpoint, if any, is restored."""
    state = LoopState()
    if cfg.identity is not None:
        checkpointing.claim(cfg.checkpoint_dir, cfg.identity, comm, resume=resume, overwrite=cfg.overwrite)
    if resume:
        state = restore_checkpoint(job, cfg, comm) or state
    elastic = {"resumed_from_world_size": state.resumed_from, "resumed_to_world_size": comm.world_size} if state.resumed_from else {}
    metrics.log("start", resumed_at=state.step, **elastic, **(start_record or {}))
    stop = StopRequest()
    total = _planned_steps(job, cfg)
    # A bar on a terminal, else a line in the log every half minute (strata.runtime.progress).
    bar = progress_bar(total=total, initial=min(state.step, total), desc=cfg.desc, unit="step", enabled=cfg.progress)
    try:
        with stop.catching(cfg.stop_signals):
            _run_epochs(job, state, cfg, comm, metrics, device, bar, on_step, stop)
        save_checkpoint(job, state, cfg, comm)
        if stop.agreed:
            metrics.log("preempted", step=state.step, signal=stop.name)
            raise Preempted(
                f"stopped by {stop.name or 'a signal on another rank'} after step {state.step}; its checkpoint is written "
                f"under '{cfg.checkpoint_dir}'. Run the same command with --resume to go on"
            )
        return state
    finally:
        bar.close()
        checkpointing.release(cfg.checkpoint_dir)  # the run directory's writer lock (taken by claim)


def _run_epochs(job: Job, state: LoopState, cfg: LoopConfig, comm: Comm, metrics: TrainingMetrics, device: str,
                bar: Progress, on_step: Callable[[LoopState], None] | None, stop: StopRequest) -> None:
    while (cfg.epochs == 0 or state.epoch < cfg.epochs) and not _at_max(state, cfg):
        epoch_done = _run_epoch(job, state, cfg, comm, metrics, device, bar, on_step, stop)
        if not epoch_done or cfg.epochs == 0:
            break
        finished = job.end_epoch(state)
        _show(bar, state)  # the finished epoch's mean loss beside its evaluation
        state.epoch, state.step_in_epoch, state.epoch_loss = state.epoch + 1, 0, 0.0
        if finished or stop.agreed:
            break


def _run_epoch(job: Job, state: LoopState, cfg: LoopConfig, comm: Comm, metrics: TrainingMetrics, device: str,
               bar: Progress, on_step: Callable[[LoopState], None] | None, stop: StopRequest) -> bool:
    """The steps of ``state.epoch`` from ``state.step_in_epoch`` on; False when max_steps or a
    stop signal ended it before its end."""
    steps = iter(job.steps(state.epoch, state.step_in_epoch))
    while True:
        if _at_max(state, cfg):
            return state.step_in_epoch >= job.steps_per_epoch()
        waited = time.perf_counter()
        micro_batches = next(steps, None)
        if micro_batches is None:
            return True
        started = time.perf_counter()
        metrics.data_wait.inc(started - waited)
        out = _micro_steps(job.executor, micro_batches, device=device, bf16=cfg.bf16)
        # One all-reduce per step carries the loss and whether any rank was asked to stop.
        loss, stopping = comm.sum_floats([out.loss, float(stop.requested)]) if comm.world_size > 1 else (out.loss, stop.requested)
        stop.agreed = bool(stopping)
        if not math.isfinite(loss):
            raise StrataError(
                f"the training loss became {loss} at step {state.step + 1} (rank {comm.rank}); nothing after step "
                f"{state.step} was checkpointed. Check the data for NaN or infinite values, or lower the learning rate"
            )
        seconds = time.perf_counter() - started
        state.step += 1
        state.step_in_epoch += 1
        state.last_loss = loss
        state.epoch_loss += loss
        state.samples += out.samples
        state.train_seconds += seconds
        metrics.step(seconds=seconds, samples=out.samples, loss=loss)
        _observe(metrics, job.executor.stats())
        job.after_step(state)
        if cfg.every_steps and state.step % cfg.every_steps == 0:
            save_checkpoint(job, state, cfg, comm)
        if on_step is not None:
            on_step(state)
        bar.update(1)
        if state.step_in_epoch == 1 or state.step % 10 == 0:
            _show(bar, state)
        if stop.agreed:
            return False


def train_step(executor: Executor, micro_batches: Sequence[Any], *, comm: Comm, device: str = "cpu", bf16: bool = False) -> StepOutput:
    """One optimizer step over ``micro_batches``, their gradients weighted by their samples.
    Returns the step's global loss (the same on every rank) and this rank's samples."""
    out = _micro_steps(executor, micro_batches, device=device, bf16=bf16)
    if comm.world_size > 1:
        (out.loss,) = comm.sum_floats([out.loss])
    return out


def _micro_steps(executor: Executor, micro_batches: Sequence[Any], *, device: str, bf16: bool) -> StepOutput:
    """The step on this rank: its share of the loss, its samples."""
    loss, samples = 0.0, 0
    executor.zero_grad()
    for batch, scale in zip(micro_batches, micro_scales(micro_batches)):
        with autocast(device, bf16):
            out = executor.forward_backward(batch, scale)
        loss += out.loss
        samples += out.samples
    executor.optimizer_step()
    return StepOutput(loss=loss, samples=samples)


def _observe(metrics: TrainingMetrics, stats: ExecutorStats) -> None:
    if stats.bubble_ratio is not None:
        metrics.bubble.set(stats.bubble_ratio)
    if stats.cache_hits is not None and stats.storage_read_bytes is not None:
        metrics.observe_feature_totals(cache_hits=stats.cache_hits, storage_read_bytes=stats.storage_read_bytes)


def _at_max(state: LoopState, cfg: LoopConfig) -> bool:
    return bool(cfg.max_steps) and state.step >= cfg.max_steps


def _planned_steps(job: Job, cfg: LoopConfig) -> int:
    if cfg.epochs == 0:
        return cfg.max_steps
    planned = cfg.epochs * job.steps_per_epoch()
    return min(planned, cfg.max_steps) if cfg.max_steps else planned


def _show(bar: Progress, state: LoopState) -> None:
    """The progress bar's figures: this epoch's mean training loss (not one batch's) and the
    job's latest evaluation."""
    shown = {"epoch": state.epoch}
    mean = state.epoch_mean_loss
    shown["loss"] = f"{mean if math.isfinite(mean) else state.last_loss:.4f}"
    shown.update({key: f"{value:.4f}" for key, value in state.scores.items()})
    bar.set_postfix(shown, refresh=False)



class StopRequest:
    """A stop asked for by a signal on this rank (``requested``) and agreed by all ranks at a
    step's end (``agreed``): every rank finishes the same step, then they checkpoint together."""

    def __init__(self) -> None:
        self.requested = False
        self.agreed = False
        self.name = ""

    def _handle(self, signum: int, frame: object) -> None:
        self.requested, self.name = True, signal.Signals(signum).name
        log.warning("%s received: finishing this step, then checkpointing and stopping", self.name)

    @contextlib.contextmanager
    def catching(self, signals: tuple[int, ...]) -> Iterator[None]:
        """Handle ``signals`` inside, restoring the previous handlers after (main thread only:
        elsewhere Python cannot install handlers, and the stop is left to the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in signals}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
