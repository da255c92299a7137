"""TrainingMetrics: feature-store totals become Prometheus counters that only ever rise."""

from __future__ import annotations

from strata.runtime.config import MetricsConfig
from strata.runtime.metrics import TrainingMetrics


def _value(metrics: TrainingMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {**metrics.labels, **labels})
    return 0.0 if value is None else value


def test_feature_totals_advance_counters_by_their_increase() -> None:
    metrics = TrainingMetrics(MetricsConfig(job="t"), rank=0, local_rank=0, executor="minibatch", jsonl_url=None)
    metrics.observe_feature_totals(cache_hits={"host": 10, "packed": 90}, storage_read_bytes=4096)
    metrics.observe_feature_totals(cache_hits={"host": 25, "packed": 90}, storage_read_bytes=6000)
    assert _value(metrics, "strata_cache_hits_total", tier="host") == 25
    assert _value(metrics, "strata_cache_hits_total", tier="packed") == 90
    assert _value(metrics, "strata_storage_read_bytes_total") == 6000
    # A total that went backwards (a new store) never makes a Prometheus counter fall.
    metrics.observe_feature_totals(cache_hits={"host": 5}, storage_read_bytes=100)
    assert _value(metrics, "strata_cache_hits_total", tier="host") == 25
    assert _value(metrics, "strata_storage_read_bytes_total") == 6000
