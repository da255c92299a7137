"""Cora on 2 and 4 ranks: graph_parallel GCN and minibatch GraphSAGE reach the accuracy of one
process within 1 point (mean test accuracy over the same seeds).

About 10 minutes on 2 shared cores, so it runs only with STRATA_SLOW_TESTS=1; its figures are
recorded in docs/benchmarks.md (Distributed training).
"""

from __future__ import annotations

import os
from statistics import mean

import pytest

from strata.launch.job import load_job
from tests.helpers.paths import REPO
from tests.helpers.workers import run_workers

SEEDS = range(4)
SAGE = [
    "model.name=sage", "model.hidden=64", "model.dropout=0.5", "train.executor=minibatch", "train.mode=minibatch",
    "train.epochs=20", "train.batch_size=32", "train.fanouts=[10, 10]", "train.patience=0",
]



def _accuracies(topology, store: str, run_root: str, overrides: list[str]) -> list[float]:
    from strata.runtime.gnn.trainer import train_node_classifier

    accuracies = []
    for seed in SEEDS:
        job = load_job(
            str(REPO / "examples" / "cora_gcn.yaml"),
            [f"data.store={store}", f"train.seed={seed}", f"run_dir={run_root}/{seed}", *overrides],
        )
        result = train_node_classifier(
            job.data, job.model, job.train, job.checkpoint, job.metrics, run_dir=job.run_dir, progress=False, topology=topology
        )
        accuracies.append(result.test_acc)
    return accuracies


def _single(store: str, run_root: str, overrides: list[str]) -> float:
    from strata.runtime.dist.topology import single_process

    return mean(_accuracies(single_process(), store, run_root, overrides))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STRATA_SLOW_TESTS") != "1", reason="about 10 minutes: set STRATA_SLOW_TESTS=1")
@pytest.mark.parametrize("name, overrides", [("gcn", ["train.executor=graph_parallel"]), ("sage", SAGE)])
def test_distributed_cora_matches_one_process(name: str, overrides: list[str], cora_store: str, tmp_path) -> None:
    single_overrides = [o for o in overrides if not o.startswith("train.executor=graph_parallel")]
    reference = _single(cora_store, str(tmp_path / "one"), single_overrides)
    for world_size in (2, 4):
        runs = run_workers(_accuracies, world_size, cora_store, str(tmp_path / f"w{world_size}"), overrides, timeout=600)
        assert all(r == runs[0] for r in runs), "ranks disagree on the test accuracy"
        distributed = mean(runs[0])
        print(f"{name}: one process {reference:.4f}, {world_size} ranks {distributed:.4f}")
        assert abs(distributed - reference) <= 0.01, (name, world_size, reference, distributed)
