"""graph_parallel from a stored partition: each rank reads only its share of the store (its
owned nodes' features and labels, the degrees of its nodes) and trains as one process would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strata.storage import layout
from strata.storage.store import DatasetWriter
from tests.helpers.workers import run_workers

NUM_NODES, FEAT, CLASSES, CHUNK_ROWS = 4000, 2048, 4, 64
FIXED_OVERHEAD = 8 << 20
"""Transient buffers whose size does not grow with the graph: a decoded chunk of labels,
row pointers or edges (the store sizes them at about 4 MiB)."""


def _write_store(url: str, *, num_nodes: int = NUM_NODES, feat_dim: int = FEAT, seed: int = 0) -> None:
    """A random graph kept as written (self loops included, which ingest would drop), with
    small feature chunks so a part's rows can be read without the rest."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, num_nodes, 8 * num_nodes)
    dst = rng.integers(0, num_nodes, 8 * num_nodes)
    loops = rng.choice(num_nodes, num_nodes // 10, replace=False)
    src, dst = np.concatenate([src, src, loops]), np.concatenate([dst, dst[::-1], loops])
    order = np.lexsort((src, dst))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=num_nodes))])
    perm = rng.permutation(num_nodes)
    a, b = num_nodes // 2, 3 * num_nodes // 4
    with DatasetWriter(url, "part-data", num_nodes=num_nodes) as writer:
        writer.write_graph(indptr, src[order])
        writer.write(layout.FEAT, rng.standard_normal((num_nodes, feat_dim)).astype(np.float32), chunk_rows=CHUNK_ROWS)
        writer.write(layout.LABEL, rng.integers(0, CLASSES, num_nodes))
        for name, ids in {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}.items():
            writer.write(layout.split_key(name), np.sort(ids))
        writer.commit()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from strata.partitioners.build import build

    url = str(tmp_path_factory.mktemp("part-data") / "store")
    _write_store(url)
    build(url, np.random.default_rng(1).integers(0, 2, NUM_NODES), "rand-2", halo_hops=1, num_parts=2)
    return url


@pytest.mark.parametrize("self_loops", [True, False])
def test_degrees_counted_chunk_by_chunk_equal_the_model_graph(store: str, self_loops: bool) -> None:
    from strata.runtime.config import DataConfig
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.part_data import graph_degrees
    from strata.storage.store import DatasetStore

    graph = load_node_data(DataConfig(store=store), self_loops=self_loops).graph
    in_deg, out_deg = graph_degrees(DatasetStore.open(store), self_loops=self_loops, chunk_edges=997)
    np.testing.assert_array_equal(in_deg, graph.dst_degrees().numpy())
    np.testing.assert_array_equal(out_deg, graph.src_degrees().numpy())


def _load_share(topology, store: str) -> dict:
    import tracemalloc

    from strata.runtime.config import DataConfig
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.part_data import load_part, part_data_in_memory

    comm = Comm(topology.rank, topology.world_size)
    data_cfg = DataConfig(store=store)
    tracemalloc.start()
    part, share = load_part(data_cfg, "rand-2", comm, self_loops=True, read_bytes=CHUNK_ROWS * FEAT * 4)
    _, share_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    data = load_node_data(data_cfg, self_loops=True)
    _, whole_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    expected = part_data_in_memory(data, part)
    same = {key: bool(np.array_equal(np.asarray(getattr(share, key)), np.asarray(getattr(expected, key))))
            for key in ("feat", "label", "in_deg", "out_deg")}
    same["splits"] = all(torch.equal(share.splits[k], expected.splits[k]) for k in expected.splits)
    same["split_sizes"] = share.split_sizes == expected.split_sizes
    return {"same": same, "owned": part.num_owned, "share_peak": share_peak, "whole_peak": whole_peak}


def test_each_rank_reads_its_share_and_not_the_whole_feature_matrix(store: str) -> None:
    results = run_workers(_load_share, 2, store)
    feature_bytes = NUM_NODES * FEAT * 4
    assert sum(r["owned"] for r in results) == NUM_NODES
    for rank, r in enumerate(results):
        assert all(r["same"].values()), (rank, r["same"])
        # Loading the whole data set holds every feature row at once; a share holds its own
        # rows plus bounded reads (one chunk of features, one of labels or edges at a time).
        own_bytes = r["owned"] * FEAT * 4
        assert r["whole_peak"] >= feature_bytes > own_bytes + FIXED_OVERHEAD, r
        assert r["share_peak"] < own_bytes + FIXED_OVERHEAD, (rank, r["share_peak"], own_bytes)


def _train(topology, store: str, run_dir: str, executor: str, partition: str) -> dict:
    from strata.models.config import ModelConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.trainer import train_node_classifier

    result = train_node_classifier(
        DataConfig(store=store),
        ModelConfig(name="gcn", hidden=16, num_layers=2, dropout=0.0),
        TrainConfig(executor=executor, partition=partition, epochs=4, seed=5),
        CheckpointConfig(),
        MetricsConfig(),
        run_dir=run_dir,
        progress=False,
        topology=topology,
    )
    return {"loss": result.final_loss, "test_acc": result.test_acc, "val_acc": result.val_acc}


def test_graph_parallel_on_a_stored_partition_trains_like_one_process(store: str, tmp_path) -> None:
    from strata.runtime.dist.topology import single_process

    parallel = run_workers(_train, 2, store, str(tmp_path / "gp"), "graph_parallel", "rand-2")
    single = _train(single_process(), store, str(tmp_path / "full"), "full", "")
    for r in parallel:
        assert r["loss"] == pytest.approx(single["loss"], rel=1e-4), (r, single)
        assert r["test_acc"] == pytest.approx(single["test_acc"], abs=0.005), (r, single)
