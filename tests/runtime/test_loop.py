"""The one step loop on a toy job (a linear model on fixed data, one process): accumulation
weights micro-batches by their samples, a resumed run makes exactly the uninterrupted run's
steps, a non-finite loss stops training before it is checkpointed, bf16 autocasts, and the
loop state of checkpoints written before the one loop still resumes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from strata.errors import StrataError
from strata.runtime.config import MetricsConfig
from strata.runtime.dist.comm import Comm
from strata.runtime.loop import (
    ExecutorStats,
    LoopConfig,
    LoopState,
    StepOutput,
    loop_state_of,
    micro_scales,
    run_loop,
    train_step,
)
from strata.runtime.metrics import TrainingMetrics
from strata.storage import checkpoint

ROWS, FEATURES = 48, 5


class Rows:
    """A micro-batch: some rows of the toy data."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)


class LinearExecutor:
    def __init__(self, poison_at: int = -1) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(FEATURES, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.calls, self.poison_at = 0, poison_at
        self.dtypes: list[torch.dtype] = []

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def forward_backward(self, batch: Rows, scale: float) -> StepOutput:
        out = self.model(batch.x)
        self.dtypes.append(out.dtype)
        loss = ((out.float().squeeze(1) - batch.y) ** 2).mean()
        self.calls += 1
        if self.calls == self.poison_at:
            loss = loss * math.nan
        (loss * scale).backward()
        return StepOutput(loss=float(loss.detach()) * scale, samples=len(batch))

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def stats(self) -> ExecutorStats:
        return ExecutorStats()


class LinearJob:
    """Steps of ``sizes`` rows each (one micro-batch per entry of a step), drawn per (epoch, step)."""

    def __init__(self, executor: LinearExecutor, sizes: list[list[int]]) -> None:
        self.executor, self.sizes = executor, sizes
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(ROWS, FEATURES, generator=g), torch.randn(ROWS, generator=g)
        self.evaluated: list[int] = []

    def steps_per_epoch(self) -> int:
        return len(self.sizes)

    def steps(self, epoch: int, start: int) -> Iterator[list[Rows]]:
        for step in range(start, len(self.sizes)):
            order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(1000 * epoch + step))
            micro, at = [], 0
            for size in self.sizes[step]:
                rows = order[at : at + size]
                micro.append(Rows(self.x[rows], self.y[rows]))
                at += size
            yield micro

    def after_step(self, state: LoopState) -> None:
        pass

    def end_epoch(self, state: LoopState) -> bool:
        self.evaluated.append(state.epoch)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.executor.model.state_dict(), "optimizer": self.executor.optimizer.state_dict()}

    def load_state_dict(self, shard: dict[str, Any], step: int, root: str) -> None:
        self.executor.model.load_state_dict(shard["model"])
        self.executor.optimizer.load_state_dict(shard["optimizer"])


def _run(job: LinearJob, root: Path, *, resume: bool = False, **cfg: Any) -> LoopState:
    metrics = TrainingMetrics(MetricsConfig(), rank=0, local_rank=0, executor="toy", jsonl_url=None)
    try:
        return run_loop(job, LoopConfig(checkpoint_dir=str(root), **cfg), comm=Comm(0, 1), metrics=metrics, resume=resume)
    finally:
        metrics.close()


def test_micro_batches_weigh_by_their_samples() -> None:
    assert micro_scales([Rows(torch.zeros(3, 1), torch.zeros(3)), Rows(torch.zeros(1, 1), torch.zeros(1))]) == [0.75, 0.25]


def test_accumulated_micro_batches_give_the_gradient_of_the_whole_batch() -> None:
    """Unequal micro-batches (12, 4, 8, 8 rows) against the 32 rows at once."""
    grads = []
    for sizes in ([32], [12, 4, 8, 8]):
        job = LinearJob(LinearExecutor(), [sizes])
        (micro,) = list(job.steps(0, 0))
        out = train_step(job.executor, micro, comm=Comm(0, 1))
        grads.append((out.loss, [p.grad.clone() for p in job.executor.model.parameters()]))
    (whole_loss, whole), (accum_loss, accum) = grads
    assert accum_loss == pytest.approx(whole_loss, rel=1e-6)
    for a, b in zip(whole, accum):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_resumed_run_makes_the_steps_of_the_uninterrupted_one(tmp_path: Path) -> None:
    sizes = [[8, 8]] * 5
    straight = LinearJob(LinearExecutor(), sizes)
    _run(straight, tmp_path / "straight", epochs=3)
    first = LinearJob(LinearExecutor(), sizes)
    stopped = _run(first, tmp_path / "resumed", epochs=3, max_steps=7, every_steps=2)
    assert (stopped.step, stopped.epoch, stopped.step_in_epoch) == (7, 1, 2)
    assert first.evaluated == [0]  # epoch 1 was cut short: no evaluation of a partial epoch
    again = LinearJob(LinearExecutor(), sizes)
    done = _run(again, tmp_path / "resumed", resume=True, epochs=3)
    assert (done.step, done.epoch) == (15, 3)
    assert again.evaluated == [1, 2]
    for a, b in zip(straight.executor.model.parameters(), again.executor.model.parameters()):
        assert torch.equal(a, b)


def test_a_job_without_epochs_resumes_to_a_larger_max_steps(tmp_path: Path) -> None:
    sizes = [[8]] * 100
    straight = LinearJob(LinearExecutor(), sizes)
    _run(straight, tmp_path / "straight", epochs=0, max_steps=6)
    _run(LinearJob(LinearExecutor(), sizes), tmp_path / "resumed", epochs=0, max_steps=4)
    again = LinearJob(LinearExecutor(), sizes)
    state = _run(again, tmp_path / "resumed", resume=True, epochs=0, max_steps=6)
    assert state.step == 6 and again.evaluated == []
    for a, b in zip(straight.executor.model.parameters(), again.executor.model.parameters()):
        assert torch.equal(a, b)


def test_a_non_finite_loss_stops_before_it_is_checkpointed(tmp_path: Path) -> None:
    job = LinearJob(LinearExecutor(poison_at=3), [[8]] * 5)
    with pytest.raises(StrataError, match=r"loss became nan at step 3 \(rank 0\); nothing after step 2 was checkpointed"):
        _run(job, tmp_path, epochs=1, every_steps=1)
    assert checkpoint.latest_step(str(tmp_path)) == 2


def test_bf16_autocasts_the_forward_and_fp32_does_not(tmp_path: Path) -> None:
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        job = LinearJob(LinearExecutor(), [[8]])
        _run(job, tmp_path / str(bf16), epochs=1, bf16=bf16)
        assert set(job.executor.dtypes) == {dtype}
        assert all(p.dtype == torch.float32 for p in job.executor.model.parameters())


def test_loop_state_of_checkpoints_written_before_the_one_loop() -> None:
    gnn = {"epoch": 4, "step_in_epoch": 2, "global_step": 30, "best_val_acc": 0.5, "best_val_loss": 1.0,
           "best_epoch": 3, "bad_epochs": 1, "last_loss": 0.25}
    assert loop_state_of(gnn, 30, "root") == {"step": 30, "epoch": 4, "step_in_epoch": 2, "last_loss": 0.25, "epoch_loss": 0.0}
    diffusion = {"step": 12, "images_seen": 1536, "last_loss": 0.5}
    assert loop_state_of(diffusion, 12, "root") == {"step": 12, "epoch": 0, "step_in_epoch": 12, "last_loss": 0.5, "epoch_loss": 0.0}
    router = {"step": 7, "loss": 0.75}
    assert loop_state_of(router, 7, "root")["last_loss"] == 0.75
    with pytest.raises(StrataError, match="has no loop state"):
        loop_state_of({"epoch": 1}, 5, "somewhere")
