"""The larger-than-memory path end to end at small scale, through the command line.

Runs ``benchmarks/larger_than_memory.py`` (strata ingest synthetic -> partition --method
fennel -> pack -> train, each a fresh process) at two sizes, 8x apart, and checks each step's
output and memory: every step's peak RSS is under the budget the benchmark states for it, and
grows from the small graph to the large one by no more than that budget grows. The partition
is built streaming (each part checked against the subgraph cut from the whole graph in
memory); the training is scored by the sampled evaluation (no copy of the feature matrix is
written, and the scores come from ``--eval-nodes`` nodes of each split).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strata.graph.csc import induced_subgraph
from strata.partitioners.format import open_partition
from strata.storage.store import DatasetStore

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "larger_than_memory.py"
SCALES = (0.0000625, 0.0005)  # 4,000 and 32,000 nodes
STEPS = ("ingest", "partition", "pack", "train")
EVAL_NODES = 1000
NOISE = 48 << 20
"""RSS differences below this are allocator and import noise, not growth."""


def _run(work: Path, scale: float) -> dict:
    out = work / f"report-{scale}.json"
    cmd = [sys.executable, str(BENCH), "--work", str(work), "--scale", str(scale), "--no-epochs", "--train-fraction", "0.2",
           "--batch-size", "256", "--parts", "2", "--host-cache", "24MiB", "--eval-nodes", str(EVAL_NODES), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, Path]]:
    work = tmp_path_factory.mktemp("ltm")
    return [(_run(work, scale), work) for scale in SCALES]


def test_every_step_writes_its_output(reports: list[tuple[dict, Path]]) -> None:
    for report, work in reports:
        nodes = report["context"]["nodes"]
        store = DatasetStore.open(str(next(work.glob(f"store-n{nodes}-*"))))
        assert store.meta.num_nodes == nodes and store.meta.num_edges == report["context"]["edges"] > 4 * nodes
        partition = json.loads((Path(store.url) / "partitions" / "fennel-2" / "report.json").read_text())
        assert partition["num_parts"] == 2 and partition["edge_cut_fraction"] < 0.5  # random would cut half
        _check_parts(store)
        pack = next(work.glob(f"pack-n{nodes}-*"))
        summary = json.loads((pack / "_PACK_COMPLETE").read_text())
        assert summary["total_input_rows"] > len(store.split("train"))
        result = report["methods"]["train"]["result"]
        labels = store.labels()[store.split("test")]
        majority = np.bincount(labels).max() / len(labels)
        assert result["steps"] == -(-len(store.split("train")) // 256)
        assert result["test_acc"] > majority + 0.15, (result["test_acc"], majority)
        # Scored on EVAL_NODES sampled test nodes (a multiple of 1/EVAL_NODES), not on the whole split.
        assert len(store.split("test")) > EVAL_NODES and round(result["test_acc"] * EVAL_NODES, 6).is_integer()
        # No copy of the features was spilled for a full-graph evaluation, which wrote all of them
        # (plus checkpoints: 0.6 MB here).
        assert report["methods"]["train"]["write_bytes"] < report["context"]["feat_bytes"]


def _check_parts(store: DatasetStore) -> None:
    """Every part the streaming build wrote is the subgraph of its nodes cut from the whole graph in memory."""
    parts = open_partition(store, "fennel-2")
    indptr, indices = store.csc()
    owned = []
    for p in range(parts.num_parts):
        part = parts.part(p)
        expected = induced_subgraph(indptr, indices, part.local_to_global)
        np.testing.assert_array_equal(part.indptr, expected.indptr)
        np.testing.assert_array_equal(part.indices, expected.indices)
        np.testing.assert_array_equal(part.edge_ids, expected.edge_ids)
        owned.append(part.owned)
    np.testing.assert_array_equal(np.sort(np.concatenate(owned)), np.arange(store.meta.num_nodes))


def test_peak_rss_stays_under_each_steps_budget_and_grows_no_faster(reports: list[tuple[dict, Path]]) -> None:
    (small, _), (large, _) = reports
    assert large["context"]["nodes"] == 8 * small["context"]["nodes"]
    for step in STEPS:
        a, b = small["methods"][step], large["methods"][step]
        for m in (a, b):
            assert 0 < m["peak_rss"] <= m["budget"], (step, m["peak_rss"], m["budget"])
        assert b["peak_rss"] - a["peak_rss"] <= b["budget"] - a["budget"] + NOISE, (step, a, b)
        assert large["ratios"][f"{step}_peak_rss_over_budget"] == pytest.approx(b["peak_rss"] / b["budget"])
