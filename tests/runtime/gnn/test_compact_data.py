"""Runs that only sample hold the graph's src ids as int32 and the labels in a small integer
type (strata.storage.compact, load_node_data's ``compact``): the same batches, labels and
losses as the int64 arrays give, and kernels refuse the compact graph instead of misreading it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from strata.graph import ops
from strata.graph.block import Block
from strata.graph.sampler import TorchSampler
from strata.runtime.config import DataConfig
from strata.runtime.gnn.batches import SampledBatches
from strata.runtime.gnn.config import TrainConfig
from strata.runtime.gnn.data import load_node_data
from strata.runtime.gnn.executors.blocks import graph_arrays
from strata.storage import layout
from strata.storage.compact import compact_csc, label_dtype, read_as, smallest_int
from strata.storage.featstore.sampling import EpochPlan, NeighbourSampler, sample_step
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.storage.store import DatasetStore, DatasetWriter


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("compact") / "syn")
    write_synthetic(SyntheticGraphConfig(num_nodes=3000, avg_degree=8, feat_dim=8, kind="rmat", train_fraction=0.3),
                    url, progress=False)
    return url


def test_int32_src_ids_sample_the_same_batches_bit_for_bit(store: str) -> None:
    s = DatasetStore.open(store)
    indptr, wide = s.csc()
    compact_indptr, narrow = compact_csc(s)
    assert narrow.dtype == np.int32 and wide.dtype == np.int64 and compact_indptr.dtype == np.int64
    assert np.array_equal(narrow, wide) and np.array_equal(compact_indptr, indptr)
    samplers = NeighbourSampler(indptr, wide, [10, 5]), NeighbourSampler(indptr, narrow, [10, 5])
    assert samplers[1].indices is narrow and samplers[1].sampler.indices.dtype == torch.int32  # shared, not widened
    plan = EpochPlan(s.split("train"), 128, seed=7)
    order = plan.order(0)
    for step in range(plan.steps_per_epoch()):
        a, b = (sample_step(sampler, plan, order, 0, step) for sampler in samplers)
        assert a.input_nodes.dtype == b.input_nodes.dtype == np.int64 and np.array_equal(a.input_nodes, b.input_nodes)
        for x, y in zip(a.layers, b.layers):
            assert (x.num_src, x.num_dst) == (y.num_src, y.num_dst)
            assert x.indices.dtype == y.indices.dtype == np.int64
            assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
    # every neighbour (fanout -1) too, from torch tensors
    seeds = torch.arange(0, 3000, 7)
    full = [TorchSampler(torch.from_numpy(indptr), torch.from_numpy(ids), [-1, 3]).sample(seeds, torch.Generator().manual_seed(1))
            for ids in (wide, narrow)]
    assert torch.equal(full[0].input_nodes, full[1].input_nodes)
    assert all(torch.equal(x.indices, y.indices) for x, y in zip(full[0].blocks, full[1].blocks))


def test_a_compact_block_is_for_samplers_and_kernels_get_the_int64_copy() -> None:
    indptr, indices = np.array([0, 2, 3, 5]), np.array([1, 2, 0, 0, 1], dtype=np.int32)
    compact = Block.from_csc(indptr, indices, compact=True)
    assert compact.is_compact and compact.indices.data_ptr() == indices.ctypes.data
    assert not Block.from_csc(indptr, indices).is_compact  # without compact=True int32 is widened, as before
    assert compact.src_degrees().tolist() == [2, 2, 1] and compact.dst_degrees().tolist() == [2, 1, 2]
    h = torch.randn(3, 4)
    with pytest.raises(TypeError, match=r"int32 indices: .*use block.with_int64_indices\(\)"):
        ops.copy_sum(compact, h)
    wide = compact.with_int64_indices()
    assert wide.indices.dtype == torch.int64 and wide.with_int64_indices() is wide and wide.indptr is compact.indptr
    assert torch.allclose(ops.copy_sum(wide, h), torch.stack([h[1] + h[2], h[0], h[0] + h[1]]))
    with pytest.raises(TypeError, match="int32 only in a whole graph"):
        Block(torch.from_numpy(indptr), torch.from_numpy(indices), 4, 3)  # a sampled layer keeps int64 ids


def test_label_types_hold_every_class_and_unknown() -> None:
    assert [label_dtype(c) for c in (1, 8, 127, 128, 129, 300, 32768, 40000)] == [
        np.int8, np.int8, np.int8, np.int8, np.int16, np.int16, np.int16, np.int32]
    assert smallest_int(-1, 2**40) == np.int64


def test_compact_data_gives_the_same_batches_labels_and_loss(store: str) -> None:
    cfg = DataConfig(store=store)
    wide = load_node_data(cfg, self_loops=False)
    narrow = load_node_data(cfg, self_loops=False, spill=False)  # a sampled run: compact by default
    assert wide.label.dtype == torch.int64 and narrow.label.dtype == torch.int8
    assert wide.graph.indices.dtype == torch.int64 and narrow.graph.indices.dtype == torch.int32
    assert graph_arrays(narrow.graph)[1].dtype == np.int32  # what the samplers get
    train = TrainConfig(executor="minibatch", fanouts=[4, 3], batch_size=256, seed=2)
    torch.manual_seed(0)
    logits = torch.randn(3000, wide.num_classes)
    batches = [list(SampledBatches(data, train, 2).epoch(1, 0)) for data in (wide, narrow)]
    assert len(batches[0]) == len(batches[1]) > 2
    for a, b in zip(*batches):
        assert b.y.dtype == torch.int64 and torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
        assert all(torch.equal(x.indices, y.indices) for x, y in zip(a.graphs, b.graphs))
        ids = a.graphs[-1].dst_ids
        assert F.cross_entropy(logits[ids], a.y).item() == F.cross_entropy(logits[ids], b.y).item()
    with_loops = load_node_data(cfg, self_loops=True, compact=True)  # GCN's loops added, still compact
    assert with_loops.graph.indices.dtype == torch.int32
    assert torch.equal(with_loops.graph.with_int64_indices().indices, load_node_data(cfg, self_loops=True).graph.indices)


def test_a_store_with_more_classes_than_int8_holds(tmp_path) -> None:
    n, classes = 400, 300
    rng = np.random.default_rng(0)
    label = rng.integers(0, classes, n)
    label[:5] = [-1, 0, 127, 128, classes - 1]
    src, dst = rng.integers(0, n, 2000), np.sort(rng.integers(0, n, 2000))
    indptr = np.searchsorted(dst, np.arange(n + 1))
    url = str(tmp_path / "many")
    with DatasetWriter(url, "many", num_nodes=n) as writer:
        writer.write_graph(indptr, src)
        writer.write_node_data(rng.standard_normal((n, 4)), label, {"train": np.arange(5, 300), "valid": np.arange(300, 400)})
        writer.commit()
    s = DatasetStore.open(url)
    assert s.meta.num_classes == classes
    data = load_node_data(DataConfig(store=url), self_loops=False, spill=False)
    assert data.label.dtype == torch.int16 and data.label.tolist() == label.tolist()
    with pytest.raises(Exception, match="outside int8"):
        read_as(s, layout.LABEL, np.int8)
    batch = next(iter(SampledBatches(data, TrainConfig(executor="minibatch", fanouts=[3], batch_size=64), 1).epoch(0, 0)))
    assert batch.y.dtype == torch.int64 and batch.y.tolist() == label[batch.graphs[-1].dst_ids.numpy()].tolist()


def test_valid_and_test_are_cut_to_the_nodes_the_sampled_evaluation_scores(store: str) -> None:
    from strata.runtime.gnn import evaluation

    data = load_node_data(DataConfig(store=store), self_loops=False, spill=False)
    cfg = TrainConfig(executor="minibatch", eval_nodes=100, seed=5)
    full = {name: ids.numpy().copy() for name, ids in data.splits.items()}
    picked = {name: evaluation.eval_nodes(ids, 100, 5, i) for i, (name, ids) in enumerate(full.items())}
    evaluation.keep_scored_nodes(data, cfg)
    assert len(data.splits["train"]) == len(full["train"]) > 100  # training keeps every seed
    for i, name in enumerate(("valid", "test")):
        assert np.array_equal(data.splits[name].numpy(), picked[name])
        assert np.array_equal(evaluation.eval_nodes(data.splits[name].numpy(), 100, 5, i + 1), picked[name])  # the same again


def test_the_executor_builds_its_whole_graph_only_when_a_full_graph_evaluation_asks(store: str) -> None:
    from strata.models.config import ModelConfig
    from strata.models.gnn import build_gnn
    from strata.runtime.dist.comm import Comm
    from strata.runtime.gnn.batches import make_batches
    from strata.runtime.gnn.executors.minibatch import DataParallelExecutor
    from strata.runtime.loop import train_step

    cfg = TrainConfig(executor="minibatch", fanouts=[4, 3], batch_size=256, seed=2)
    runs = []
    for compact in (False, True):
        data = load_node_data(DataConfig(store=store), self_loops=False, compact=compact)
        torch.manual_seed(0)
        model = build_gnn(ModelConfig(name="sage", hidden=16, num_layers=2, dropout=0.0), data.feat.shape[1], data.num_classes)
        executor = DataParallelExecutor("minibatch", model, data, make_batches(data, cfg, 2), Comm(0, 1),
                                        torch.optim.Adam(model.parameters(), lr=0.01))
        losses = [train_step(executor, [batch], comm=Comm(0, 1)).loss for batch in executor.epoch(0, 0)]
        assert executor._graph is None  # sampled steps need no whole-graph Block
        scores = executor.evaluate()  # the full-graph evaluation takes the int64 copy
        assert executor.graph.indices.dtype == torch.int64 and executor.whole.is_compact == compact
        runs.append((losses, scores))
    assert runs[0] == runs[1]
