"""DeepSpeed ZeRO (stage 1 or 2) as a diffusion engine: DeepSpeed partitions the optimizer state
(and, at stage 2, the gradients) over the ranks; strata feeds it the same micro-batches the
other engines see and counts the bytes its collectives send."""

from __future__ import annotations

import contextlib
import io
import logging
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from strata.errors import ConfigError
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime.diffusion.config import OptimizerConfig
from strata.runtime.diffusion.engines import (
    DiffusionBatch,
    EngineContext,
    diffusion_loss,
)
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import broadcast_parameters
from strata.runtime.loop import ExecutorStats, StepOutput

log = logging.getLogger(__name__)


class DeepSpeedEngine:
    """DeepSpeed ZeRO stage 1 or 2 over the default process group (a one-rank group is formed
    when the job has a single process, since DeepSpeed needs one)."""

    def __init__(
        self, model: nn.Module, schedule: NoiseSchedule, comm: Comm, opt: OptimizerConfig, *,
        zero_stage: int, micro_batch: int, accum: int, device: str, bf16: bool = False,
    ) -> None:
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
        # DeepSpeed print()s that it built its shared-memory op on every rank: log it instead.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=self.config, dist_init_required=False
            )
        for line in printed.getvalue().splitlines():
            log.debug("deepspeed: %s", line)
        self.module = self.engine.module
        self._logger = deepspeed.comm.comms_logger
        self._reported: dict[str, int] = {}
        self.steps = 0

    def forward_backward(self, batch: DiffusionBatch, scale: float) -> StepOutput:
        for group in self.optimizer.param_groups:
            group["lr"] = self.opt.lr_at(self.steps)
        self.engine.train()
        loss = diffusion_loss(self.engine, self.schedule, batch)
        # DeepSpeed divides the loss by its gradient_accumulation_steps itself, and its step()
        # applies the optimizer only at the accumulation boundary.
        self.engine.backward(loss)
        self.engine.step()
        return StepOutput(loss=float(loss.detach().float()) * scale / self.comm.world_size, samples=len(batch))

    def zero_grad(self) -> None:
        pass  # DeepSpeed clears its gradients in engine.step()

    def optimizer_step(self) -> None:
        self.steps += 1
        self._report_traffic()

    def stats(self) -> ExecutorStats:
        return ExecutorStats()

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


def build(ctx: EngineContext) -> DeepSpeedEngine:
    """ZeRO over all ranks; each rank's rows of a step arrive as ``grad_accum`` micro-batches."""
    cfg = ctx.cfg
    if ctx.bf16 and not ctx.device.startswith("cuda"):
        raise ConfigError("diffusion.precision=bf16 with engine=deepspeed needs a CUDA device here; use engine=ddp for bf16 on CPU")
    micro = (ctx.rows.stop - ctx.rows.start) // cfg.grad_accum
    return DeepSpeedEngine(
        ctx.model, ctx.schedule, ctx.comm, cfg.optimizer, zero_stage=cfg.zero_stage, micro_batch=micro,
        accum=cfg.grad_accum, device=ctx.device, bf16=ctx.bf16,
    )
