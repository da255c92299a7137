"""The device feed: on the CPU it yields the plain path's very batches; on CUDA (tests marked
``cuda``) the pinned, side-stream copies deliver the same batches, and the device tier holds
its rows on the GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from strata.graph.block import Block
from strata.models.config import ModelConfig
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.dist.topology import single_process
from strata.runtime.gnn.batches import Batch, FeatureOptions, make_batches
from strata.runtime.gnn.config import TrainConfig
from strata.runtime.gnn.data import load_node_data
from strata.runtime.gnn.device_feed import DeviceFeed, placed
from strata.runtime.gnn.executors.minibatch import DataParallelExecutor
from strata.runtime.gnn.trainer import train_node_classifier
from strata.storage.featstore.caches import FeatureCounters, NodeCache
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.tiered import DeviceRows, TieredFeatures
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.storage.rows import ChunkedRows
from strata.storage.store import DatasetStore

CFG = TrainConfig(mode="minibatch", executor="minibatch", fanouts=[4, 3], batch_size=64, epochs=2, seed=3)


@pytest.fixture(scope="module")
def syn_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("feed") / "syn")
    write_synthetic(SyntheticGraphConfig(num_nodes=3000, avg_degree=6, feat_dim=32, train_fraction=0.2), url, progress=False)
    return url


def _source(store: str, features: FeaturesConfig | None, device: torch.device | None = None):
    data = load_node_data(DataConfig(store=store), self_loops=False, load_features=features is None)
    options = None if features is None else FeatureOptions(features, store, device=device)
    return make_batches(data, CFG, 2, options)


def _assert_same(a: Batch, b: Batch) -> None:
    """Equal tensors, bit for bit, wherever each lives."""
    assert torch.equal(a.x.cpu(), b.x.cpu()) and torch.equal(a.seeds.cpu(), b.seeds.cpu()) and torch.equal(a.y.cpu(), b.y.cpu())
    assert isinstance(a.graphs, list) and isinstance(b.graphs, list) and len(a.graphs) == len(b.graphs)
    for p, q in zip(a.graphs, b.graphs):
        assert (p.num_src, p.num_dst) == (q.num_src, q.num_dst)
        for name in ("indptr", "indices", "src_ids", "dst_ids"):
            assert torch.equal(getattr(p, name).cpu(), getattr(q, name).cpu()), name


@pytest.mark.parametrize("mode", ["in_memory", "cached"])
def test_cpu_feed_yields_the_plain_path_batches(syn_store: str, mode: str) -> None:
    features = None if mode == "in_memory" else FeaturesConfig(mode="cached", host_cache_bytes=1 << 20, prefetch=2)
    plain, fed = _source(syn_store, features), _source(syn_store, features)
    feed = DeviceFeed(torch.device("cpu"))
    assert not feed.copies
    for epoch in range(2):
        expected = list(plain.epoch(epoch, 1))
        got = list(feed(fed.epoch(epoch, 1)))
        assert len(got) == len(expected) == plain.steps_per_epoch() - 1 > 3
        for a, b in zip(got, expected):
            _assert_same(a, b)
    assert feed.stats.batches == 2 * (plain.steps_per_epoch() - 1) and feed.stats.copied_bytes == 0
    plain.close()
    fed.close()


def test_a_staged_batch_is_completed_before_use() -> None:
    """The host rows of a staged batch are those the device tier does not serve, compact; on
    the device they and the device tier's rows are placed. The placing arithmetic is the same on
    the CPU, so it is checked here against the full rows."""
    full = torch.rand(6, 4) + 0.1  # non-negative rows, as row normalisation assumes
    cache = torch.rand(3, 4)
    cache[2], cache[0] = full[1], full[4]
    host_positions = torch.tensor([0, 2, 3, 5])
    rows = DeviceRows(torch.tensor([1, 4]), torch.tensor([2, 0]), cache, host_positions, 6)
    block = Block.from_csc(torch.tensor([0, 1, 2]), torch.tensor([2, 3]), num_src=6)
    batch = Batch([block], full[host_positions], torch.arange(2), torch.tensor([0, 1]), rows)
    done = placed(batch, "cpu")
    assert done.device_rows is None and torch.equal(done.x, full)
    normalized_rows = DeviceRows(rows.positions, rows.slots, cache, host_positions, 6, normalize=True)
    normalized = placed(Batch([block], full[host_positions], batch.seeds, batch.y, normalized_rows), "cpu")
    assert torch.allclose(normalized.x[[1, 4]], full[[1, 4]] / full[[1, 4]].sum(1, keepdim=True))
    assert torch.equal(normalized.x[host_positions], full[host_positions])
    plain = Batch([block], full, batch.seeds, batch.y)
    assert placed(plain, "cpu") is plain


def test_staged_rows_leave_the_device_tier_out_and_place_it_back(syn_store: str) -> None:
    """The tiered store's staging with a device tier (a CPU stand-in here: the arithmetic is the
    device's): the host part holds only the other rows, compact and in order, and placing the
    device tier's rows gives the store's rows, for lookups by id and for a packed step's ranks."""
    store = DatasetStore.open(syn_store)
    feat = store.features()
    rng = np.random.default_rng(0)
    hot = rng.permutation(len(feat))[:900].astype(np.int64)  # hottest first: 300 "device", 600 host
    table = torch.from_numpy(feat[hot])
    cpu = torch.device("cpu")
    tiers = TieredFeatures(ChunkedRows(store), FeatureCounters(), device_cache=NodeCache(hot[:300], table[:300], 32, cpu),
                           host_cache=NodeCache(hot[300:], table[300:], 32, cpu), device=cpu)
    nodes = rng.choice(len(feat), 400, replace=False).astype(np.int64)
    host, rows = tiers.stage(nodes)
    on_device = np.isin(nodes, hot[:300])
    assert rows is not None and len(rows.positions) == on_device.sum() > 0 and len(host) == (~on_device).sum()
    assert torch.equal(host, torch.from_numpy(feat[nodes[~on_device]]))
    assert torch.equal(tiers.assemble(nodes), torch.from_numpy(feat[nodes]))
    rank_of = dict(zip(hot.tolist(), range(len(hot))))
    ranks = np.array([rank_of.get(v, -1) if v % 3 else -1 for v in nodes.tolist()], dtype=np.int32)  # some hot ones packed
    packed = feat[nodes[ranks < 0]]
    host, rows = tiers.stage_ranked(nodes, ranks, packed)
    assert rows is not None and len(host) == int(((ranks < 0) | (ranks >= 300)).sum())
    assert torch.equal(tiers.assemble_ranked(nodes, ranks, packed), torch.from_numpy(feat[nodes]))
    assert tiers.counters.cache_hits()["device"] == 2 * on_device.sum() + 2 * int(((ranks >= 0) & (ranks < 300)).sum())


def test_minibatch_trainer_ends_at_the_plain_path_loss(syn_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the trainer: the run through the feed and a run over the batch source
    itself (the path before the feed) reach the same final loss, bit for bit."""
    model = ModelConfig(name="sage", hidden=16, num_layers=2)
    features = FeaturesConfig(mode="cached", host_cache_bytes=1 << 20, prefetch=1)
    fed_batches = []
    feed_call = DeviceFeed.__call__

    def counting(self: DeviceFeed, source):
        for batch in feed_call(self, source):
            fed_batches.append(len(batch))
            yield batch

    def run(name: str) -> float:
        return train_node_classifier(DataConfig(store=syn_store), model, CFG, CheckpointConfig(), MetricsConfig(),
                                     run_dir=str(tmp_path / name), progress=False, features=features).final_loss

    with monkeypatch.context() as patch:
        patch.setattr(DeviceFeed, "__call__", counting)
        through_feed = run("fed")
    assert len(fed_batches) == 2 * 10  # 600 training nodes, 64 a batch, 2 epochs: every batch came through
    with monkeypatch.context() as patch:
        patch.setattr(DataParallelExecutor, "epoch", lambda self, epoch, start: self.batches.epoch(epoch, start))
        plain = run("plain")
    assert through_feed == plain and np.isfinite(plain)


# -- CUDA --------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["in_memory", "cached"])
def test_cuda_feed_delivers_the_cpu_batches(syn_store: str, mode: str) -> None:
    """Pinned host tensors, copies on a side stream, device-tier rows placed on the GPU: the
    batches equal the CPU path's, bit for bit, and the copies were timed."""
    cuda = torch.device("cuda", torch.cuda.current_device())
    cpu_features = None if mode == "in_memory" else FeaturesConfig(mode="cached", host_cache_bytes=1 << 20)
    gpu_features = None if mode == "in_memory" else FeaturesConfig(mode="cached", host_cache_bytes=1 << 20,
                                                                   device_cache_bytes=200 * 32 * 4)
    reference, source = _source(syn_store, cpu_features), _source(syn_store, gpu_features, cuda)
    feed = DeviceFeed(cuda)
    expected = list(reference.epoch(0, 0))
    got = []
    for batch in feed(source.epoch(0, 0)):
        assert batch.x.is_cuda and all(b.device == cuda for b in batch.graphs) and batch.device_rows is None
        torch.cuda.current_stream().synchronize()
        got.append(batch)
    assert len(got) == len(expected) > 3
    for a, b in zip(got, expected):
        _assert_same(a, b)
    stats = feed.summary()
    assert stats.batches == len(expected) and stats.copied_bytes > 0 and stats.copy_seconds > 0
    assert 0.0 <= stats.overlap <= 1.0
    if mode == "cached":
        tiers = source.loader.tiers
        assert len(tiers.device_cache) == 200 and tiers.device_cache.rows.is_cuda
        assert stats.device_rows > 0 and source.counters.cache_hits()["device"] == stats.device_rows
    reference.close()
    source.close()


@pytest.mark.cuda
def test_cuda_minibatch_trainer_trains_through_the_device_tier(syn_store: str, tmp_path: Path) -> None:
    """The trainer on the GPU (device tier on, batches staged and fed) ends where the same run on
    the CPU ends, up to the kernels' rounding (no dropout: its masks come from another generator)."""
    features = FeaturesConfig(mode="cached", host_cache_bytes=1 << 20, device_cache_bytes=200 * 32 * 4, prefetch=2)
    model = ModelConfig(name="sage", hidden=16, num_layers=2, dropout=0.0)
    cfg = TrainConfig(mode="minibatch", executor="minibatch", fanouts=[4, 3], batch_size=64, epochs=2, seed=3, precision="fp32")

    def run(name: str, cuda_devices: int):
        return train_node_classifier(DataConfig(store=syn_store), model, cfg, CheckpointConfig(), MetricsConfig(),
                                     run_dir=str(tmp_path / name), progress=False, features=features,
                                     topology=single_process(cuda_devices=cuda_devices))

    on_gpu, on_cpu = run("gpu", 1), run("cpu", 0)
    assert on_gpu.steps == on_cpu.steps == 20
    assert on_gpu.final_loss == pytest.approx(on_cpu.final_loss, rel=1e-3)
