"""Per-rank training metrics: Prometheus text over HTTP, a Pushgateway summary, JSON lines.

Every series is labelled ``job``, ``rank``, ``executor`` and ``host`` (the rank's hostname), so
a dashboard or an alert can name the machine a rank runs on.

Each rank owns one ``CollectorRegistry`` (no process-wide default registry), serves it on
``base_port + local_rank`` when a port is configured, and pushes it to a Pushgateway at the
end when one is configured. Rank 0 also appends one JSON object per logged event to a file,
for runs without Prometheus.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import push_to_gateway, start_http_server

from strata.errors import StrataError
from strata.runtime.config import MetricsConfig
from strata.storage import fs

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class TrainingMetrics:
    """The strata_* metrics of one rank."""

    def __init__(self, cfg: MetricsConfig, *, rank: int, local_rank: int, executor: str, jsonl_url: str | None) -> None:
        self.cfg = cfg
        self.rank = rank
        self.labels = {"job": cfg.job, "rank": str(rank), "executor": executor, "host": socket.gethostname()}
        self.registry = CollectorRegistry()
        names = list(self.labels)
        reg = self.registry

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, names + list(extra), registry=reg)

        self.step_seconds = Histogram(
            "strata_step_duration_seconds", "Wall time of one training step.", names, buckets=STEP_BUCKETS, registry=reg
        ).labels(**self.labels)
        self.samples = counter("strata_samples", "Training samples (seed nodes or images) processed.").labels(**self.labels)
        self.loss = Gauge("strata_loss", "Training loss of the last step.", names, registry=reg).labels(**self.labels)
        self.storage_read_bytes = counter("strata_storage_read_bytes", "Bytes read from the dataset store.").labels(**self.labels)
        self._cache_hits = counter("strata_cache_hits", "Feature rows served by each cache tier.", ("tier",))
        self._comm_bytes = counter("strata_comm_bytes", "Bytes sent by collectives and point-to-point ops.", ("op",))
        self._comm_seconds = counter("strata_comm_seconds", "Seconds spent in collectives and point-to-point ops.", ("op",))
        self._peer_wait = counter(
            "strata_comm_peer_wait_seconds",
            "Seconds this rank waited for each peer rank's data to arrive, by op (all_to_all on CPU, recv).",
            ("peer", "op"),
        )
        self.data_wait = counter("strata_data_wait_seconds", "Seconds the training loop waited for its next batch.").labels(**self.labels)
        self.last_step = Gauge(
            "strata_last_step_timestamp_seconds", "Unix time at which the last step ended.", names, registry=reg
        ).labels(**self.labels)
        self.bubble = Gauge("strata_pipeline_bubble_ratio", "Idle share of pipeline stage time.", names, registry=reg).labels(**self.labels)
        self._server: Any = None
        self._totals: dict[tuple[str, ...], float] = {}
        self._jsonl = jsonl_url
        if cfg.port:
            self._serve(cfg.port + local_rank)

    def cache_hits(self, tier: str) -> Any:
        return self._cache_hits.labels(**self.labels, tier=tier)

    def comm(self, op: str, nbytes: int, seconds: float, waits: dict[int, float] | None = None) -> None:
        """One op's bytes and seconds, and the seconds it waited on each peer (by global rank)."""
        self._comm_bytes.labels(**self.labels, op=op).inc(nbytes)
        self._comm_seconds.labels(**self.labels, op=op).inc(seconds)
        for peer, waited in (waits or {}).items():
            self._peer_wait.labels(**self.labels, peer=str(peer), op=op).inc(waited)

    def observe_feature_totals(self, *, cache_hits: dict[str, int], storage_read_bytes: int) -> None:
        """Advance the feature-store counters to these running totals (the store counts on its own)."""
        for tier, total in cache_hits.items():
            self._advance(("hits", tier), self.cache_hits(tier), total)
        self._advance(("read",), self.storage_read_bytes, storage_read_bytes)

    def _advance(self, key: tuple[str, ...], counter: Any, total: float) -> None:
        counter.inc(max(0.0, total - self._totals.get(key, 0.0)))
        self._totals[key] = max(total, self._totals.get(key, 0.0))

    def _serve(self, port: int) -> None:
        try:
            self._server, _ = start_http_server(port, addr=self.cfg.addr, registry=self.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StrataError(
                    f"metrics port {port} (metrics.port {self.cfg.port} + local rank) is already in use; "
                    "choose another metrics.port or stop the process holding it"
                ) from exc
            raise

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def step(self, *, seconds: float, samples: int, loss: float) -> None:
        self.step_seconds.observe(seconds)
        self.samples.inc(samples)
        self.loss.set(loss)
        self.last_step.set(time.time())

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line (rank 0 only)."""
        if self._jsonl is None:
            return
        record = {"time": time.time(), "event": event, "rank": self.rank, **fields}
        fsys, path = fs.get_fs(self._jsonl)
        with fsys.open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def push(self) -> None:
        """Push the final values to the configured Pushgateway. An unreachable or refusing
        gateway is a warning: the training is done and its results are already written."""
        if not self.cfg.pushgateway:
            return
        try:
            push_to_gateway(self.cfg.pushgateway, job=self.cfg.job, registry=self.registry, grouping_key={"rank": str(self.rank)})
        except OSError as exc:  # URLError and HTTPError are OSErrors
            log.warning(
                "rank %d could not push its final metrics to the Pushgateway at %s (%s); the run's results are "
                "unaffected and its metrics log has them", self.rank, self.cfg.pushgateway, getattr(exc, "reason", exc),
            )

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def port_is_free(port: int, addr: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((addr, port))
        except OSError:
            return False
    return True
