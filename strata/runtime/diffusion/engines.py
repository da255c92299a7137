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

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from strata.errors import ConfigError
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime.diffusion.config import OptimizerConfig
from strata.runtime.diffusion.image_data import ImageData
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import all_reduce_gradients, broadcast_parameters


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


def step_seed(seed: int, step: int, purpose: int = 0) -> int:
    return int(np.random.SeedSequence([seed, purpose, step]).generate_state(1, dtype=np.uint32)[0] >> 1)


def sample_indices(num_images: int, batch_size: int, step: int, seed: int) -> Tensor:
    """The data-set rows of global batch ``step``: consecutive slices of one seeded permutation
    per pass over the data, so every image is seen once per pass."""
    first = step * batch_size
    out = []
    while len(out) < batch_size:
        position = first + len(out)
        epoch, offset = divmod(position, num_images)
        order = torch.randperm(num_images, generator=torch.Generator().manual_seed(step_seed(seed, epoch, purpose=1)))
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
    generator = torch.Generator().manual_seed(step_seed(seed, step, purpose=2))
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
    """Runs the optimizer step of one global batch on this rank."""

    name: str
    module: nn.Module
    """The model being trained (its weights feed the EMA and samplers)."""

    def train_step(self, micro_batches: list[DiffusionBatch]) -> float:
        """Forward, backward and optimizer step; returns the global batch's mean loss, the
        same on every rank."""
        ...

    def optimizer_state(self) -> dict: ...

    def load_optimizer_state(self, state: dict) -> None: ...

    def assemble(self, model: nn.Module) -> None:
        """Make this rank's copy of ``model`` (e.g. the EMA weights) whole: a no-op for replicas;
        a pipeline stage receives the layers other stages train. Every rank calls it."""
        ...

    def close(self) -> None: ...


class DataParallelEngine:
    """Replicas kept identical by averaging gradients over all ranks through :class:`Comm`."""

    name = "ddp"

    def __init__(
        self, model: nn.Module, schedule: NoiseSchedule, comm: Comm, opt: OptimizerConfig, *, bf16: bool = False, device: str = "cpu"
    ) -> None:
        self.module, self.schedule, self.comm, self.opt = model, schedule, comm, opt
        self.bf16, self.device_type = bf16, torch.device(device).type
        broadcast_parameters(model, comm)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        self.steps = 0

    def train_step(self, micro_batches: list[DiffusionBatch]) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.opt.lr_at(self.steps)
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in micro_batches:
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = diffusion_loss(self.module, self.schedule, batch).float()
            (loss / len(micro_batches)).backward()
            total += float(loss.detach())
        all_reduce_gradients(self.module.parameters(), self.comm, average=True)
        if self.opt.grad_clip:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.opt.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return _global_mean(total / len(micro_batches), self.comm)

    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

    def assemble(self, model: nn.Module) -> None:
        pass

    def close(self) -> None:
        pass


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 1 or 2 over the default process group (a one-rank group is formed
    when the job has a single process, since DeepSpeed needs one)."""

    def __init__(
        self, model: nn.Module, schedule: NoiseSchedule, comm: Comm, opt: OptimizerConfig, *,
        zero_stage: int, micro_batch: int, accum: int, device: str, bf16: bool = False,
    ) -> None:
        import os

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.startswith("cuda") else "cpu")
        # DeepSpeed insists on a launcher's LOCAL_RANK; our topology already chose the device.
        os.environ.setdefault("LOCAL_RANK", device.partition(":")[2] or "0")
        import deepspeed
        import deepspeed.comm

        self.name = f"deepspeed_zero{zero_stage}"
        self.schedule, self.comm, self.opt, self.accum = schedule, comm, opt, accum
        self._own_group = not dist.is_initialized()
        if self._own_group:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        self.config = deepspeed_config(
            zero_stage=zero_stage, micro_batch=micro_batch, accum=accum, world_size=comm.world_size,
            grad_clip=opt.grad_clip, bf16=bf16,
        )
        broadcast_parameters(model, comm)
        optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config, dist_init_required=False
        )
        self.module = self.engine.module
        self._logger = deepspeed.comm.comms_logger
        self._reported: dict[str, int] = {}
        self.steps = 0

    def train_step(self, micro_batches: list[DiffusionBatch]) -> float:
        if len(micro_batches) != self.accum:
            raise ValueError(f"DeepSpeed was configured for {self.accum} micro-batches per step, got {len(micro_batches)}")
        for group in self.optimizer.param_groups:
            group["lr"] = self.opt.lr_at(self.steps)
        self.engine.train()
        total = 0.0
        for batch in micro_batches:
            loss = diffusion_loss(self.engine, self.schedule, batch)
            self.engine.backward(loss)
            self.engine.step()
            total += float(loss.detach().float())
        self.steps += 1
        self._report_traffic()
        return _global_mean(total / len(micro_batches), self.comm)

    def _report_traffic(self) -> None:
        """Feed the bytes DeepSpeed's comms logger saw since the last step to the Comm's sink."""
        for op, sizes in self._logger.comms_dict.items():
            sent = sum(int(size) * int(record[0]) for size, record in sizes.items())
            new = sent - self._reported.get(op, 0)
            if new > 0:
                self._reported[op] = sent
                self.comm.record(f"deepspeed_{op}", new, 0.0)

    def optimizer_state(self) -> dict:
        # Checkpoints hold tensors and plain containers only (they are loaded weights_only), so
        # DeepSpeed's own objects (its loss scaler) stay out; loading takes them from the engine.
        plain = {k: v for k, v in ((k, _plain(v)) for k, v in self.optimizer.state_dict().items()) if v is not _DROP}
        return {"optimizer": plain, "steps": self.steps}

    def load_optimizer_state(self, state: dict) -> None:
        merged = {**self.optimizer.state_dict(), **state["optimizer"]}
        # The ZeRO optimizer takes every rank's partition in a list and picks its own.
        self.optimizer.load_state_dict([merged] * self.comm.world_size, load_from_fp32_weights=True)
        self.steps = int(state["steps"])

    def assemble(self, model: nn.Module) -> None:
        pass

    def close(self) -> None:
        self.engine.destroy()
        if self._own_group:
            dist.destroy_process_group()


def deepspeed_config(*, zero_stage: int, micro_batch: int, accum: int, world_size: int, grad_clip: float, bf16: bool) -> dict:
    """DeepSpeed's JSON config, generated from ours."""
    config: dict = {
        "train_batch_size": micro_batch * accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "zero_optimization": {"stage": zero_stage},
        # Our optimizer is torch's AdamW, which ZeRO partitions like its own.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "comms_logger": {"enabled": True, "verbose": False, "prof_all": True, "debug": False},
    }
    if grad_clip:
        config["gradient_clipping"] = grad_clip
    if bf16:
        config["bf16"] = {"enabled": True}
    return config


def _global_mean(value: float, comm: Comm) -> float:
    if comm.world_size == 1:
        return value
    (total,) = comm.sum_floats([value])
    return total / comm.world_size


_DROP = object()


def _plain(value: object) -> object:
    """``value`` as tensors and built-in containers and scalars (enums become their values),
    or _DROP where it holds anything else."""
    if isinstance(value, Tensor) or value is None or type(value) in (int, float, str, bool):
        return value
    for kind in (bool, int, float, str):  # subclasses such as IntEnum become the built-in
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else items
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return _DROP if any(v is _DROP or not isinstance(k, (str, int)) for k, v in items.items()) else items
    return _DROP
