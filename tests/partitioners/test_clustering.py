"""Streaming mini-batch k-means for diffusion experts."""

from __future__ import annotations

import numpy as np
import pytest

from strata.errors import PartitionError
from strata.partitioners.clustering import KMeansConfig, cluster_array, cluster_store
from strata.storage import fs, layout
from strata.storage.store import DatasetWriter


def _blobs(n: int, k: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 20
    truth = rng.integers(0, k, n)
    return (centres[truth] + rng.normal(size=(n, dim))).astype(np.float32), truth


def test_kmeans_recovers_separated_blobs_over_small_chunks() -> None:
    x, truth = _blobs(5000, 6, 8)
    result = cluster_array(x, KMeansConfig(num_clusters=6, chunk_rows=700, batch_rows=128, init_rows=500, seed=3))
    # Each true blob lands in exactly one cluster and each cluster holds one blob.
    pairs = set(zip(truth.tolist(), result.labels.tolist()))
    assert len(pairs) == 6
    report = result.report
    assert sum(report.sizes) == 5000 and report.empty_clusters == 0
    assert report.balance.max_over_mean == pytest.approx(max(report.sizes) / (5000 / 6))
    assert report.inertia / 5000 == pytest.approx(8, rel=0.2)  # unit noise in 8 dims
    again = cluster_array(x, KMeansConfig(num_clusters=6, chunk_rows=700, batch_rows=128, init_rows=500, seed=3))
    np.testing.assert_array_equal(result.labels, again.labels)


def test_kmeans_streams_image_arrays_from_a_store(store_root: str) -> None:
    x, truth = _blobs(600, 3, 2 * 4 * 4, seed=1)
    url = fs.join(store_root, "images")
    with DatasetWriter(url, "images", num_nodes=600) as writer:
        writer.write(layout.IMAGES, x.reshape(600, 2, 4, 4), chunk_rows=50)
        writer.commit()
    result = cluster_store(url, layout.IMAGES, KMeansConfig(num_clusters=3, chunk_rows=64, batch_rows=32))
    assert result.centroids.shape == (3, 32) and result.labels.dtype == np.int32
    assert len(set(zip(truth.tolist(), result.labels.tolist()))) == 3
    with pytest.raises(PartitionError, match="has no 'node/feat' to cluster"):
        cluster_store(url, layout.FEAT, KMeansConfig(num_clusters=2))


def test_kmeans_bad_input() -> None:
    with pytest.raises(PartitionError, match="cannot cluster 5 rows into 6 clusters"):
        cluster_array(np.zeros((5, 2), np.float32), KMeansConfig(num_clusters=6))
    with pytest.raises(PartitionError, match="num_clusters must be at least 1"):
        KMeansConfig(num_clusters=0)
    result = cluster_array(np.zeros((5, 2), np.float32), KMeansConfig(num_clusters=2))
    assert sum(result.report.sizes) == 5


def test_a_long_clustering_without_a_bar_logs_its_passes(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from strata.partitioners import clustering

    x, _ = _blobs(300, 3, 4)
    cfg = KMeansConfig(num_clusters=3, epochs=3, seed=1)
    caplog.set_level(logging.INFO, logger="strata.partitioners.clustering")
    plain = cluster_array(x, cfg)
    assert caplog.records == []  # quick: nothing to say
    monkeypatch.setattr(clustering, "LOG_EVERY_SECONDS", 0.0)
    logged = cluster_array(x, cfg)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [f"kmeans: pass {i} of 3 over 300 rows" for i in (1, 2, 3)]
    np.testing.assert_array_equal(plain.labels, logged.labels)  # the lines change nothing
