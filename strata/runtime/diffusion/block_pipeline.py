"""Pipeline parallelism over a diffusion model's blocks: each rank is a stage that owns a run of
consecutive layers, and every global batch flows through the stages as micro-batches.

The pipeline is the layer pipeline's: the same schedules (:mod:`strata.runtime.pipeline.schedule`,
GPipe or 1F1B, checked by its simulator), run by the same interpreter
(:mod:`strata.runtime.pipeline.interpreter`), and the same cost-balanced cut of a layer list
(:func:`strata.partitioners.stages.split_stages`); here a chunk is a micro-batch of images
rather than a piece of a graph. What crosses a stage boundary is the tuple of tensors one
layer hands the next (for a DiT, the tokens and the conditioning vector), in both directions.

Every stage draws the whole global batch (it is a pure function of the step), so the first
stage noises the images and the last computes the target and loss without further messages.
The loss of a step is the mean of the micro-batch means, the single-process loss of the same
batch; gradient clipping uses the norm over all stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from strata.models.diffusion.layered import run_layers
from strata.models.diffusion.schedule import NoiseSchedule
from strata.partitioners.stages import split_stages
from strata.runtime.diffusion.config import OptimizerConfig
from strata.runtime.diffusion.engines import DiffusionBatch, EngineContext
from strata.runtime.dist.comm import Comm
from strata.runtime.loop import ExecutorStats, StepOutput
from strata.runtime.pipeline.interpreter import PipelineStats, interpret
from strata.runtime.pipeline.schedule import SCHEDULES


@dataclass(frozen=True)
class Slot:
    """One tensor of a boundary state, without its batch dimension."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def differentiable(self) -> bool:
        return self.dtype.is_floating_point


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
        prev_rank = None if self.first else self.stage - 1
        next_rank = None if self.last else self.stage + 1
        loss, self.last_pass = interpret(program, _BlockStage(self, chunks), self.comm, prev_rank=prev_rank, next_rank=next_rank)
        return loss

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


@dataclass
class _BlockStage:
    """This rank's stage over one pass's micro-batches, as the pipeline interpreter sees it: a
    message is the boundary state, one tensor per slot (integer slots travel forward only)."""

    engine: BlockPipelineEngine
    chunks: list[DiffusionBatch]

    def activation_buffers(self, chunk: int) -> list[Tensor]:
        return self.engine._empty(self.engine.in_slots, len(self.chunks[chunk]))

    def forward(self, chunk: int, inputs: list[Tensor] | None) -> Tensor | Sequence[Tensor]:
        engine, batch = self.engine, self.chunks[chunk]
        if inputs is None:  # the first stage noises its micro-batch
            state = (engine.schedule.q_sample(batch.x0, batch.t, batch.noise), batch.t, batch.y)
        else:
            state = tuple(inputs)
        state = run_layers(engine.layers, state)
        if engine.last:
            return engine.schedule.loss(state[0], engine.schedule.target(batch.x0, batch.noise, batch.t)) / len(self.chunks)
        return list(state)

    def grad_buffers(self, chunk: int) -> list[Tensor]:
        differentiable = [s for s in self.engine.out_slots if s.differentiable]
        return self.engine._empty(differentiable, len(self.chunks[chunk]))


def build(ctx: EngineContext) -> BlockPipelineEngine:
    """One stage per rank over the model's blocks; every stage sees every micro-batch."""
    cfg = ctx.cfg
    return BlockPipelineEngine(ctx.model, ctx.schedule, ctx.comm, cfg.optimizer, chunks=cfg.pipeline_chunks,
                               schedule_name=cfg.pipeline_schedule)
