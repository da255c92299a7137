"""Data-parallel diffusion training: every rank holds the model and trains on its slice of
each global batch, with gradients averaged before every optimizer step.

A step's randomness (which images, which timesteps, which noise, which labels are dropped for
classifier-free guidance) is drawn for the whole global batch from a generator seeded by
(seed, step), and each rank takes its rows. So one process and N processes train on exactly
the same examples with the same noise, a step's batch depends on nothing but its number (the
data position a checkpoint records), and a resumed run makes the steps the uninterrupted run
would have made.

Two engines do the arithmetic of a step:

- ``ddp``: our own all-reduce of the flattened gradients through the counted :class:`Comm`
  (DDP's arithmetic, as in the GNN minibatch executor), with forward passes optionally
  autocast to bfloat16 (fp32 weights, gradients and optimizer state);
- ``deepspeed``: DeepSpeed's ZeRO stage 1 or 2 (optimizer state, and at stage 2 gradients,
  partitioned over the ranks), configured from ours. Its traffic is read from DeepSpeed's
  comms logger and reported under ``deepspeed_<op>``.

Both average the per-micro-batch mean losses, so gradient accumulation over ``accum``
micro-batches on ``world`` ranks computes the gradient of the global batch's mean loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from strata.errors import ConfigError
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime.diffusion.config import DiffusionTrainConfig, OptimizerConfig
from strata.runtime.diffusion.image_data import ImageData
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import all_reduce_gradients, broadcast_parameters
from strata.runtime.loop import ExecutorStats, StepOutput
from strata.storage.seeds import step_seed


@dataclass
class DiffusionBatch:
    """Training examples with all their randomness drawn: the step is a pure function of it."""

    x0: Tensor
    """Clean images, N x C x H x W in [-1, 1]."""
    y: Tensor
    """Labels, with the null label where dropped (or for unlabelled data)."""
    t: Tensor
    """Timesteps, int64 in [0, T)."""
    noise: Tensor

    def __len__(self) -> int:
        return self.x0.shape[0]

    def rows(self, start: int, stop: int) -> DiffusionBatch:
        return DiffusionBatch(self.x0[start:stop], self.y[start:stop], self.t[start:stop], self.noise[start:stop])

    def split(self, parts: int) -> list[DiffusionBatch]:
        size = len(self) // parts
        return [self.rows(i * size, (i + 1) * size) for i in range(parts)]

    def to(self, device: torch.device | str) -> DiffusionBatch:
        return DiffusionBatch(self.x0.to(device), self.y.to(device), self.t.to(device), self.noise.to(device))


def sample_indices(num_images: int, batch_size: int, step: int, seed: int) -> Tensor:
    """The data-set rows of global batch ``step``: consecutive slices of one seeded permutation
    per pass over the data, so every image is seen once per pass."""
    first = step * batch_size
    out = []
    while len(out) < batch_size:
        position = first + len(out)
        epoch, offset = divmod(position, num_images)
        order = torch.randperm(num_images, generator=torch.Generator().manual_seed(step_seed(seed, 1, epoch)))
        take = min(batch_size - len(out), num_images - offset)
        out.extend(order[offset : offset + take].tolist())
    return torch.tensor(out, dtype=torch.int64)


def global_batch(
    data: ImageData, step: int, *, batch_size: int, seed: int, timesteps: int, null_label: int, label_dropout: float,
    rows: slice | None = None,
) -> DiffusionBatch:
    """Global batch ``step``, or only its ``rows`` (a rank's slice); the random draws are made
    for the whole batch either way, so slices of it agree with the whole."""
    index = sample_indices(len(data.images), batch_size, step, seed)
    generator = torch.Generator().manual_seed(step_seed(seed, 2, step))
    t = torch.randint(0, timesteps, (batch_size,), generator=generator)
    noise = torch.randn((batch_size, *data.images.shape[1:]), generator=generator)
    drop = torch.rand(batch_size, generator=generator) < label_dropout
    if data.labels is None:
        y = torch.full((batch_size,), null_label, dtype=torch.int64)
    else:
        y = torch.where(drop, torch.full_like(index, null_label), data.labels[index])
    rows = rows or slice(0, batch_size)
    return DiffusionBatch(data.images[index[rows]], y[rows], t[rows], noise[rows])


def rank_rows(batch_size: int, accum: int, rank: int, world_size: int) -> slice:
    """This rank's rows of a global batch; raises unless it splits evenly."""
    if batch_size % (world_size * accum):
        raise ConfigError(
            f"diffusion.batch_size {batch_size} must split evenly over {world_size} processes x "
            f"{accum} accumulation steps; use a multiple of {world_size * accum}"
        )
    size = batch_size // world_size
    return slice(rank * size, (rank + 1) * size)


def diffusion_loss(model: nn.Module, schedule: NoiseSchedule, batch: DiffusionBatch) -> Tensor:
    """Mean squared error of the model's prediction (eps or v, per the schedule) on ``batch``."""
    x_t = schedule.q_sample(batch.x0, batch.t, batch.noise)
    return schedule.loss(model(x_t, batch.t, batch.y), schedule.target(batch.x0, batch.noise, batch.t))


class DiffusionEngine(Protocol):
    """Runs the steps of a diffusion job on this rank (see :class:`strata.runtime.loop.Executor`)."""

    name: str
    module: nn.Module
    """The model being trained (its weights feed the EMA and samplers)."""

    def forward_backward(self, batch: DiffusionBatch, scale: float) -> StepOutput: ...

    def zero_grad(self) -> None: ...

    def optimizer_step(self) -> None: ...

    def stats(self) -> ExecutorStats: ...

    def optimizer_state(self) -> dict: ...

    def load_optimizer_state(self, state: dict) -> None: ...

    def assemble(self, model: nn.Module) -> None:
        """Make this rank's copy of ``model`` (e.g. the EMA weights) whole: a no-op for replicas;
        a pipeline stage receives the layers other stages train. Every rank calls it."""
        ...

    def close(self) -> None: ...


@dataclass
class EngineContext:
    """Everything an engine's ``build`` may use."""

    cfg: DiffusionTrainConfig
    model: nn.Module
    schedule: NoiseSchedule
    comm: Comm
    device: str
    rows: slice
    """This rank's rows of every global batch."""
    bf16: bool
    """Whether forward passes run in bfloat16 (the loop autocasts unless the engine does it itself)."""


class DataParallelEngine:
    """Replicas kept identical by averaging gradients over all ranks through :class:`Comm`."""

    name = "ddp"

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, comm: Comm, opt: OptimizerConfig) -> None:
        self.module, self.schedule, self.comm, self.opt = model, schedule, comm, opt
        broadcast_parameters(model, comm)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        self.steps = 0

    def forward_backward(self, batch: DiffusionBatch, scale: float) -> StepOutput:
        self.module.train()
        loss = diffusion_loss(self.module, self.schedule, batch).float()
        (loss * scale).backward()
        return StepOutput(loss=float(loss.detach()) * scale / self.comm.world_size, samples=len(batch))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.opt.lr_at(self.steps)
        all_reduce_gradients(self.module.parameters(), self.comm, average=True)
        if self.opt.grad_clip:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.opt.grad_clip)
        self.optimizer.step()
        self.steps += 1

    def stats(self) -> ExecutorStats:
        return ExecutorStats()

    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

    def assemble(self, model: nn.Module) -> None:
        pass

    def close(self) -> None:
        pass


def build(ctx: EngineContext) -> DataParallelEngine:
    """Replicas over all ranks, gradients averaged through strata's counted collectives."""
    return DataParallelEngine(ctx.model, ctx.schedule, ctx.comm, ctx.cfg.optimizer)
