"""`strata train` as a user runs it: progress lines when no terminal watches, nothing but strata's
own lines, one error per job rather than one per process, and no empty run directory left
behind by a training that failed before it wrote anything."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.cli import run_strata
from tests.launch.conftest import gnn_job

NOT_STRATAS = ("Traceback", "Warning", "graphbolt", "OMP_NUM_THREADS", "ChildFailedError", "torch/distributed", "DeepSpeed")


def _foreign(text: str) -> list[str]:
    return [word for word in NOT_STRATAS if word in text]


def test_progress_is_logged_when_no_terminal_watches(tmp_path: Path, graph_store: str) -> None:
    job = gnn_job(tmp_path, graph_store, epochs=3)
    minibatch = ["--set", "train.executor=minibatch", "--set", "train.fanouts=4,4", "--set", "train.batch_size=10"]
    proc = run_strata("train", str(job), *minibatch, cwd=tmp_path)  # stderr is a pipe, not a terminal
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("strata INFO: train: step 1 of "), proc.stderr
    assert lines[-1].startswith("strata INFO: train: step ") and "(100%), epoch 2, loss " in lines[-1] and "done in" in lines[-1]
    assert all(line.startswith("strata INFO: ") for line in lines), proc.stderr
    assert not _foreign(proc.stderr + proc.stdout)
    assert proc.stdout.startswith("done: 3 epochs")
    epochs = [json.loads(line) for line in (tmp_path / "runs/gnn/metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e["event"] == "epoch"]
    assert len(epochs) == 3 and all("loss" in e and "last_loss" in e for e in epochs)  # loss = the epoch's mean

    quiet = run_strata("train", str(job), *minibatch, "--set", "run_dir=runs/quiet", "-q", cwd=tmp_path)
    assert quiet.stderr == "" and quiet.stdout.startswith("done: 3 epochs")


def test_a_failed_training_leaves_no_empty_run_directory(tmp_path: Path, graph_store: str) -> None:
    job = gnn_job(tmp_path, graph_store)
    missing = ["--set", "train.executor=graph_parallel", "--set", "train.partition=nope"]
    proc = run_strata("train", str(job), *missing, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"strata: error: store '{graph_store}' has no partition 'nope' (it has: none); "
        f"create it with 'strata partition {graph_store} --name nope'"
    )
    assert not (tmp_path / "runs").exists()

    # A run directory that was there before stays, even empty; so does anything beside it.
    (tmp_path / "runs/gnn").mkdir(parents=True)
    (tmp_path / "runs/other.txt").write_text("mine")
    proc = run_strata("train", str(job), *missing, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and (tmp_path / "runs/gnn").is_dir() and (tmp_path / "runs/other.txt").exists()

    # Parents the run directory needed go as well, when they are empty.
    proc = run_strata("train", str(job), "--set", "run_dir=new/deeper/run", "--set", "data.store=" + str(tmp_path / "nowhere"),
                      cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no dataset store" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_one_error_for_the_job_not_one_per_process(tmp_path: Path, graph_store: str) -> None:
    """An error every rank meets under --nproc-per-node 2 is said once, with no launcher noise."""
    job = gnn_job(tmp_path, graph_store)
    missing = ["--set", "train.executor=graph_parallel", "--set", "train.partition=nope"]
    proc = run_strata("train", str(job), *missing, "--nproc-per-node", "2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("strata: error")]
    assert len(errors) == 1, proc.stderr
    assert "has no partition 'nope'" in errors[0]
    assert not _foreign(proc.stderr), proc.stderr
    assert all(line.startswith("strata") for line in proc.stderr.splitlines()), proc.stderr


def test_only_rank_zero_prints_an_error(tmp_path: Path) -> None:
    """Under torchrun the other ranks hand their error to torchrun's error file instead of printing it;
    under a launcher without one (srun) they print it with their rank."""
    torchrun = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    message = "config file 'missing.yaml' does not exist"
    for rank in (0, 1):
        error_file = tmp_path / f"error-{rank}.json"
        env = {**torchrun, "RANK": str(rank), "LOCAL_RANK": str(rank), "TORCHELASTIC_ERROR_FILE": str(error_file)}
        proc = run_strata("train", "missing.yaml", cwd=tmp_path, env=env, check=False)
        assert proc.returncode == 2
        assert proc.stderr == (f"strata: error: {message}\n" if rank == 0 else "")
        assert json.loads(error_file.read_text())["message"]["extraInfo"]["py_callstack"] == message
    env = {**torchrun, "RANK": "1", "LOCAL_RANK": "1"}
    proc = run_strata("train", "missing.yaml", cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and proc.stderr == f"strata: error (rank 1): {message}\n"
