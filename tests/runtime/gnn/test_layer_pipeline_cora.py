"""Cora GCNII (16 layers) through the layer pipeline with historical embeddings reaches the
test accuracy of single-process training within 1 point (mean over the same seeds).

Several minutes on 2 shared cores, so it runs only with STRATA_SLOW_TESTS=1; its figures are
recorded in docs/benchmarks.md (Layer pipeline).
"""

from __future__ import annotations

import os
from statistics import mean

import pytest

from strata.launch.job import load_job
from tests.helpers.paths import REPO
from tests.helpers.workers import run_workers

SEEDS = range(2)
PIPELINE = ["train.executor=layer_pipeline", "pipeline.chunks=4", "pipeline.history=true", "pipeline.sync_every=10"]



def _accuracies(topology, store: str, run_root: str, overrides: list[str]) -> list[float]:
    from strata.runtime.gnn.trainer import train_node_classifier

    accuracies = []
    for seed in SEEDS:
        job = load_job(
            str(REPO / "examples" / "cora_gcnii.yaml"),
            [f"data.store={store}", f"train.seed={seed}", f"run_dir={run_root}/{seed}", *overrides],
        )
        result = train_node_classifier(
            job.data, job.model, job.train, job.checkpoint, job.metrics,
            run_dir=job.run_dir, progress=False, topology=topology, pipeline=job.pipeline,
        )
        accuracies.append(result.test_acc)
    return accuracies


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STRATA_SLOW_TESTS") != "1", reason="several minutes: set STRATA_SLOW_TESTS=1")
def test_gcnii_with_history_matches_one_process(cora_store: str, tmp_path) -> None:
    import torch

    from strata.runtime.dist.topology import single_process

    torch.set_num_threads(1)
    single = mean(_accuracies(single_process(), cora_store, str(tmp_path / "single"), []))
    piped = run_workers(_accuracies, 2, cora_store, str(tmp_path / "pipe"), PIPELINE, timeout=3600)
    assert all(r == piped[0] for r in piped)  # every stage reports the same evaluation
    print(f"GCNII-16 on Cora: single process {single:.4f}, layer pipeline (2 stages, history) {mean(piped[0]):.4f}")
    # "Reaches single-process accuracy within 1 point": stale embeddings must not cost more than a
    # point; two seeds of Cora scatter by about a point either way, so doing better is no failure.
    assert mean(piped[0]) >= single - 0.01
