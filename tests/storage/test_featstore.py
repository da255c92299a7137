"""The tiered feature store without training: sampler, pack format, reader, caches, prefetch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from strata.errors import ConfigError, PackError
from strata.storage import fs
from strata.storage.featstore import format as fmt
from strata.storage.featstore.config import FeaturesConfig
from strata.storage.featstore.loader import open_packed
from strata.storage.featstore.prefetch import FeatureLoadError, prefetched
from strata.storage.featstore.reader import PackReader
from strata.storage.featstore.sampling import (
    EpochPlan,
    NeighbourSampler,
    SamplerConfig,
    sample_step,
)
from strata.storage.featstore.writer import Packer, pack
from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.storage.store import DatasetStore

SAMPLER = SamplerConfig([4, 3], 64, seed=3)


@pytest.fixture
def syn_store(store_root: str) -> str:
    url = f"{store_root}/syn"
    write_synthetic(SyntheticGraphConfig(num_nodes=3000, avg_degree=6, feat_dim=16, kind="rmat", train_fraction=0.2), url, progress=False)
    return url


def _budget(store_url: str, sampler: SamplerConfig, extra_rows: int, epochs: int = 2) -> int:
    """A host budget that leaves ``extra_rows`` hot rows once the batches in flight are covered."""
    store = DatasetStore.open(store_url)
    row_bytes = store.meta.feat_dim * 4
    graph = NeighbourSampler(*store.csc(), sampler.fanouts)
    plan = EpochPlan(store.split("train"), sampler.batch_size, sampler.seed)
    max_rows = 0
    for epoch in range(epochs):
        order = plan.order(epoch)
        for step in range(plan.steps_per_epoch()):
            max_rows = max(max_rows, len(sample_step(graph, plan, order, epoch, step).input_nodes))
    return FeaturesConfig().batches_in_flight() * max_rows * row_bytes + extra_rows * row_bytes


# -- sampling ------------------------------------------------------------------------------


def test_sampler_is_the_same_on_any_thread_and_takes_distinct_in_edges() -> None:
    rng = np.random.default_rng(0)
    n = 500
    dst = np.sort(rng.integers(0, n, 5000))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))])
    indices = rng.integers(0, n, 5000)
    sampler = NeighbourSampler(indptr, indices, [5, 3])
    plan = EpochPlan(np.arange(0, n, 3), 50, seed=7)
    order = plan.order(1)
    main = sample_step(sampler, plan, order, 1, 2)
    other: list = []
    thread = threading.Thread(target=lambda: other.append(sample_step(sampler, plan, order, 1, 2)))
    thread.start()
    thread.join()
    assert np.array_equal(main.input_nodes, other[0].input_nodes)
    for a, b in zip(main.layers, other[0].layers):
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indptr, b.indptr)
    assert not np.array_equal(main.input_nodes, sample_step(sampler, plan, order, 1, 3).input_nodes)
    # Each destination got min(degree, fanout) distinct in-edges of its own.
    for layer, fanout in zip(main.layers, [5, 3]):
        for row in range(layer.num_dst):
            v = main.input_nodes[row]
            picked = main.input_nodes[layer.indices[layer.indptr[row] : layer.indptr[row + 1]]]
            own = indices[indptr[v] : indptr[v + 1]]
            assert len(picked) == min(len(own), fanout)
            assert np.isin(picked, own).all()
    assert np.array_equal(main.output_nodes, plan.seeds(order, 2))


def test_sampler_draws_neighbours_uniformly() -> None:
    # One node with 10 in-edges, fanout 3: each edge is drawn with probability 0.3.
    indptr = np.array([0, 10] + [10] * 10)
    indices = np.arange(1, 11)
    sampler = NeighbourSampler(indptr, indices, [3])
    hits = np.zeros(11)
    rng = np.random.default_rng(0)
    for _ in range(4000):
        batch = sampler.sample(np.array([0]), rng)
        hits[batch.input_nodes[1:]] += 1
    assert np.all(np.abs(hits[1:] / 4000 - 0.3) < 0.03)


# -- pack and read -------------------------------------------------------------------------


def test_pack_round_trip_and_read_amplification(syn_store: str) -> None:
    """Every row a batch needs comes from exactly one tier, bit for bit; with no hot set all of
    them come from packed segments and bytes read / bytes needed is 1 plus headers."""
    budget = _budget(syn_store, SAMPLER, extra_rows=0)
    result = pack(syn_store, SAMPLER, 2, host_cache_bytes=budget, group_size=3, progress=False)
    assert result.summary.hot_rows == 0 and result.summary.packed_rows == result.summary.total_input_rows
    store = DatasetStore.open(syn_store)
    feat = store.features()
    train = store.split("train")
    loader = open_packed(FeaturesConfig(mode="packed", host_cache_bytes=budget), syn_store, SAMPLER, 2, train)
    try:
        for epoch in range(2):
            for step in range(loader.steps_per_epoch()):
                loaded = loader.load(epoch, step)
                record = loader.reader.record(epoch, step)
                assert torch.equal(loaded.x, torch.from_numpy(feat[record.input_nodes]))
        counters = loader.counters
        assert counters.cache_hits()["packed"] == result.summary.total_input_rows
        assert counters.tiers["zarr"].hits == 0
        ratio = counters.read_amplification()
        assert 1.0 <= ratio <= 1.05, ratio
    finally:
        loader.close()


def test_hot_rows_leave_segments_and_misses_fall_back_to_the_store(syn_store: str) -> None:
    budget = _budget(syn_store, SAMPLER, extra_rows=400, epochs=1)
    result = pack(syn_store, SAMPLER, 1, host_cache_bytes=budget, group_size=4, progress=False)
    s = result.summary
    assert s.hot_rows == 400 and s.packed_rows < s.total_input_rows
    assert s.hot_access_share > 400 / 3000  # hot nodes are the most accessed: more than their share
    store = DatasetStore.open(syn_store)
    feat, train = store.features(), store.split("train")
    # Training with a smaller budget than the pack's: the hot rows that do not fit come from the store.
    cfg = FeaturesConfig(mode="packed", host_cache_bytes=budget - 150 * 64)
    loader = open_packed(cfg, syn_store, SAMPLER, 1, train)
    try:
        for step in range(loader.steps_per_epoch()):
            record = loader.reader.record(0, step)
            assert torch.equal(loader.load(0, step).x, torch.from_numpy(feat[record.input_nodes]))
        hits = loader.counters.cache_hits()
        assert hits["host"] > 0 and hits["packed"] == s.packed_rows and hits["zarr"] > 0 and hits["device"] == 0
        assert sum(hits.values()) == s.total_input_rows
    finally:
        loader.close()


def test_pack_refuses_another_run(syn_store: str, store_root: str) -> None:
    budget = _budget(syn_store, SAMPLER, 100)
    url = pack(syn_store, SAMPLER, 1, host_cache_bytes=budget, progress=False).url
    store = DatasetStore.open(syn_store)
    train = store.split("train")
    cfg = FeaturesConfig(mode="packed", pack_dir=url, host_cache_bytes=budget)
    with pytest.raises(PackError, match=r"seed: 3 in the pack, 4 here"):
        open_packed(cfg, syn_store, SamplerConfig([4, 3], 64, seed=4), 1, train)
    with pytest.raises(PackError, match=r"fanouts: \[4, 3\] in the pack, \[5, 3\] here"):
        open_packed(cfg, syn_store, SamplerConfig([5, 3], 64, seed=3), 1, train)
    with pytest.raises(PackError, match=r"epochs: 1 in the pack, 2 here"):
        open_packed(cfg, syn_store, SAMPLER, 2, train)
    other = f"{store_root}/other"
    write_synthetic(SyntheticGraphConfig(num_nodes=3000, avg_degree=6, feat_dim=16, kind="rmat", train_fraction=0.2, seed=9), other, progress=False)
    with pytest.raises(PackError, match=r"refused: the store's node/feat differ"):
        open_packed(cfg, other, SAMPLER, 1, DatasetStore.open(other).split("train"))
    # With no pack_dir, the default place is looked up and the message says how to make it.
    with pytest.raises(PackError, match=r"strata pack .* --fanouts 4,3 --batch-size 64 --epochs 1 --seed 5"):
        open_packed(FeaturesConfig(mode="packed", host_cache_bytes=budget), syn_store, SamplerConfig([4, 3], 64, seed=5), 1, train)


def _segment_file(url: str, epoch: int = 0, group: int = 0) -> tuple[str, fmt.GroupIndex]:
    gdir = fs.join(url, fmt.group_name(epoch, group))
    return fs.join(gdir, fmt.FEAT), fmt.GroupIndex.from_json(fs.read_text(fs.join(gdir, fmt.FEAT_MARKER)), gdir)


def test_groups_packed_in_one_pass_equal_groups_packed_one_by_one(syn_store: str) -> None:
    """Several groups share one read of the feature array (a window up to the host budget):
    the segments are byte for byte those of a pack that reads once per group, and fewer bytes
    are read."""
    budget = _budget(syn_store, SAMPLER, 50)
    one_by_one = pack(syn_store, SAMPLER, 2, "memory://strata-pack-narrow", host_cache_bytes=budget, group_size=2,
                      window_bytes=1, progress=False)
    together = pack(syn_store, SAMPLER, 2, "memory://strata-pack-wide", host_cache_bytes=budget, group_size=2, progress=False)
    groups = one_by_one.manifest.groups_per_epoch()
    assert groups >= 3
    for epoch in range(2):
        for group in range(groups):
            (a, index_a), (b, index_b) = _segment_file(one_by_one.url, epoch, group), _segment_file(together.url, epoch, group)
            assert fs.read_bytes(a) == fs.read_bytes(b) and index_a.to_json() == index_b.to_json()
    assert together.summary.packed_rows == one_by_one.summary.packed_rows
    assert together.summary.bytes_read < one_by_one.summary.bytes_read / 2, (together.summary, one_by_one.summary)
    fs.remove(one_by_one.url)
    fs.remove(together.url)


def test_truncated_or_corrupt_segment_never_yields_a_batch(syn_store: str) -> None:
    budget = _budget(syn_store, SAMPLER, 0)
    url = pack(syn_store, SAMPLER, 1, host_cache_bytes=budget, group_size=2, progress=False).url
    train = DatasetStore.open(syn_store).split("train")
    cfg = FeaturesConfig(mode="packed", host_cache_bytes=budget)
    path, index = _segment_file(url)
    original = fs.read_bytes(path)
    last = index.entries[-1]

    fs.write_bytes(path, original[: last.offset + last.length - 7])  # step 1 loses its tail
    loader = open_packed(cfg, syn_store, SAMPLER, 1, train)
    loader.load(0, 0)
    with pytest.raises(PackError, match="truncated"):
        loader.load(0, 1)
    loader.close()

    flipped = bytearray(original)
    flipped[index.entries[0].offset + fmt.SEGMENT_HEADER.size + 5] ^= 0x40  # one bit of step 0's rows
    fs.write_bytes(path, bytes(flipped))
    loader = open_packed(cfg, syn_store, SAMPLER, 1, train)
    seen = []
    with pytest.raises(FeatureLoadError, match="checksum") as info:
        for batch in prefetched(lambda s: loader.load(0, s), range(3), depth=2):
            seen.append(batch)
    assert seen == [] and isinstance(info.value.__cause__, PackError)
    loader.close()


def test_incomplete_pack_is_refused_and_resumes_without_redoing_groups(syn_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = _budget(syn_store, SAMPLER, 50)
    reference = pack(syn_store, SAMPLER, 2, "memory://strata-ref-pack", host_cache_bytes=budget, group_size=2, progress=False)
    calls = {"n": 0}
    real = Packer._write_segments

    def crash_after_two(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Packer, "_write_segments", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        pack(syn_store, SAMPLER, 2, host_cache_bytes=budget, group_size=2, progress=False)
    monkeypatch.setattr(Packer, "_write_segments", real)
    train = DatasetStore.open(syn_store).split("train")
    with pytest.raises(PackError, match="incomplete"):
        open_packed(FeaturesConfig(mode="packed", host_cache_bytes=budget), syn_store, SAMPLER, 2, train)

    groups = 2 * reference.manifest.groups_per_epoch()
    resumed = pack(syn_store, SAMPLER, 2, host_cache_bytes=budget, group_size=2, progress=False)
    assert resumed.resumed_sampled == groups and resumed.resumed_packed == 2
    for epoch in range(2):
        for group in range(reference.manifest.groups_per_epoch()):
            a, _ = _segment_file(reference.url, epoch, group)
            b, _ = _segment_file(resumed.url, epoch, group)
            assert fs.read_bytes(a) == fs.read_bytes(b)
    fs.remove(reference.url)
    # Same command, other settings: refused, not silently mixed.
    with pytest.raises(PackError, match="group size: 2 in the pack, 3 here"):
        pack(syn_store, SAMPLER, 2, host_cache_bytes=budget, group_size=3, progress=False)


def test_budget_too_small_for_the_batches_in_flight(syn_store: str) -> None:
    with pytest.raises(ConfigError, match=r"host_cache_bytes = 1,000 cannot hold the 3 batch buffers in flight \(prefetch 0, workers 1\)"):
        pack(syn_store, SAMPLER, 1, host_cache_bytes=1000, progress=False)


def test_remote_pack_is_staged_to_the_spill_dir(tmp_path, syn_store: str) -> None:
    budget = _budget(syn_store, SAMPLER, 0)
    url = pack(syn_store, SAMPLER, 1, "memory://strata-staged-pack", host_cache_bytes=budget, group_size=2, progress=False).url
    spill = tmp_path / "spill"
    reader = PackReader.open(url, spill_dir=str(spill))
    try:
        steps = reader.manifest.steps_per_epoch
        for step in range(steps):
            reader.segment(0, step)
        staged = sorted(p.name for p in spill.iterdir())
        assert 0 < len(staged) <= 3 and all(p.startswith("groups_e0000") for p in staged)
    finally:
        reader.close()
        fs.remove(url)
    assert not any(spill.iterdir())


# -- prefetch ------------------------------------------------------------------------------


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("strata-prefetch")]


def test_prefetch_keeps_order_and_bounds_the_queue() -> None:
    started: list[int] = []

    def load(step: int) -> int:
        started.append(step)
        time.sleep(0.002 * (step % 3))
        return step * 10

    it = prefetched(load, range(20), depth=3, workers=2)
    first = next(it)
    time.sleep(0.05)
    assert first == 0 and len(started) <= 4  # the one consumed plus at most 3 ahead
    assert [first, *it] == [s * 10 for s in range(20)]
    assert not _prefetch_threads()


def test_prefetch_error_reaches_the_consumer_with_its_cause_and_stops_the_threads() -> None:
    def load(step: int) -> int:
        if step == 4:
            raise ValueError("disk on fire")
        return step

    got = []
    with pytest.raises(FeatureLoadError, match="step 4.*disk on fire") as info:
        for x in prefetched(load, range(10), depth=2, workers=2):
            got.append(x)
    assert got == [0, 1, 2, 3] and isinstance(info.value.__cause__, ValueError)
    assert not _prefetch_threads()


def test_prefetch_shuts_down_on_interrupt() -> None:
    loaded: list[int] = []

    def load(step: int) -> int:
        time.sleep(0.01)
        loaded.append(step)
        return step

    with pytest.raises(KeyboardInterrupt):
        for step in prefetched(load, range(1000), depth=4, workers=2):
            if step == 3:
                raise KeyboardInterrupt
    assert not _prefetch_threads()
    count = len(loaded)
    time.sleep(0.05)
    assert len(loaded) == count <= 3 + 1 + 4  # nothing runs after shutdown; never more than depth ahead


def test_features_config_validation() -> None:
    with pytest.raises(ConfigError, match="features.mode must be one of in_memory, cached, packed"):
        FeaturesConfig(mode="disk")
    with pytest.raises(ConfigError, match="features.workers"):
        FeaturesConfig(workers=0)
    with pytest.raises(ConfigError, match="features.prefetch"):
        FeaturesConfig(prefetch=-1)


def test_features_section_of_a_job_config(tmp_path) -> None:
    from strata.launch.job import load_job

    config = tmp_path / "job.yaml"
    config.write_text("data: {store: x}\nfeatures: {mode: packed, host_cache_bytes: 1000000, prefetch: 1}\n")
    job = load_job(str(config))
    assert (job.features.mode, job.features.host_cache_bytes, job.features.prefetch) == ("packed", 1_000_000, 1)
    config.write_text("data: {store: x}\nfeatures: {mode: packd}\n")
    with pytest.raises(ConfigError, match="features.mode must be one of"):
        load_job(str(config))
    config.write_text("data: {store: x}\nfeatures: {cache: 3}\n")
    with pytest.raises(ConfigError, match="unknown config key 'features.cache'"):
        load_job(str(config))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the device cache tier needs a CUDA device")
def test_device_cache_serves_the_hottest_rows_on_cuda(syn_store: str) -> None:
    budget = _budget(syn_store, SAMPLER, 200, epochs=1)
    pack(syn_store, SAMPLER, 1, host_cache_bytes=budget, progress=False)
    store = DatasetStore.open(syn_store)
    cfg = FeaturesConfig(mode="packed", host_cache_bytes=budget, device_cache_bytes=50 * 64)
    loader = open_packed(cfg, syn_store, SAMPLER, 1, store.split("train"), device=torch.device("cuda"))
    try:
        record = loader.reader.record(0, 0)
        x = loader.load(0, 0).x
        assert x.is_cuda and torch.equal(x.cpu(), torch.from_numpy(store.features()[record.input_nodes]))
        assert loader.counters.cache_hits()["device"] > 0
    finally:
        loader.close()
