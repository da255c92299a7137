"""`strata launch` as a newcomer runs it from a clone: nothing lands in the tracked source tree,
a store the pods cannot see is pointed out, and the launchers choose OMP_NUM_THREADS so
torchrun has nothing to announce."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.helpers.cli import run_strata

JOB = """\
name: synth-sage
data: {store: stores/synth}
train: {executor: minibatch, epochs: 5, fanouts: [10, 10]}
"""


def test_k8s_manifests_go_to_the_run_directory_and_a_local_store_is_pointed_out(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    proc = run_strata("launch", "k8s", "job.yaml", "--nodes", "2", "--image", "ghcr.io/you/strata:0.1.0", cwd=tmp_path)
    out = tmp_path / "runs/synth-sage/k8s"
    assert sorted(p.name for p in out.iterdir()) == [
        "configmap.yaml", "indexed-job.yaml", "podmonitor.yaml", "pytorchjob.yaml", "trainjob.yaml",
    ]
    assert not (tmp_path / "k8s").exists()
    assert "kubectl apply -f runs/synth-sage/k8s/configmap.yaml" in proc.stdout
    assert "strata WARNING: data.store 'stores/synth' is a path on this machine: the pods will not find it" in proc.stderr
    assert "--set data.store=s3://BUCKET/stores/synth" in proc.stderr
    assert "RUN_DIR/k8s" in " ".join(run_strata("launch", "k8s", "--help").stdout.split())

    # A URL the pods reach, or a path on the claim they mount: no warning.
    for store, pvc in (("s3://bucket/stores/synth", []), ("/scratch/runs/stores/synth", ["--pvc", "runs"])):
        proc = run_strata("launch", "k8s", "job.yaml", "--image", "x:1", "--set", f"data.store={store}", *pvc, cwd=tmp_path)
        assert proc.stderr == ""


def test_launchers_set_omp_num_threads(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB.replace("stores/synth", "s3://bucket/synth"))
    run_strata("launch", "k8s", "job.yaml", "--procs-per-node", "1", "--cpu", "8", "--image", "x:1", cwd=tmp_path)
    job = list(yaml.safe_load_all((tmp_path / "runs/synth-sage/k8s/pytorchjob.yaml").read_text()))[0]
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        env = {e["name"]: e.get("value") for e in replica["template"]["spec"]["containers"][0]["env"]}
        assert env["OMP_NUM_THREADS"] == "8"
    run_strata("launch", "slurm", "job.yaml", "--procs-per-node", "2", "--cpus-per-task", "16", cwd=tmp_path)
    script = (tmp_path / "runs/synth-sage/synth-sage.sbatch").read_text()
    assert 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"' in script
    assert script.index("OMP_NUM_THREADS") < script.index("torch.distributed.run")
