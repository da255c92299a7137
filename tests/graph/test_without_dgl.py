"""With DGL unimportable, graph.ops chooses torch's kernels and computes every op right.

DGL is hidden in a fresh interpreter by a finder at the front of sys.meta_path that raises
ImportError for ``dgl`` and its submodules, as a machine without DGL would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.no_dgl import HIDE_DGL

REPO = Path(__file__).resolve().parents[2]

SCRIPT = HIDE_DGL + r'''
import sys

import pytest
import torch

from strata.errors import ConfigError
from strata.graph import ops
from strata.graph.block import Block
from tests.helpers.graph_ops import CASES, assert_rel_close, reference_case, run_case
from tests.helpers.graphs import awkward_csc

assert not ops.dgl_available()
assert ops.choose_kernels("cpu") == "torch"
block = Block.from_csc(*awkward_csc(60, 25, 400, seed=1), num_src=60)
for case in CASES:
    inputs = case.inputs(block, torch.Generator().manual_seed(0))
    got = run_case(case, block, inputs, kernels=None, dropout=False)
    assert_rel_close(got, reference_case(case, block, inputs), what=case.name)
    run_case(case, block, inputs, kernels=None)  # with attention dropout too
assert "torch_sparse_plan" in block._cache and not any(key.startswith("dgl_block") for key in block._cache)
with pytest.raises(ConfigError, match="kernels='dgl', but DGL does not import here: install dgl==2.1.0"):
    ops.copy_sum(block, torch.randn(60, 4), kernels="dgl")
assert not any(name == "dgl" or name.startswith("dgl.") for name in sys.modules), "something imported DGL"
print("torch kernels ran without DGL:", len(CASES), "ops")
'''


def test_ops_run_on_torch_kernels_when_dgl_cannot_be_imported() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("STRATA_GRAPH_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "torch kernels ran without DGL: 8 ops" in result.stdout
