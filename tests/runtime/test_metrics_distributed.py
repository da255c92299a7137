"""Every rank's Prometheus endpoint during a 2-rank graph-parallel run: parsed with
prometheus_client's own parser, counters rise, and the all_to_all bytes equal the analytic
halo volume."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from tests.helpers.ports import free_port
from tests.helpers.workers import start_workers

WORLD, FEAT, HIDDEN, LAYERS, EPOCHS = 2, 12, 8, 3, 6
PAUSES = (2, 5)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=600, avg_degree=6, num_classes=3, feat_dim=FEAT, seed=2), url, progress=False)
    return url


def _train(topology, store: str, run_dir: str, base_port: int, sync: str) -> dict:
    from strata.models.config import ModelConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.trainer import train_node_classifier

    def pause(state) -> None:
        if state.global_step in PAUSES:
            (Path(sync) / f"at-{topology.rank}-{state.global_step}").touch()
            deadline = time.monotonic() + 120
            while not (Path(sync) / f"go-{state.global_step}").exists():
                assert time.monotonic() < deadline, "the test never scraped"
                time.sleep(0.01)

    result = train_node_classifier(
        DataConfig(store=store),
        ModelConfig(name="gcn", hidden=HIDDEN, num_layers=LAYERS, dropout=0.0),
        TrainConfig(executor="graph_parallel", partitioner="range", epochs=EPOCHS, seed=3),
        CheckpointConfig(),
        MetricsConfig(port=base_port, job="metrics-test"),
        run_dir=run_dir,
        progress=False,
        topology=topology,
        on_step=pause,
    )
    return asdict(result)


def _free_base_port() -> int:
    from strata.runtime.metrics import port_is_free

    while True:
        port = free_port()
        if all(port_is_free(port + r) for r in range(WORLD)):
            return port


def _scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _value(values: dict[tuple, float], name: str, **labels: str) -> float:
    hits = [v for (n, ls), v in values.items() if n == name and all((k, x) in ls for k, x in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def _halo_total(store: str) -> int:
    from strata.graph.csc import graph_csc
    from strata.partitioners.assign import assign
    from strata.runtime.config import DataConfig
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.executors.partition import local_partition

    data = load_node_data(DataConfig(store=store), self_loops=True)
    indptr, indices = graph_csc(data.graph)
    parts = assign((indptr, indices), WORLD, 3, method="range")
    return sum(local_partition(indptr, indices, parts, r, num_parts=WORLD).num_halo for r in range(WORLD))


def test_every_rank_serves_rising_counters_and_exact_halo_bytes(tmp_path: Path, store: str) -> None:
    base_port, sync = _free_base_port(), tmp_path / "sync"
    sync.mkdir()
    workers = start_workers(_train, WORLD, store, str(tmp_path / "run"), base_port, str(sync))
    scrapes = []
    try:
        for step in PAUSES:
            deadline = time.monotonic() + 120
            while not all((sync / f"at-{r}-{step}").exists() for r in range(WORLD)):
                assert workers.alive() and time.monotonic() < deadline, "workers stopped before the pause"
                time.sleep(0.02)
            scrapes.append([_scrape(base_port + r) for r in range(WORLD)])
            (sync / f"go-{step}").touch()
        results = workers.results(timeout=180)
    finally:
        workers.kill()

    halo = _halo_total(store)
    assert halo > 0
    for rank in range(WORLD):
        early, late = scrapes[0][rank], scrapes[1][rank]
        labels = {"job": "metrics-test", "rank": str(rank), "executor": "graph_parallel"}
        for values in (early, late):
            names = {name for name, _ in values if name.startswith("strata_")}
            assert {"strata_samples_total", "strata_loss", "strata_comm_bytes_total", "strata_comm_seconds_total",
                    "strata_step_duration_seconds_count", "strata_last_step_timestamp_seconds"} <= names
            for (name, ls), _ in values.items():
                if name.startswith("strata_"):
                    assert {k for k, _ in ls} - {"op", "tier", "le", "peer"} == {*labels, "host"}, (name, ls)
        for name in ("strata_samples_total", "strata_step_duration_seconds_count", "strata_last_step_timestamp_seconds"):
            assert _value(late, name, **labels) > _value(early, name, **labels), name
        assert _value(early, "strata_step_duration_seconds_count", **labels) == PAUSES[0]
        for op in ("all_to_all", "all_reduce"):
            assert _value(late, "strata_comm_bytes_total", op=op, **labels) > _value(early, "strata_comm_bytes_total", op=op, **labels)
            assert _value(late, "strata_comm_seconds_total", op=op, **labels) > 0

    # all_to_all bytes, summed over ranks, at the pause after step s: the input features' halo
    # once, then per step each of the L-1 hidden-width exchanges forward and backward, and per
    # evaluation (one after each finished epoch, s-1 so far) each forward only.
    per_exchange = halo * HIDDEN * 4
    for scrape, step in zip(scrapes, PAUSES):
        total = sum(_value(scrape[r], "strata_comm_bytes_total", op="all_to_all", rank=str(r)) for r in range(WORLD))
        assert total == halo * FEAT * 4 + step * (LAYERS - 1) * 2 * per_exchange + (step - 1) * (LAYERS - 1) * per_exchange
    # Between the two pauses the training steps alone moved halo x hidden x bytes x (L-1) layers x 2.
    delta = sum(
        _value(scrapes[1][r], "strata_comm_bytes_total", op="all_to_all", rank=str(r))
        - _value(scrapes[0][r], "strata_comm_bytes_total", op="all_to_all", rank=str(r))
        for r in range(WORLD)
    )
    steps = PAUSES[1] - PAUSES[0]
    assert delta == steps * per_exchange * (LAYERS - 1) * 2 + steps * per_exchange * (LAYERS - 1)

    assert [r["steps"] for r in results] == [EPOCHS] * WORLD
    assert results[0]["test_acc"] == results[1]["test_acc"]
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {e["rank"] for e in events} == {0}
    assert [e["event"] for e in events] == ["start"] + ["epoch"] * EPOCHS + ["end"]
