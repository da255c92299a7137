"""sbatch scripts that run `strata train` on a SLURM allocation, and their submission.

Two shapes of job, chosen by :attr:`SlurmConfig.mode`:

``torchrun``
    one srun task per node; each runs torchrun, which starts that node's processes and meets
    the other nodes at a c10d rendezvous on the first node of the allocation. torchrun can
    restart failed workers (``max_restarts``), and each worker sees torchrun's RANK/LOCAL_RANK.
    The default, and the choice for GPU nodes where one agent per node should own the devices.
``srun``
    one srun task per training process; strata reads SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
    and the node list itself (see :mod:`strata.runtime.dist.topology`). For sites that bind CPUs and
    devices per task with srun, that forbid extra launchers, or for plain CPU jobs.

Either way the job is requeueable (``--requeue``), its log is appended to one predictable file,
``<log_dir>/slurm-<jobid>.out``, and training always runs with ``--resume``: a requeued or
resubmitted job continues from the newest complete checkpoint of the run directory.

Ahead of the time limit (``--signal=B:USR1@N``) SLURM signals the batch shell, which passes
the stop on as SIGTERM to every task of the job step (``scancel --signal=TERM``): torchrun's
agent passes SIGTERM to its workers (SIGUSR1 it would not pass on, and die of), and every rank
finishes its step, checkpoints with the others and exits. The script then requeues the job,
which resumes where it stopped. ``scancel --signal=USR1 --batch JOBID`` does the same by hand.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from strata.errors import ConfigError, StrataError

MODES = ("torchrun", "srun")
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE)$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class SlurmError(StrataError):
    """An sbatch script cannot be made or submitted."""


@dataclass
class SlurmConfig:
    """The allocation and launcher of a SLURM training job."""

    nodes: int = 1
    """Nodes of the allocation."""
    gpus_per_node: int = 0
    """GPUs requested on each node (--gpus-per-node); 0 = CPU-only nodes."""
    procs_per_node: int = 0
    """Training processes per node; 0 = one per GPU, or 1 on CPU-only nodes."""
    mode: str = "torchrun"
    """'torchrun' (one task per node running torchrun) or 'srun' (one task per process)."""
    partition: str = ""
    """SLURM partition (--partition); empty = the cluster's default."""
    time: str = ""
    """Time limit (--time), e.g. '30', '4:00:00' or '2-00:00:00'; empty = the partition's default."""
    cpus_per_task: int = 0
    """CPUs of each srun task (--cpus-per-task); 0 = SLURM's default."""
    port: int = 0
    """Rendezvous port on the first node; 0 = 20000 + job id mod 10000, so that jobs sharing
    a node never collide (the same rule strata's srun topology applies)."""
    max_restarts: int = 0
    """torchrun mode: how often torchrun restarts the workers of a node after a failure (they resume)."""
    python: str = "python3"
    """Python interpreter on the compute nodes that has strata installed."""
    signal_seconds: int = 120
    """Seconds before the time limit at which SLURM asks the job to stop at a checkpoint and
    requeue itself (SIGUSR1 to the batch shell); 0 = no warning signal. Leave enough for one
    step and one checkpoint."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"slurm.nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"slurm.gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.procs_per_node < 0:
            raise ConfigError(f"slurm.procs_per_node must be >= 0, got {self.procs_per_node}")
        if self.procs_per_node == 0:
            self.procs_per_node = self.gpus_per_node or 1
        if self.gpus_per_node and self.procs_per_node > self.gpus_per_node:
            raise ConfigError(
                f"slurm.procs_per_node {self.procs_per_node} exceeds slurm.gpus_per_node {self.gpus_per_node}: "
                "strata runs at most one process per GPU; lower procs_per_node or request more GPUs"
            )
        if self.mode not in MODES:
            raise ConfigError(f"slurm.mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.time and not _TIME.match(self.time):
            raise ConfigError(
                f"slurm.time must be a SLURM time limit such as '30', '4:00:00' or '2-00:00:00', got '{self.time}'"
            )
        if self.cpus_per_task < 0:
            raise ConfigError(f"slurm.cpus_per_task must be >= 0, got {self.cpus_per_task}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"slurm.port must be in 0..65535, got {self.port}")
        if self.max_restarts < 0:
            raise ConfigError(f"slurm.max_restarts must be >= 0, got {self.max_restarts}")
        if not 0 <= self.signal_seconds <= 65535:
            raise ConfigError(f"slurm.signal_seconds must be in 0..65535 (SLURM's limit), got {self.signal_seconds}")
        if not self.python:
            raise ConfigError("slurm.python must name the interpreter that has strata installed, e.g. 'python3'")

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def log_file(log_dir: str) -> str:
    """Where the job's output goes; ``%j`` is the job id (a requeued job keeps its id and appends)."""
    return f"{log_dir.rstrip('/')}/slurm-%j.out"


def sbatch_script(
    cfg: SlurmConfig,
    *,
    job_name: str,
    config: str,
    log_dir: str,
    chdir: str = "",
    overrides: tuple[str, ...] = (),
) -> str:
    """The sbatch script that trains ``config`` (a path relative to ``chdir``, or a URL).

    ``log_dir`` is relative to ``chdir`` (the job's working directory; empty = where sbatch runs)
    and must exist before the job starts; ``overrides`` are ``--set KEY=VALUE`` values.
    """
    if not _JOB_NAME.match(job_name):
        raise SlurmError(f"job name must hold only letters, digits, '.', '_' and '-', got '{job_name}'")
    directives = [
        f"--job-name={job_name}",
        f"--nodes={cfg.nodes}",
        f"--ntasks-per-node={cfg.procs_per_node if cfg.mode == 'srun' else 1}",
    ]
    if cfg.gpus_per_node:
        directives.append(f"--gpus-per-node={cfg.gpus_per_node}")
    if cfg.cpus_per_task:
        directives.append(f"--cpus-per-task={cfg.cpus_per_task}")
    if cfg.partition:
        directives.append(f"--partition={cfg.partition}")
    if cfg.time:
        directives.append(f"--time={cfg.time}")
    if chdir:
        directives.append(f"--chdir={chdir}")
    directives += [f"--output={log_file(log_dir)}", "--open-mode=append", "--requeue"]
    if cfg.signal_seconds:
        directives.append(f"--signal=B:USR1@{cfg.signal_seconds}")

    train = ["-m", "strata.launch.cli", "train", config, "--resume"]
    for item in overrides:
        train += ["--set", item]
    srun = ["srun", f"--ntasks-per-node={cfg.procs_per_node if cfg.mode == 'srun' else 1}", "--kill-on-bad-exit=1"]
    if cfg.cpus_per_task:
        # slurm 22.05's srun no longer inherits --cpus-per-task from the batch step.
        srun.append(f"--cpus-per-task={cfg.cpus_per_task}")

    lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in directives]
    lines += [
        f"# Generated by 'strata launch slurm' (mode {cfg.mode}): {cfg.nodes} node(s) x {cfg.procs_per_node} "
        f"process(es) = world size {cfg.world_size}.",
        "# Requeued or resubmitted, it resumes from the newest complete checkpoint (--resume).",
        "set -euo pipefail",
        "export PYTHONUNBUFFERED=1",
        'echo "strata: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}"',
    ]
    port = str(cfg.port) if cfg.port else "$((20000 + SLURM_JOB_ID % 10000))"
    if cfg.mode == "torchrun":
        # torchrun sets OMP_NUM_THREADS=1 and prints a banner saying so unless it is set: choose it here.
        threads = max(1, cfg.cpus_per_task // cfg.procs_per_node) if cfg.cpus_per_task else 1
        lines.append(f'export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-{threads}}}"')
        lines.append('head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)')
        lines.append(f"rdzv_port={port}")
        torchrun = [
            [cfg.python, "-m", "torch.distributed.run"],
            [f"--nnodes={cfg.nodes}", f"--nproc-per-node={cfg.procs_per_node}", f"--max-restarts={cfg.max_restarts}"],
            ["--rdzv-backend=c10d", _Shell("--rdzv-id=${SLURM_JOB_ID}"), _Shell("--rdzv-endpoint=${head_node}:${rdzv_port}")],
        ]
        step = _command([srun, *torchrun, train])
    else:
        if cfg.port:
            lines.append(f"export MASTER_PORT={cfg.port}")
        step = _command([srun, [cfg.python, *train]])
    lines += _stop_and_requeue(step)
    return "\n".join(lines) + "\n"


def _stop_and_requeue(step: str) -> list[str]:
    """Run the job step in the background so the shell can take SIGUSR1 while it waits, pass it
    on as SIGTERM to the step's tasks, and requeue the job once the step stopped at its checkpoint."""
    return [
        "stop_requested=0",
        'step_pid=""',
        'trap \'stop_requested=1; echo "strata: SIGUSR1 ahead of the time limit: stopping at a checkpoint, then requeueing"; '
        'scancel --signal=TERM "${SLURM_JOB_ID}" || true\' USR1',
        f"{step} &",
        "step_pid=$!",
        "set +e",
        # wait returns early (128 + signal) when the trap runs; wait again for the step's own status.
        'while true; do wait "${step_pid}"; status=$?; '
        'if [ "${status}" -gt 128 ] && kill -0 "${step_pid}" 2>/dev/null; then continue; fi; break; done',
        "set -e",
        'if [ "${stop_requested}" = 1 ]; then',
        '  echo "strata: the step stopped (exit ${status}); requeueing job ${SLURM_JOB_ID}"',
        '  scontrol requeue "${SLURM_JOB_ID}"',
        "  exit 0",
        "fi",
        'exit "${status}"',
    ]


class _Shell(str):
    """A word of our own that the shell must expand (it holds ``${...}``); double-quoted."""


def _command(segments: list[list[str]]) -> str:
    """One shell command, a segment per line; every word but :class:`_Shell` ones quoted literally."""
    return " \\\n  ".join(" ".join(f'"{w}"' if isinstance(w, _Shell) else shlex.quote(w) for w in seg) for seg in segments)


def submit(script: str, *, cwd: str | None = None) -> str:
    """Submit ``script`` with ``sbatch --parsable`` and return the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "'sbatch' is not on PATH: submit from a SLURM login node, or run without --submit and "
            f"submit '{script}' there with 'sbatch {script}'"
        )
    proc = subprocess.run(["sbatch", "--parsable", script], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused '{script}' (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch --parsable printed '{proc.stdout.strip()}', expected a job id")
    return job_id
