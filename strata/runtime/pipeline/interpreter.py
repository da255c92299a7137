"""The one pipeline interpreter: it runs a stage's program (:mod:`strata.runtime.pipeline.schedule`)
for the GNN layer pipeline and the diffusion block pipeline alike.

What differs between pipelines is small, and a stage supplies it (:class:`PipelineStage`): the
empty tensors a chunk's messages are received into, and its forward. The rest is the same for
every pipeline, so the interpreter does it:

- A message is a list of tensors (one for the GNN pipeline's packed ``h``; one per slot of a
  boundary state for the diffusion pipeline, integer slots included). Empty tensors are neither
  sent nor received: both sides skip them, as a chunk without rows has nothing to say.
- ``RecvActivation`` receives into the stage's buffers; its floating-point tensors become leaves
  that require grad, so their ``.grad`` after the backward is what ``SendGrad`` sends (zeros for
  an input the stage's outputs do not depend on).
- ``Forward`` calls the stage; on the last stage it returns the chunk's loss (a scalar, already
  scaled to its share of the pass), elsewhere the tensors to send on.
- ``SendActivation`` posts the outputs, detached; ``SendGrad`` posts the inputs' gradients.
  Sends do not block: the interpreter keeps every message alive and waits on all of them at the
  end of the pass.
- ``RecvGrad`` receives the gradients of the outputs' floating-point tensors, in order;
  ``Backward`` back-propagates the loss on the last stage, elsewhere those gradients through the
  outputs that require grad.

Forward and backward time counts as busy; with the pass's wall time it gives the bubble ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from strata.runtime.pipeline.schedule import (
    Backward,
    Forward,
    Instruction,
    RecvActivation,
    RecvGrad,
    SendActivation,
    SendGrad,
)


@dataclass
class PipelineStats:
    """What one training pass of one stage did."""

    busy_seconds: float = 0.0
    """Seconds spent in forwards and backwards."""
    pass_seconds: float = 0.0
    """Wall time of the whole pass, waiting on messages included."""
    sent_bytes: int = 0
    """Bytes this stage posted to its neighbours (activations and gradients)."""

    @property
    def bubble_ratio(self) -> float:
        """Idle share of the pass (0.0 before any pass)."""
        return 1.0 - self.busy_seconds / self.pass_seconds if self.pass_seconds else 0.0


class Work(Protocol):
    def wait(self) -> object: ...


class Messenger(Protocol):
    """Point-to-point messaging between stages (:class:`strata.runtime.dist.comm.Comm` is one)."""

    def isend(self, tensor: Tensor, dst: int) -> Work: ...

    def recv(self, tensor: Tensor, src: int) -> Tensor: ...


class PipelineStage(Protocol):
    """What a stage supplies for one pass; ``chunk`` indexes the pass's chunks."""

    def activation_buffers(self, chunk: int) -> list[Tensor]:
        """Empty tensors to receive the chunk's inputs into, one per tensor of the message."""
        ...

    def forward(self, chunk: int, inputs: list[Tensor] | None) -> Tensor | Sequence[Tensor]:
        """The chunk through this stage's layers: the loss on the last stage, else the outputs to
        send on. ``inputs`` are the received tensors (``None`` on the first stage)."""
        ...

    def grad_buffers(self, chunk: int) -> list[Tensor]:
        """Empty tensors to receive the gradients of the chunk's floating-point outputs into."""
        ...


class _Pass:
    """The state of one pass: what each chunk received and computed, and the sends in flight."""

    def __init__(self, stage: PipelineStage, link: Messenger, prev_rank: int | None, next_rank: int | None) -> None:
        self.stage, self.link, self.prev_rank, self.next_rank = stage, link, prev_rank, next_rank
        self.inputs: dict[int, list[Tensor]] = {}
        self.outputs: dict[int, Tensor | Sequence[Tensor]] = {}
        self.grads: dict[int, list[Tensor]] = {}
        self.pending: list[tuple[Work, Tensor]] = []  # the message stays alive until its send ends
        self.loss = 0.0
        self.stats = PipelineStats()
        self.handlers: dict[type[Instruction], Callable[[int], None]] = {
            RecvActivation: self.recv_activation,
            Forward: self.forward,
            SendActivation: self.send_activation,
            RecvGrad: self.recv_grad,
            Backward: self.backward,
            SendGrad: self.send_grad,
        }

    @property
    def last(self) -> bool:
        return self.next_rank is None

    def _recv(self, buffers: list[Tensor], src: int | None) -> list[Tensor]:
        assert src is not None, "a stage without that neighbour received a message"
        return [self.link.recv(t, src) if t.numel() else t for t in buffers]

    def _send(self, messages: Sequence[Tensor], dst: int | None) -> None:
        assert dst is not None, "a stage without that neighbour sent a message"
        for message in messages:
            if message.numel():
                self.pending.append((self.link.isend(message, dst), message))
                self.stats.sent_bytes += message.numel() * message.element_size()

    def recv_activation(self, chunk: int) -> None:
        received = self._recv(self.stage.activation_buffers(chunk), self.prev_rank)
        self.inputs[chunk] = [t.requires_grad_() if t.dtype.is_floating_point else t for t in received]

    def forward(self, chunk: int) -> None:
        started = time.perf_counter()
        out = self.stage.forward(chunk, self.inputs.get(chunk))
        if self.last != isinstance(out, Tensor):
            raise TypeError(f"a stage's forward returns its loss (one tensor) on the last stage, else a list of outputs; got {type(out)}")
        if self.last:
            self.loss += float(out.detach())  # type: ignore[union-attr]
        self.outputs[chunk] = out
        self.stats.busy_seconds += time.perf_counter() - started

    def send_activation(self, chunk: int) -> None:
        self._send([t.detach().contiguous() for t in self.outputs[chunk]], self.next_rank)

    def recv_grad(self, chunk: int) -> None:
        self.grads[chunk] = self._recv(self.stage.grad_buffers(chunk), self.next_rank)

    def backward(self, chunk: int) -> None:
        started = time.perf_counter()
        out = self.outputs.pop(chunk)
        if self.last:
            out.backward()  # type: ignore[union-attr]
        else:
            floating = [t for t in out if t.dtype.is_floating_point]  # what RecvGrad received gradients of
            pairs = [(t, g) for t, g in zip(floating, self.grads.pop(chunk)) if t.requires_grad]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        self.stats.busy_seconds += time.perf_counter() - started

    def send_grad(self, chunk: int) -> None:
        inputs = [t for t in self.inputs.pop(chunk) if t.dtype.is_floating_point]
        self._send([torch.zeros_like(t) if t.grad is None else t.grad.contiguous() for t in inputs], self.prev_rank)


def interpret(
    program: Sequence[Instruction], stage: PipelineStage, link: Messenger, *, prev_rank: int | None, next_rank: int | None
) -> tuple[float, PipelineStats]:
    """Run one stage's ``program`` (see the module docstring), exchanging messages over ``link``
    with ``prev_rank`` and ``next_rank`` (``None`` on the first and last stage). Parameter
    gradients accumulate in ``.grad``. Returns the sum of the chunks' losses (0.0 except on the
    last stage) and what the pass did."""
    state = _Pass(stage, link, prev_rank, next_rank)
    started = time.perf_counter()
    for op in program:
        handler = state.handlers.get(type(op))
        if handler is None:
            raise TypeError(f"unknown pipeline instruction {op!r}: the interpreter runs {sorted(t.__name__ for t in state.handlers)}")
        handler(op.chunk)
    for work, _ in state.pending:
        work.wait()
    state.stats.pass_seconds = time.perf_counter() - started
    return state.loss, state.stats
