"""A real single-node SLURM on loopback running `strata launch slurm --submit` jobs.

The fixture writes a minimal slurm.conf for this host (cgroup-free: proctrack/linuxproc,
task/none, no accounting), starts munged on a private socket and key, slurmctld and slurmd as
root on free ports, and stops them (and cancels what is left) at the end. Then a 2-task job is
cancelled with scancel after its first checkpoints, submitted again with the same command,
resumes from the newest complete checkpoint and trains to the end; the test reads the accuracy
from the job's log. A torchrun-mode job trains on the same allocation shape. Debian's slurm-wlm
and munge are installed when missing (root only); the test skips, saying why, where they cannot.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from strata.storage import checkpoint
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.testing.polling import poll
from strata.testing.slurm_hosts import daemon_settings
from tests.helpers.cli import run_strata
from tests.helpers.ports import free_port
from tests.helpers.servers import require_commands, server

pytestmark = pytest.mark.slow

COMMANDS = ["munged", "mungekey", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun"]

JOB = """
name: {name}
data: {{store: {store}}}
model: {{name: sage, hidden: 32, num_layers: 2, dropout: 0.3}}
train: {{executor: minibatch, epochs: {epochs}, lr: 0.01, weight_decay: 0.0, batch_size: 128, fanouts: [5, 5], seed: 7}}
checkpoint: {{every_steps: {every}, keep: 2}}
"""


def _slurm_conf(root: Path, host: str, ctld_port: int, slurmd_port: int, socket_path: Path) -> str:
    settings = {
        "ClusterName": "stratatest",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        **daemon_settings(socket_path, cred_expire=15, ctld_port=ctld_port, slurmd_port=slurmd_port),
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines.append(f"NodeName={host} NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _succeeds(argv: list[str], env: dict[str, str]) -> bool:
    return subprocess.run(argv, env=env, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("slurmctld, slurmd and munged run as root here; this test needs root")
    require_commands(COMMANDS, ["slurm-wlm", "munge"])
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    sock, key = root / "munge.sock", root / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, free_port(), free_port(), sock))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munged = ["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
              f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munged.seed'}"]
    with ExitStack() as stack:
        stack.enter_context(server(munged, ready=lambda: _succeeds(["munge", "-S", str(sock), "-n"], env), log=root / "munged.out"))
        stack.enter_context(server(["slurmctld", "-D", "-f", str(conf)], ready=lambda: _succeeds(["scontrol", "ping"], env),
                                   log=root / "slurmctld.log", env=env))
        stack.enter_context(server(["slurmd", "-D", "-f", str(conf)], log=root / "slurmd.log", env=env, ready=lambda: subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip() == "idle"))
        try:
            yield env
        finally:
            subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
            _wait(lambda: not _queue(env), 30, "cancelled jobs to leave the queue", env)


def _queue(env: dict[str, str]) -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()


def _state(job_id: str, env: dict[str, str]) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\w+)", out)
    return match.group(1) if match else "UNKNOWN"


def _wait(check, timeout: float, what: str, env: dict[str, str], log: Path | None = None):
    value = poll(check, timeout)
    if not value:
        detail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        raise AssertionError(f"timed out waiting for {what}; queue {_queue(env)}\n{detail}")
    return value


def _submit(workdir: Path, env: dict[str, str], *args: str) -> str:
    proc = run_strata("launch", "slurm", "job.yaml", "--nodes", "1", "--procs-per-node", "2", "--python", sys.executable,
                      "--submit", *args, cwd=workdir, env={**env, "OMP_NUM_THREADS": "1"})
    match = re.search(r"^submitted batch job (\d+)$", proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    return match.group(1)


def _finished(job_id: str, env: dict[str, str], log: Path, timeout: float = 240) -> str:
    state = _wait(lambda: (lambda s: s if s not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING") else None)(_state(job_id, env)),
                  timeout, f"job {job_id} to end", env, log)
    return state


def _steps_per_epoch(events: list[dict]) -> int:
    """Steps of one epoch, from the log's first epoch event (the global step after epoch 0)."""
    first = next(e for e in events if e["event"] == "epoch")
    assert first["epoch"] == 0 and first["step"] > 0
    return first["step"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=2000, avg_degree=8, num_classes=4, feat_dim=16, seed=1), url, progress=False)
    return url


def test_cancelled_job_resumes_when_submitted_again_and_trains_to_the_end(cluster: dict[str, str], store: str, tmp_path: Path) -> None:
    epochs, every = 60, 20  # 1200 training nodes, batches of 128: about 10 steps per epoch
    (tmp_path / "job.yaml").write_text(JOB.format(name="slurm-demo", store=store, epochs=epochs, every=every))
    run_dir, ckpt = tmp_path / "runs/slurm-demo", str(tmp_path / "runs/slurm-demo/checkpoints")

    first = _submit(tmp_path, cluster, "--mode", "srun")
    first_log = run_dir / f"slurm-{first}.out"
    _wait(lambda: (checkpoint.latest_step(ckpt) or 0) >= 2 * every or _state(first, cluster) not in ("PENDING", "RUNNING"),
          240, "the first checkpoints", cluster, first_log)
    assert _state(first, cluster) == "RUNNING", f"job {first} ended before it could be cancelled:\n{first_log.read_text()[-3000:]}"
    subprocess.run(["scancel", first], env=cluster, check=True)
    assert _finished(first, cluster, first_log, timeout=60) == "CANCELLED"
    # Its processes must be gone before the next job may read the checkpoints.
    _wait(lambda: first not in _queue(cluster), 60, f"job {first} to leave the node", cluster, first_log)
    cancelled_at = checkpoint.latest_step(ckpt)
    assert cancelled_at >= 2 * every
    assert "done:" not in first_log.read_text()

    second = _submit(tmp_path, cluster, "--mode", "srun")
    second_log = run_dir / f"slurm-{second}.out"
    assert second != first
    assert _finished(second, cluster, second_log) == "COMPLETED", second_log.read_text()[-3000:]
    text = second_log.read_text()
    match = re.search(r"test acc (\d\.\d+)", text)
    assert match, text[-3000:]
    assert float(match.group(1)) > 0.8  # 4 classes: chance is 0.25

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert [(s["resumed_at"], s["launcher"], s["world_size"]) for s in starts] == [(0, "slurm", 2), (cancelled_at, "slurm", 2)]
    per_epoch = _steps_per_epoch(events)
    assert cancelled_at < epochs * per_epoch, "the first job was not cancelled mid-run"
    end = [e for e in events if e["event"] == "end"]
    assert len(end) == 1 and end[0]["steps"] == epochs * per_epoch  # the steps an uninterrupted run makes


def test_torchrun_mode_job_trains_with_one_torchrun_per_node(cluster: dict[str, str], store: str, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB.format(name="slurm-torchrun", store=store, epochs=3, every=0))
    job_id = _submit(tmp_path, cluster, "--mode", "torchrun")
    log = tmp_path / f"runs/slurm-torchrun/slurm-{job_id}.out"
    assert _finished(job_id, cluster, log) == "COMPLETED", log.read_text()[-3000:]
    assert re.search(r"test acc \d\.\d+", log.read_text())
    events = [json.loads(line) for line in (tmp_path / "runs/slurm-torchrun/metrics.jsonl").read_text().splitlines()]
    assert (events[0]["launcher"], events[0]["world_size"]) == ("torchrun", 2)
    assert events[-1]["event"] == "end" and events[-1]["steps"] == 3 * _steps_per_epoch(events)


def test_sigusr1_ahead_of_the_time_limit_checkpoints_requeues_and_the_job_resumes_to_the_end(
    cluster: dict[str, str], store: str, tmp_path: Path
) -> None:
    """What `--signal=B:USR1@N` delivers, sent by hand: torchrun's agent would not pass SIGUSR1 on,
    so the batch shell turns it into SIGTERM for the step; no checkpoint cadence is set, so the
    only checkpoint is the one the stop writes."""
    epochs = 40
    (tmp_path / "job.yaml").write_text(JOB.format(name="slurm-preempt", store=store, epochs=epochs, every=0))
    job_id = _submit(tmp_path, cluster, "--mode", "torchrun", "--time", "30")
    run_dir = tmp_path / "runs/slurm-preempt"
    log, metrics = run_dir / f"slurm-{job_id}.out", run_dir / "metrics.jsonl"

    def trained_an_epoch() -> bool:
        return metrics.exists() and '"event": "epoch"' in metrics.read_text()

    _wait(trained_an_epoch, 240, "the first epoch", cluster, log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=cluster, check=True)
    _wait(lambda: "requeueing job" in log.read_text(), 120, "the requeue", cluster, log)
    restarted = re.compile(r"Restarts=(\d+)")
    _wait(lambda: int((restarted.search(subprocess.run(["scontrol", "show", "job", job_id], env=cluster, capture_output=True,
                                                        text=True).stdout) or re.match(r"(0)", "0")).group(1)) >= 1,
          60, "the job to be requeued", cluster, log)
    assert _finished(job_id, cluster, log, timeout=300) == "COMPLETED", log.read_text()[-3000:]

    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    starts = [(e["resumed_at"], e["launcher"], e["world_size"]) for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[0] == (0, "torchrun", 2), starts
    stopped_at = starts[1][0]
    per_epoch = _steps_per_epoch(events)
    assert 0 < stopped_at < epochs * per_epoch, "the stop wrote no checkpoint mid-run"
    end = [e for e in events if e["event"] == "end"]
    assert len(end) == 1 and end[0]["steps"] == epochs * per_epoch
    assert re.search(r"test acc \d\.\d+", log.read_text())
