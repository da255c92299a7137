"""Node-classification executors by name.

Each executor module under :mod:`strata.runtime.gnn.executors` has a ``build(ctx)``; this
table is the only place that names them, so a new executor is one file and one line here.
Modules load only when their executor is built: reading a config imports none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strata.runtime.gnn.executors.base import BuildContext, GNNExecutor

EXECUTORS: dict[str, str] = {
    "full": "minibatch",
    "minibatch": "minibatch",
    "graph_parallel": "graph_parallel",
    "layer_pipeline": "layer_pipeline",
}
"""Executor name -> module under strata.runtime.gnn.executors."""

FULL_GRAPH = ("full", "graph_parallel", "layer_pipeline")
"""Executors whose step covers every training node (no sampled mini-batches)."""


def build_executor(ctx: BuildContext) -> GNNExecutor:
    """The executor ``ctx.train.executor`` names, built by its module's ``build``."""
    module = importlib.import_module(f"strata.runtime.gnn.executors.{EXECUTORS[ctx.train.executor]}")
    return module.build(ctx)
