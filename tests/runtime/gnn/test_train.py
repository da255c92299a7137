"""End-to-end training through the command line: accuracy, checkpoints, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strata.storage import checkpoint
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from tests.helpers.cli import run_strata

JOB = """
name: {name}
data: {{store: {store}}}
model: {{name: sage, hidden: 32, num_layers: 2, dropout: 0.3}}
train: {{mode: minibatch, epochs: {epochs}, lr: 0.01, weight_decay: 0.0, batch_size: 64, fanouts: [5, 5], seed: 7}}
checkpoint: {{every_steps: {every}, keep: 2}}
"""


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=2000, avg_degree=8, num_classes=4, feat_dim=16, seed=1), url, progress=False)
    return url


def _job(tmp_path: Path, store: str, name: str, epochs: int, every: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(JOB.format(name=name, store=store, epochs=epochs, every=every))
    return path


def test_minibatch_sage_learns_the_synthetic_signal(tmp_path: Path, small_store: str) -> None:
    cfg = _job(tmp_path, small_store, "learn", epochs=4, every=0)
    proc = run_strata("train", str(cfg), "--json", "-q", cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["test_acc"] > 0.8  # 4 classes: chance is 0.25
    assert result["epochs"] == 4 and result["steps"] == 4 * 19  # 1200 train nodes / 64 per batch
    events = [json.loads(line) for line in (tmp_path / "runs/learn/metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start"] + ["epoch"] * 4 + ["end"]
    assert checkpoint.latest_step(str(tmp_path / "runs/learn/checkpoints")) == 76


def _start(cfg: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "strata.launch.cli", "train", str(cfg), "--json", "-q", *extra],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path: Path, small_store: str) -> None:
    epochs, every = 40, 25
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    reference = _start(_job(reference_dir, small_store, "run", epochs, every), reference_dir)

    cfg = _job(killed_dir, small_store, "run", epochs, every)
    ckpt_root = str(killed_dir / "runs/run/checkpoints")
    victim = _start(cfg, killed_dir)
    deadline = time.time() + 300
    while (checkpoint.latest_step(ckpt_root) or 0) < 3 * every:
        assert victim.poll() is None, f"training ended before it could be killed:\n{victim.stderr.read()}"
        assert time.time() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    resumed_from = checkpoint.latest_step(ckpt_root)
    assert resumed_from is not None and resumed_from < epochs * 19

    resumed = _start(cfg, killed_dir, "--resume")
    out_resumed, err_resumed = resumed.communicate(timeout=600)
    out_reference, err_reference = reference.communicate(timeout=600)
    assert resumed.returncode == 0, err_resumed
    assert reference.returncode == 0, err_reference

    start_events = [
        json.loads(line) for line in (killed_dir / "runs/run/metrics.jsonl").read_text().splitlines() if '"start"' in line
    ]
    assert start_events[-1]["resumed_at"] == resumed_from
    a = json.loads(out_resumed.strip().splitlines()[-1])
    b = json.loads(out_reference.strip().splitlines()[-1])
    for key in ("epochs", "steps", "best_epoch", "val_acc", "test_acc", "final_loss"):
        assert a[key] == b[key], key


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path, small_store: str) -> None:
    cfg = _job(tmp_path, small_store, "fresh", epochs=1, every=0)
    proc = run_strata("train", str(cfg), "--resume", "--json", cwd=tmp_path)
    assert "no complete checkpoint" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 19


def test_quickstart_reports_accuracy_and_locations(tmp_path: Path) -> None:
    proc = run_strata("quickstart", "--workdir", str(tmp_path), "--nodes", "3000", "--epochs", "4", "-q")
    line = next(text for text in proc.stdout.splitlines() if "test accuracy" in text)
    accuracy = float(line.split("test accuracy")[1].split()[0])
    assert accuracy > 0.6  # 8 classes: chance is 0.125
    assert "training nodes/s" in proc.stdout
    assert (tmp_path / "store" / "_STRATA_COMPLETE").exists()
    assert str(tmp_path / "store") in proc.stdout and "checkpoints" in proc.stdout and "metrics" in proc.stdout


def test_every_command_explains_itself() -> None:
    import argparse

    from strata.launch.cli import build_parser

    top = run_strata("--help").stdout
    assert "strata trains graph neural networks" in top
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"ingest", "info", "train", "quickstart"} <= set(subparsers.choices)
    for name, parser in subparsers.choices.items():
        assert name in top
        text = run_strata(name, "--help").stdout
        assert text.startswith(f"usage: strata {name}")
        assert parser.description and parser.description.split()[0] in text
        assert len(text.splitlines()) > 4


def test_a_second_fresh_run_into_the_same_run_directory_is_refused_until_overwrite(tmp_path: Path, small_store: str) -> None:
    cfg = _job(tmp_path, small_store, "twice", 1, 10)
    run_strata("train", str(cfg), "-q", cwd=tmp_path)
    again = run_strata("train", str(cfg), "-q", "--set", "train.seed=8", cwd=tmp_path, check=False)
    assert again.returncode == 2
    assert "holds the checkpoints of run" in again.stderr and "add --resume" in again.stderr and "Traceback" not in again.stderr
    over = run_strata("train", str(cfg), "-q", "--set", "train.seed=8", "--overwrite", cwd=tmp_path)
    assert "done: 1 epochs" in over.stdout
