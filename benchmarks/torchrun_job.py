"""Running one `strata train` job under torchrun for the benchmarks, and reading its result."""

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
