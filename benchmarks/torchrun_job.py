"""Running benchmark work under torchrun: a `strata train` job, or a benchmark's own worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_training(workdir: Path, config: Path, procs: int, port: int, overrides: list[str]) -> dict:
    """`strata train CONFIG --json` on ``procs`` local processes; its result plus ``wall_seconds``."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1",
        "--master-port", str(port), "-m", "strata.launch.cli", "train", str(config), "--json", "-q",
        *[x for item in overrides for x in ("--set", item)],
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{config.stem} failed:\n{proc.stderr[-3000:]}")
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def run_worker(script: str, spec: Path, procs: int, port: int, workdir: Path, what: str) -> None:
    """``script --worker SPEC`` on ``procs`` local processes (one BLAS thread each); on failure,
    exits naming ``what`` with the end of the workers' stderr."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1",
        "--master-port", str(port), str(Path(script).resolve()), "--worker", str(spec),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DGLBACKEND": "pytorch"}
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-4000:]}")
