"""Preemption with real processes and real signals: SIGTERM (or SLURM's SIGUSR1) makes every rank
finish its step, checkpoint together and exit 75, even with no checkpoint cadence configured;
--resume then ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strata.errors import Preempted
from strata.storage import checkpoint
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

JOB = """
name: run
data: {{store: {store}}}
model: {{name: sage, hidden: 32, num_layers: 2, dropout: 0.3}}
train: {{executor: minibatch, epochs: {epochs}, lr: 0.01, weight_decay: 0.0, batch_size: 64, fanouts: [5, 5], seed: 7}}
checkpoint: {{every_steps: 0, keep: 2}}
"""
EPOCHS = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=2000, avg_degree=8, num_classes=4, feat_dim=16, seed=1), url, progress=False)
    return url


def _start(workdir: Path, store: str, *extra: str) -> subprocess.Popen:
    workdir.mkdir(exist_ok=True)
    (workdir / "job.yaml").write_text(JOB.format(store=store, epochs=EPOCHS))
    return subprocess.Popen(
        [sys.executable, "-m", "strata.launch.cli", "train", "job.yaml", "--json", "-q", *extra],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for_epochs(workdir: Path, proc: subprocess.Popen, epochs: int) -> None:
    log = workdir / "runs/run/metrics.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().count('"event": "epoch"') >= epochs):
        assert proc.poll() is None, f"training ended before the signal:\n{proc.stderr.read()}"
        assert time.time() < deadline, "training made no progress in time"
        time.sleep(0.05)


def _result(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_checkpoints_and_resume_ends_like_the_uninterrupted_run(tmp_path: Path, store: str, signum: int) -> None:
    reference = _start(tmp_path / "reference", store)
    victim_dir = tmp_path / "victim"
    victim = _start(victim_dir, store)
    _wait_for_epochs(victim_dir, victim, 2)
    victim.send_signal(signum)
    _, err = victim.communicate(timeout=300)
    assert victim.returncode == Preempted.exit_code, err
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step" in err and "--resume" in err and "Traceback" not in err
    stopped_at = int(err.split("after step ")[1].split(";")[0])
    assert checkpoint.latest_step(str(victim_dir / "runs/run/checkpoints")) == stopped_at < EPOCHS * 19

    resumed = _start(victim_dir, store, "--resume")
    out_resumed, err_resumed = resumed.communicate(timeout=600)
    out_reference, err_reference = reference.communicate(timeout=600)
    assert resumed.returncode == 0, err_resumed
    assert reference.returncode == 0, err_reference
    a, b = _result(out_resumed), _result(out_reference)
    for key in ("epochs", "steps", "best_epoch", "val_acc", "test_acc", "final_loss"):
        assert a[key] == b[key], key


def test_sigterm_to_the_local_launcher_stops_both_ranks_at_one_checkpoint(tmp_path: Path, store: str) -> None:
    workdir = tmp_path / "two"
    proc = _start(workdir, store, "--nproc-per-node", "2")
    _wait_for_epochs(workdir, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    root = str(workdir / "runs/run/checkpoints")
    step = checkpoint.latest_step(root)
    assert step is not None and 0 < step < EPOCHS * 19, err  # written when stopped, mid-run
    assert checkpoint.read_marker(root, step)["world_size"] == 2
    assert proc.returncode == Preempted.exit_code, err
    assert "stopped by SIGTERM after step" in err and "Traceback" not in err, err
    resumed = _start(workdir, store, "--nproc-per-node", "2", "--resume")
    out, err_resumed = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err_resumed
    assert _result(out)["steps"] == EPOCHS * 19  # 1200 training nodes over 2 ranks, 32 seeds a step each
