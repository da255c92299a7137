"""`strata train CONFIG` unchanged under the variables srun and a Kubernetes Indexed Job set:
two real processes find each other from the environment alone and train together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from tests.helpers.ports import free_port

JOB = """
name: run
data: {{store: {store}}}
model: {{name: gcn, hidden: 8, num_layers: 2}}
train: {{executor: graph_parallel, partitioner: range, epochs: 3}}
distributed: {{backend: gloo, timeout_seconds: 60}}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=400, avg_degree=5, num_classes=3, feat_dim=8, seed=1), url, progress=False)
    return url


def _slurm(rank: int, port: int) -> dict[str, str]:
    return {
        "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
        "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "MASTER_PORT": str(port),
    }


def _indexed_job(rank: int, port: int) -> dict[str, str]:
    return {"JOB_COMPLETION_INDEX": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


@pytest.mark.parametrize("launcher, env_of", [("slurm", _slurm), ("indexed-job", _indexed_job)])
def test_strata_train_runs_unchanged_under(launcher: str, env_of, tmp_path: Path, store: str) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(JOB.format(store=store))
    port = free_port()
    # A clean environment: nothing of the test runner's own launcher may leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "TORCHELASTIC"))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "strata.launch.cli", "train", str(config), "--json", "-q"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**base, "OMP_NUM_THREADS": "1", **env_of(rank, port)},
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["comm_bytes"]["all_to_all"] > 0
    assert outputs[1][0].strip() == ""  # only rank 0 reports
    start = json.loads((tmp_path / "runs/run/metrics.jsonl").read_text().splitlines()[0])
    assert start["launcher"] == launcher
