"""Progress without a terminal: a log line when a long step starts, about every half minute and at
its end; and the figures the loop shows are the epoch's mean training loss beside the epoch's
evaluation, not the last mini-batch's loss."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from strata.runtime.config import MetricsConfig
from strata.runtime.dist.comm import Comm
from strata.runtime.loop import LoopConfig, LoopState, run_loop
from strata.runtime.metrics import TrainingMetrics
from strata.runtime.progress import ProgressLog, progress_bar
from tests.runtime.test_loop import LinearExecutor, LinearJob


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_log_line_at_the_start_every_interval_and_at_the_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="strata.progress")
    clock = Clock()
    bar = ProgressLog(total=2000, desc="router", every=30.0, clock=clock)
    for _ in range(100):  # 1/8 s a step
        clock.now += 0.125
        bar.update(1)
    bar.set_postfix({"loss": "0.3120"}, refresh=False)
    for _ in range(300):
        clock.now += 0.125
        bar.update(1)
    clock.now += 5
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # step 1, the first update 30 s after it, the end
    assert lines[0].startswith("router: step 1 of 2,000 (0%)")
    assert lines[1] == "router: step 241 of 2,000 (12%), loss 0.3120; 8.00 steps/s, about 3m40s left"
    assert lines[2] == "router: step 400 of 2,000 (20%), loss 0.3120; 7.27 steps/s, done in 55s"


def test_nothing_is_formatted_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="strata.progress")
    bar = progress_bar(total=10, desc="train", enabled=False)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert caplog.records == []


def test_the_loop_shows_the_epoch_mean_loss_beside_its_evaluation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="strata.progress")
    job = LinearJob(LinearExecutor(), [[8], [8], [8], [8]])
    losses: list[float] = []
    metrics = TrainingMetrics(MetricsConfig(), rank=0, local_rank=0, executor="toy", jsonl_url=None)
    try:
        state = run_loop(job, LoopConfig(epochs=2, checkpoint_dir=str(tmp_path), desc="toy"), comm=Comm(0, 1),
                         metrics=metrics, on_step=lambda s: losses.append(s.last_loss))
    finally:
        metrics.close()
    assert isinstance(state, LoopState) and len(losses) == 8
    second_epoch_mean = sum(losses[4:]) / 4
    assert abs(second_epoch_mean - losses[-1]) > 1e-4  # the two differ, so the test can tell them apart
    last = caplog.records[-1].getMessage()
    assert last.startswith(f"toy: step 8 of 8 (100%), epoch 1, loss {second_epoch_mean:.4f}"), last


def test_the_loop_trains_the_same_with_and_without_progress_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    weights = []
    for level in (logging.INFO, logging.WARNING):
        caplog.set_level(level, logger="strata.progress")
        job = LinearJob(LinearExecutor(), [[8], [8], [8]])
        metrics = TrainingMetrics(MetricsConfig(), rank=0, local_rank=0, executor="toy", jsonl_url=None)
        try:
            run_loop(job, LoopConfig(epochs=2, checkpoint_dir=str(tmp_path / str(level))), comm=Comm(0, 1), metrics=metrics)
        finally:
            metrics.close()
        weights.append([p.detach().clone() for p in job.executor.model.parameters()])
    for a, b in zip(*weights):
        assert torch.equal(a, b)
