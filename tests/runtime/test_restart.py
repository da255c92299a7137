"""`torchrun --max-restarts 1`: a worker killed with SIGKILL mid-epoch, the job resumes from the
last complete checkpoint and ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from strata.storage import checkpoint
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from tests.helpers.ports import free_port

JOB = """
name: run
data: {{store: {store}}}
model: {{name: sage, hidden: 16, num_layers: 2, dropout: 0.3}}
train: {{executor: minibatch, epochs: {epochs}, lr: 0.01, weight_decay: 0.0, batch_size: 60, fanouts: [4, 4], seed: 5}}
checkpoint: {{every_steps: {every}, keep: 2}}
"""
EPOCHS, EVERY, STEPS_PER_EPOCH = 40, 7, 10  # 600 training nodes: 300 per rank, 60 per global batch


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=1200, avg_degree=6, num_classes=4, feat_dim=8, seed=4), url, progress=False)
    return url


def _torchrun(workdir: Path, store: str) -> subprocess.Popen:
    workdir.mkdir()
    config = workdir / "job.yaml"
    config.write_text(JOB.format(store=store, epochs=EPOCHS, every=EVERY))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
        "--monitor-interval", "0.2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "strata.launch.cli", "train", str(config), "--json", "-q",
    ]
    return subprocess.Popen(
        command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _worker(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "strata.launch.cli" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"torchrun has no worker of rank {rank}")


def _result(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_sigkill_of_one_worker_resumes_and_ends_like_an_uninterrupted_run(tmp_path: Path, store: str) -> None:
    reference = _torchrun(tmp_path / "reference", store)
    victim = _torchrun(tmp_path / "killed", store)
    ckpt_root = str(tmp_path / "killed" / "runs/run/checkpoints")
    deadline = time.monotonic() + 300
    while (checkpoint.latest_step(ckpt_root) or 0) < 3 * EVERY:
        assert victim.poll() is None, f"training ended before a worker could be killed:\n{victim.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    seen = checkpoint.latest_step(ckpt_root)
    _worker(victim, 1).send_signal(signal.SIGKILL)

    out_killed, err_killed = victim.communicate(timeout=600)
    out_reference, err_reference = reference.communicate(timeout=600)
    assert victim.returncode == 0, err_killed
    assert reference.returncode == 0, err_reference

    starts = [
        json.loads(line) for line in (tmp_path / "killed/runs/run/metrics.jsonl").read_text().splitlines() if '"start"' in line
    ]
    assert len(starts) == 2, "the job was not restarted"
    assert starts[0]["restart_count"] == 0 and starts[1]["restart_count"] == 1
    resumed_at = starts[1]["resumed_at"]
    assert resumed_at >= seen and resumed_at % EVERY == 0 and resumed_at < EPOCHS * STEPS_PER_EPOCH
    assert resumed_at % STEPS_PER_EPOCH != 0 or resumed_at != seen  # informative only when mid-epoch
    a, b = _result(out_killed), _result(out_reference)
    assert a["world_size"] == b["world_size"] == 2
    for key in ("epochs", "steps", "best_epoch", "val_acc", "test_acc", "final_loss"):
        assert a[key] == b[key], key


def _resume_two_ranks(topology, store: str, run_dir: str) -> str:
    from strata.errors import CheckpointError
    from strata.models.config import ModelConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.trainer import train_node_classifier

    try:
        train_node_classifier(
            DataConfig(store=store), ModelConfig(name="gcn", hidden=8), TrainConfig(executor="layer_pipeline", epochs=2),
            CheckpointConfig(), MetricsConfig(), run_dir=run_dir, resume=True, progress=False, topology=topology,
        )
    except CheckpointError as exc:
        return str(exc)
    return "resumed"


def test_resume_of_a_layer_pipeline_at_another_world_size_is_refused(tmp_path: Path, store: str) -> None:
    """Its shards hold one pipeline stage's parameters each: they do not re-split (minibatch and
    graph_parallel do: tests/runtime/gnn/test_elastic_resume.py)."""
    from strata.models.config import ModelConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.trainer import train_node_classifier
    from tests.helpers.workers import run_workers

    run_dir = str(tmp_path / "run")
    train_node_classifier(
        DataConfig(store=store), ModelConfig(name="gcn", hidden=8), TrainConfig(executor="layer_pipeline", epochs=1),
        CheckpointConfig(), MetricsConfig(), run_dir=run_dir, progress=False,
    )
    for message in run_workers(_resume_two_ranks, 2, store, run_dir):
        assert "was written by 1 processes but this run has 2" in message
        assert "layer_pipeline gives each process a stage" in message and "resume with 1 processes" in message
