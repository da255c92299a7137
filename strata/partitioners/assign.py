"""``assign``: one interface over all node partitioners, chosen by name from a registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from strata.errors import PartitionError
from strata.partitioners.config import METHODS, PartitionConfig
from strata.partitioners.graph import GraphLike, GraphSource, as_graph
from strata.partitioners.metis import metis_assign
from strata.partitioners.simple import random_assign, range_assign
from strata.partitioners.streaming import fennel_assign, ldg_assign

Partitioner = Callable[[GraphSource, PartitionConfig, bool], np.ndarray]

PARTITIONERS: dict[str, Partitioner] = {
    "random": random_assign,
    "range": range_assign,
    "metis": metis_assign,
    "ldg": ldg_assign,
    "fennel": fennel_assign,
}
assert tuple(PARTITIONERS) == METHODS


def assign(
    graph: GraphLike,
    num_parts: int,
    seed: int = 0,
    *,
    method: str = "metis",
    progress: bool = False,
    **options: Any,
) -> np.ndarray:
    """The part id (int32, 0..num_parts-1) of every node of ``graph``.

    ``graph`` is a dataset store, its URL, a :class:`GraphSource` or an (indptr, indices)
    pair. ``options`` are further :class:`PartitionConfig` fields (``passes``,
    ``balance_slack``, ``chunk_edges`` ...).
    """
    known = {f.name for f in dataclasses.fields(PartitionConfig)} - {"method", "num_parts", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PartitionError(f"unknown partition option(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    cfg = PartitionConfig(method=method, num_parts=num_parts, seed=seed, **options)
    return assign_with(as_graph(graph), cfg, progress=progress)


def assign_with(graph: GraphSource, cfg: PartitionConfig, progress: bool = False) -> np.ndarray:
    """:func:`assign` for a ready config."""
    n = graph.num_nodes
    if not 1 <= cfg.num_parts <= n:
        raise PartitionError(
            f"cannot cut {graph.where} ({n:,} nodes) into {cfg.num_parts} parts: "
            f"the number of parts must be between 1 and the number of nodes"
        )
    parts = PARTITIONERS[cfg.method](graph, cfg, progress)
    if parts.shape != (n,) or (n and (parts.min() < 0 or parts.max() >= cfg.num_parts)):
        raise PartitionError(f"partitioner '{cfg.method}' returned an invalid assignment for {graph.where}")
    return parts.astype(np.int32, copy=False)
