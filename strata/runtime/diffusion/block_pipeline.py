"""Pipeline parallelism over a diffusion model's blocks: each rank is a stage that owns a run of
consecutive layers, and every global batch flows through the stages as micro-batches.

The pipeline is the layer pipeline's: the same schedules (:mod:`pipeline_schedule`, GPipe
or 1F1B, checked by its simulator) and the same cost-balanced cut of a layer list
(:func:`strata.partitioners.stages.split_stages`); here a chunk is a micro-batch of images
rather than a piece of a graph. What crosses a stage boundary is the tuple of tensors one
layer hands the next (for a DiT, the tokens and the conditioning vector), in both directions.

Every stage draws the whole global batch (it is a pure function of the step), so the first
stage noises the images and the last computes the target and loss without further messages.
The loss of a step is the mean of the micro-batch means, the single-process loss of the same
batch; gradient clipping uses the norm over all stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from strata.models.diffusion.layered import run_layers
from strata.models.diffusion.schedule import NoiseSchedule
from strata.partitioners.stages import split_stages
from strata.runtime.diffusion.config import OptimizerConfig
from strata.runtime.diffusion.engines import DiffusionBatch, EngineContext
from strata.runtime.dist.comm import Comm
from strata.runtime.loop import ExecutorStats, StepOutput
from strata.runtime.pipeline.schedule import (
    SCHEDULES,
    Backward,
    Forward,
    RecvActivation,
    RecvGrad,
    SendActivation,
    SendGrad,
)


@dataclass(frozen=True)
class Slot:
    """One tensor of a boundary state, without its batch dimension."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def differentiable(self) -> bool:
        return self.dtype.is_floating_point


@dataclass
class PipelineStats:
    busy_seconds: float = 0.0
    pass_seconds: float = 0.0
    bubbles: list[float] = field(default_factory=list)

    @property
    def bubble_ratio(self) -> float:
        return 1.0 - self.busy_seconds / self.pass_seconds if self.pass_seconds else 0.0


def boundary_slots(layers: nn.ModuleList, example: tuple[Tensor, ...]) -> list[list[Slot]]:
    """The tensors before layer 0 and after every layer, from one probe pass on one example."""
    slots = [[Slot(tuple(t.shape[1:]), t.dtype) for t in example]]
    state = example
    with torch.no_grad():
        for layer in layers:
            state = layer(state)
            slots.append([Slot(tuple(t.shape[1:]), t.dtype) for t in state])
    return slots


def parameter_costs(layers: nn.ModuleList) -> list[float]:
    """A layer's share of the work, taken as its parameter count (plus one, so parameter-free
    layers still count): DiT blocks are equal, embedding and head are light."""
    return [1.0 + sum(p.numel() for p in layer.parameters()) for layer in layers]


class BlockPipelineEngine:
    """One pipeline stage of a layered diffusion model (see the module docstring)."""

    name = "pipeline"

    def __init__(
        self, model: nn.Module, schedule: NoiseSchedule, comm: Comm, opt: OptimizerConfig, *, chunks: int, schedule_name: str
    ) -> None:
        self.module, self.schedule, self.comm, self.opt = model, schedule, comm, opt
        self.chunks, self.program_of = chunks, SCHEDULES[schedule_name]
        self.stage, self.num_stages = comm.rank, comm.world_size
        self.ranges = split_stages(parameter_costs(model.layers), self.num_stages)
        self.stage_of = [s for s, r in enumerate(self.ranges) for _ in r]
        mine = self.ranges[self.stage]
        self.layers = [model.layers[i] for i in mine]
        c, h, w = model.image_shape
        device = next(model.parameters()).device
        probe = (torch.zeros(1, c, h, w, device=device), torch.zeros(1, dtype=torch.int64, device=device),
                 torch.full((1,), model.null_label, dtype=torch.int64, device=device))
        slots = boundary_slots(model.layers, probe)
        self.in_slots, self.out_slots = slots[mine.start], slots[mine.stop]
        self.device = device
        params = [p for layer in self.layers for p in layer.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
        self.params = params
        self.last_pass = PipelineStats()
        self.steps = 0

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.num_stages - 1

    def _empty(self, slots: list[Slot], rows: int) -> list[Tensor]:
        return [torch.empty((rows, *s.shape), dtype=s.dtype, device=self.device) for s in slots]

    def forward_backward(self, batch: DiffusionBatch, scale: float) -> StepOutput:
        """Forward and backward of the whole global batch, cut into this pipeline's chunks."""
        self.module.train()
        loss = self._run_pass(batch.split(self.chunks))  # non-zero on the last stage only
        return StepOutput(loss=loss * scale, samples=len(batch) if self.first else 0)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.opt.lr_at(self.steps)
        self._clip()
        self.optimizer.step()
        self.steps += 1

    def stats(self) -> ExecutorStats:
        return ExecutorStats(bubble_ratio=self.last_pass.bubble_ratio)

    def _run_pass(self, chunks: list[DiffusionBatch]) -> float:
        program = self.program_of(self.stage, self.num_stages, len(chunks))
        inputs: dict[int, list[Tensor]] = {}
        outputs: dict[int, object] = {}
        grads: dict[int, list[Tensor]] = {}
        pending: list[tuple[object, Tensor]] = []
        loss_total, busy, started = 0.0, 0.0, time.perf_counter()
        for op in program:
            chunk = chunks[op.chunk]
            rows = len(chunk)
            if isinstance(op, RecvActivation):
                received = [self.comm.recv(t, self.stage - 1) for t in self._empty(self.in_slots, rows)]
                inputs[op.chunk] = [t.requires_grad_() if s.differentiable else t for t, s in zip(received, self.in_slots)]
            elif isinstance(op, Forward):
                t0 = time.perf_counter()
                if self.first:
                    state = (self.schedule.q_sample(chunk.x0, chunk.t, chunk.noise), chunk.t, chunk.y)
                else:
                    state = tuple(inputs[op.chunk])
                state = run_layers(self.layers, state)
                if self.last:
                    loss = self.schedule.loss(state[0], self.schedule.target(chunk.x0, chunk.noise, chunk.t)) / len(chunks)
                    loss_total += float(loss.detach())
                    outputs[op.chunk] = loss
                else:
                    outputs[op.chunk] = state
                busy += time.perf_counter() - t0
            elif isinstance(op, SendActivation):
                for t in outputs[op.chunk]:  # type: ignore[union-attr]
                    message = t.detach().contiguous()
                    pending.append((self.comm.isend(message, self.stage + 1), message))
            elif isinstance(op, RecvGrad):
                differentiable = [s for s in self.out_slots if s.differentiable]
                grads[op.chunk] = [self.comm.recv(t, self.stage + 1) for t in self._empty(differentiable, rows)]
            elif isinstance(op, Backward):
                t0 = time.perf_counter()
                out = outputs.pop(op.chunk)
                if self.last:
                    out.backward()  # type: ignore[union-attr]
                else:
                    pairs = [(t, g) for t, g in zip((t for t in out if t.dtype.is_floating_point), grads.pop(op.chunk))]  # type: ignore[union-attr]
                    pairs = [(t, g) for t, g in pairs if t.requires_grad]
                    if pairs:
                        torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
                busy += time.perf_counter() - t0
            elif isinstance(op, SendGrad):
                for t in inputs.pop(op.chunk):
                    if not t.dtype.is_floating_point:
                        continue
                    message = torch.zeros_like(t) if t.grad is None else t.grad.contiguous()
                    pending.append((self.comm.isend(message, self.stage - 1), message))
            else:  # pragma: no cover - the schedule module defines no other instructions
                raise TypeError(f"unknown pipeline instruction {op!r}")
        for work, _ in pending:
            work.wait()
        self.last_pass.busy_seconds = busy
        self.last_pass.pass_seconds = time.perf_counter() - started
        return loss_total

    def _clip(self) -> None:
        if not self.opt.grad_clip:
            return
        local = sum(float(p.grad.detach().pow(2).sum()) for p in self.params if p.grad is not None)
        (total,) = self.comm.sum_floats([local])
        norm = total**0.5
        if norm > self.opt.grad_clip:
            scale = self.opt.grad_clip / (norm + 1e-6)
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(scale)

    def assemble(self, model: nn.Module) -> None:
        """Give every rank's ``model`` each layer's weights from the stage that trains it."""
        for index, layer in enumerate(model.layers):
            for tensor in list(layer.parameters()) + list(layer.buffers()):
                with torch.no_grad():
                    self.comm.broadcast(tensor.data, src=self.stage_of[index])

    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

    def close(self) -> None:
        pass


def build(ctx: EngineContext) -> BlockPipelineEngine:
    """One stage per rank over the model's blocks; every stage sees every micro-batch."""
    cfg = ctx.cfg
    return BlockPipelineEngine(ctx.model, ctx.schedule, ctx.comm, cfg.optimizer, chunks=cfg.pipeline_chunks,
                               schedule_name=cfg.pipeline_schedule)
