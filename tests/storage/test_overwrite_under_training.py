"""`strata ingest --overwrite` of a store a training is reading is refused, before any work and
again at the swap, and the training's store stays as it was; once the training ends the
overwrite goes through."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from strata.launch.cli import main
from strata.storage import fs, layout
from strata.testing.polling import poll


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    def running() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"the training ended before {what}: {proc.communicate()}")

    if not poll(predicate, timeout, interval=0.1, alive=running):
        raise AssertionError(f"timed out waiting for {what}")


def test_an_overwrite_is_refused_while_a_training_reads_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    ingest = ["ingest", "synthetic", "--out", store, "--nodes", "400", "-q"]
    assert main(ingest) == 0
    marker = fs.read_text(fs.join(store, layout.MARKER))
    job = tmp_path / "job.yaml"
    job.write_text(f"name: t\ndata: {{store: {store}}}\nrun_dir: {tmp_path / 'run'}\ntrain: {{executor: full, epochs: 100000}}\n")
    training = subprocess.Popen([sys.executable, "-m", "strata.launch.cli", "train", str(job), "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and '"event": "start"' in metrics.read_text(), 120, "the training to start", training)
        capsys.readouterr()
        assert main([*ingest, "--overwrite", "--seed", "9"]) == 2
        err = capsys.readouterr().err
        assert "is being read by a running training" in err and "another --out" in err
        assert fs.read_text(fs.join(store, layout.MARKER)) == marker
    finally:
        training.send_signal(signal.SIGTERM)
        training.communicate(timeout=120)
    assert training.returncode == 75  # stopped at a checkpoint
    assert main([*ingest, "--overwrite", "--seed", "9"]) == 0
    assert fs.read_text(fs.join(store, layout.MARKER)) != marker
