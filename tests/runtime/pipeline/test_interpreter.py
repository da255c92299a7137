"""The pipeline interpreter without processes: stages run in threads and talk through queues, and
together they compute the loss and gradients of the unpipelined model, under every schedule."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.runtime.pipeline.interpreter import PipelineStats, interpret
from strata.runtime.pipeline.schedule import SCHEDULES, Forward, Instruction, gpipe

WIDTH, CLASSES = 5, 3


class _Done:
    def wait(self) -> None:
        return None


@dataclass
class _Queues:
    """Point-to-point messages between threads, in order per (src, dst) pair, as gloo keeps them."""

    boxes: dict[tuple[int, int], queue.Queue] = field(default_factory=dict)
    sent: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def box(self, src: int, dst: int) -> queue.Queue:
        with self.lock:
            return self.boxes.setdefault((src, dst), queue.Queue())

    def link(self, rank: int) -> _Link:
        return _Link(self, rank)


@dataclass
class _Link:
    queues: _Queues
    rank: int

    def isend(self, tensor: Tensor, dst: int) -> _Done:
        with self.queues.lock:
            self.queues.sent.append((self.rank, dst, tuple(tensor.shape)))
        self.queues.box(self.rank, dst).put(tensor.clone())
        return _Done()

    def recv(self, tensor: Tensor, src: int) -> Tensor:
        return tensor.copy_(self.queues.box(src, self.rank).get(timeout=30))


def _layers() -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(3)] + [nn.Linear(WIDTH, CLASSES)]


def _data(rows: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(rows, WIDTH, generator=g), torch.randint(0, CLASSES, (rows,), generator=g)


@dataclass
class _ToyStage:
    """Stage ``index`` of ``num_stages`` over ``layers``; a message is (activations, labels): one
    floating-point tensor that carries gradient and one integer slot that only travels forward."""

    layers: list[nn.Module]
    index: int
    num_stages: int
    chunks: list[tuple[Tensor, Tensor]]

    def activation_buffers(self, chunk: int) -> list[Tensor]:
        rows = len(self.chunks[chunk][1])
        return [torch.empty(rows, WIDTH), torch.empty(rows, dtype=torch.int64)]

    def forward(self, chunk: int, inputs: list[Tensor] | None) -> Tensor | Sequence[Tensor]:
        h, y = self.chunks[chunk] if inputs is None else inputs
        for layer in self.layers:
            h = layer(h)
        if self.index == self.num_stages - 1:
            return F.cross_entropy(h, y, reduction="sum") / sum(len(c[1]) for c in self.chunks)
        return [h, y]

    def grad_buffers(self, chunk: int) -> list[Tensor]:
        return [torch.empty(len(self.chunks[chunk][1]), WIDTH)]


def _run(schedule: str, num_stages: int, sizes: list[int]) -> tuple[list[float], list[PipelineStats], dict[str, Tensor], _Queues]:
    layers = _layers()
    x, y = _data(sum(sizes))
    chunks = list(zip(x.split(sizes), y.split(sizes)))
    spans = [[0, 1, 2, 3][s * 4 // num_stages : (s + 1) * 4 // num_stages] for s in range(num_stages)]
    queues = _Queues()
    results: dict[int, tuple[float, PipelineStats]] = {}
    errors: list[BaseException] = []

    def stage(s: int) -> None:
        try:
            program = SCHEDULES[schedule](s, num_stages, len(chunks))
            toy = _ToyStage([layers[i] for i in spans[s]], s, num_stages, chunks)
            prev_rank, next_rank = (s - 1 if s > 0 else None), (s + 1 if s < num_stages - 1 else None)
            results[s] = interpret(program, toy, queues.link(s), prev_rank=prev_rank, next_rank=next_rank)
        except BaseException as error:  # surfaced in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=stage, args=(s,)) for s in range(num_stages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    grads = {f"{i}.{n}": p.grad for i, layer in enumerate(layers) for n, p in layer.named_parameters()}
    return [results[s][0] for s in range(num_stages)], [results[s][1] for s in range(num_stages)], grads, queues


def _reference(sizes: list[int]) -> tuple[float, dict[str, Tensor]]:
    layers = _layers()
    h, y = _data(sum(sizes))
    for layer in layers:
        h = layer(h)
    loss = F.cross_entropy(h, y, reduction="sum") / len(y)
    loss.backward()
    return loss.item(), {f"{i}.{n}": p.grad for i, layer in enumerate(layers) for n, p in layer.named_parameters()}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("num_stages", [1, 2, 4])
def test_stages_together_compute_the_unpipelined_loss_and_gradients(schedule: str, num_stages: int) -> None:
    sizes = [4, 3, 5]
    losses, stats, grads, queues = _run(schedule, num_stages, sizes)
    loss, expected = _reference(sizes)
    assert losses[-1] == pytest.approx(loss, rel=1e-6)
    assert all(value == 0.0 for value in losses[:-1]), "only the last stage has a loss"
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)
    # Forward: activations (float32) and labels (int64) across each boundary; backward: only the
    # activations' gradients, the integer slot has none.
    rows = sum(sizes)
    for s, stat in enumerate(stats):
        forward = rows * (WIDTH * 4 + 8) if s < num_stages - 1 else 0
        backward = rows * WIDTH * 4 if s > 0 else 0
        assert stat.sent_bytes == forward + backward, s
        assert 0.0 <= stat.busy_seconds <= stat.pass_seconds and 0.0 <= stat.bubble_ratio < 1.0
    assert len(queues.sent) == (num_stages - 1) * len(sizes) * 3


def test_an_empty_chunk_is_neither_sent_nor_received() -> None:
    sizes = [4, 0, 5]
    losses, _, grads, queues = _run("1f1b", 2, sizes)
    loss, expected = _reference(sizes)
    assert losses[-1] == pytest.approx(loss, rel=1e-6)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6)
    assert queues.sent and all(shape[0] > 0 for _, _, shape in queues.sent)


def test_a_stage_that_returns_one_tensor_before_the_last_stage_is_refused() -> None:
    class Wrong(_ToyStage):
        def forward(self, chunk: int, inputs: list[Tensor] | None) -> Tensor | Sequence[Tensor]:
            return super().forward(chunk, inputs)[0]

    stage = Wrong(_layers()[:1], 0, 2, [_data(3)])
    with pytest.raises(TypeError, match="list of outputs"):
        interpret(gpipe(0, 2, 1), stage, _Queues().link(0), prev_rank=None, next_rank=1)


def test_an_unknown_instruction_is_refused_by_name() -> None:
    class Load(Instruction):
        pass

    stage = _ToyStage(_layers(), 0, 1, [_data(3)])
    with pytest.raises(TypeError, match="Load"):
        interpret([Load(0), Forward(0)], stage, _Queues().link(0), prev_rank=None, next_rank=None)


def test_stats_before_any_pass_have_no_bubble() -> None:
    assert PipelineStats().bubble_ratio == 0.0
    assert PipelineStats(busy_seconds=1.0, pass_seconds=4.0).bubble_ratio == pytest.approx(0.75)
