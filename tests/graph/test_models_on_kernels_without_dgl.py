"""With DGL unimportable, strata trains end to end on torch's kernels, and nothing imports DGL.

A small random graph trains full-graph GCN and minibatch GraphSAGE through the trainer (a few
seconds); then Cora: GCN on the full graph to the README's accuracy (~81.8% mean of 5 seeds;
the accuracy test's floor, 80%, for seed 0; 81.6% measured on torch's kernels) and minibatch
GraphSAGE (10 epochs, fanouts 10,10) to 77% (80.8% measured), about 25 s on 2 cores. The
2-rank graph_parallel run on Cora is in tests/launch/test_train_without_dgl.py.

DGL is hidden in a fresh interpreter by a finder at the front of sys.meta_path that raises
ImportError for ``dgl`` and its submodules, as a machine without DGL would. Where a module on
the training path still imports DGL when it is imported, the test skips, naming the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.no_dgl import HIDE_DGL
from tests.helpers.paths import REPO, require_planetoid

SCRIPT = HIDE_DGL + r'''
import json
import sys
import traceback
try:
    from strata.launch.job import load_job
    from strata.runtime.gnn.trainer import train_node_classifier
    from strata.storage.ingest import ingest
    from strata.storage.ingest.common import write_graph_data
except ImportError as error:
    if "dgl" not in str(error):
        raise
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "strata" in f.filename and "_dgl" not in f.filename]
    print("NEEDS-DGL", f"{frames[-1].filename.split('/strata/')[-1]}:{frames[-1].lineno}: {frames[-1].line}")
    raise SystemExit(0)
import torch

torch.set_num_threads(1)
what, source, work = sys.argv[1:4]
store = f"{work}/store"
if what == "cora":
    ingest("planetoid", source, store, name="cora", planetoid_name="cora")
    gcn, sage = [], ["train.epochs=10"]
else:
    from tests.helpers.graphs import random_graph

    write_graph_data(random_graph(300, 1500, feat_dim=8, num_classes=3), store, "tiny", symmetrize=True)
    gcn, sage = ["train.epochs=3"], ["train.epochs=1"]
sage += ["model.name=sage", "model.hidden=64", "train.mode=minibatch", "train.batch_size=64", "train.fanouts=[10,10]",
         "train.patience=0"]
accuracy = {}
for name, overrides in {"gcn": gcn, "sage": sage}.items():
    job = load_job("examples/cora_gcn.yaml", [f"data.store={store}", f"run_dir={work}/{name}", *overrides])
    result = train_node_classifier(job.data, job.model, job.train, job.checkpoint, job.metrics, run_dir=job.run_dir,
                                   progress=False)
    accuracy[name] = result.test_acc
loaded = sorted(module for module in sys.modules if module == "dgl" or module.startswith("dgl."))
print("RESULT", json.dumps({"accuracy": accuracy, "dgl_modules": loaded}))
'''


def _train_without_dgl(what: str, source: Path | str, work: Path) -> dict[str, float]:
    """Test accuracy of full-graph GCN and minibatch GraphSAGE, trained in a fresh interpreter without DGL."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("STRATA_GRAPH_KERNELS", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, what, str(source), str(work)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for line in done.stdout.splitlines():
        if line.startswith("NEEDS-DGL"):
            pytest.skip(f"the training path still imports DGL when imported: {line[len('NEEDS-DGL '):]}")
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            assert result["dgl_modules"] == [], f"something imported DGL: {result['dgl_modules'][:5]}"
            return result["accuracy"]
    raise AssertionError(f"no result in the output:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def test_training_runs_without_dgl(tmp_path: Path) -> None:
    accuracy = _train_without_dgl("tiny", "", tmp_path)
    assert set(accuracy) == {"gcn", "sage"} and all(0.0 <= value <= 1.0 for value in accuracy.values())


@pytest.mark.timeout(900)
def test_cora_trains_to_the_readme_accuracy_without_dgl(tmp_path: Path) -> None:
    accuracy = _train_without_dgl("cora", require_planetoid(), tmp_path)
    print(f"test accuracy without DGL: {accuracy}")
    assert accuracy["gcn"] >= 0.800 and accuracy["sage"] >= 0.770, accuracy
