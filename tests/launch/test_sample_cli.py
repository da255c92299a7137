"""`strata sample` pointed at something it cannot sample from says what it is and what to do."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cli import run_strata
from tests.launch.conftest import gnn_job


def test_sample_on_a_gnn_run_says_it_is_one(tmp_path: Path, graph_store: str) -> None:
    job = gnn_job(tmp_path, graph_store, name="cora-gcn")
    run_strata("train", str(job), "-q", cwd=tmp_path)

    proc = run_strata("sample", "runs/cora-gcn", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "is from a node-classification (GNN) run, not a diffusion model" in proc.stderr
    assert "'strata sample' draws images from diffusion runs (task: diffusion) and expert sets" in proc.stderr
    assert "pass the job config (--config)" not in proc.stderr  # the old advice, which led to a KeyError

    # Following the old advice anyway: the config says what kind of job it is.
    proc = run_strata("sample", "runs/cora-gcn", "--config", str(job), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"config '{job}' is a node_classification job (a GNN)" in proc.stderr
    assert "draws images from diffusion runs" in proc.stderr
    assert not (tmp_path / "runs/cora-gcn/samples").exists()
