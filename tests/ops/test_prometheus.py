"""A real Prometheus (and Pushgateway) on loopback watching a real 2-rank training run.

Prometheus scrapes each rank's metrics port of `torchrun --nproc-per-node 2 -m strata.launch.cli
train`, loads k8s/prometheus/strata-rules.yaml, and also scrapes a small exporter of faulty
ranks (stalled, NaN loss, far behind) served from this test. The test checks that both ranks'
`strata_samples_total` arrive and rise, that every dashboard expression and template query and
every alert expression evaluates without error (the ones that must show data do), that each
alert picks exactly the faulty rank it is about, and that the final summary of each rank lands
in the Pushgateway. Debian's prometheus and prometheus-pushgateway are installed when missing
(root only); the test skips, saying why, where they cannot be.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.exposition import push_to_gateway, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
from strata.testing.polling import poll
from tests.helpers.paths import REPO
from tests.helpers.ports import free_port
from tests.helpers.servers import http_get, http_ready, require_commands, server, stop

DASHBOARD = REPO / "k8s" / "grafana" / "strata-training.json"
RULES = REPO / "k8s" / "prometheus" / "strata-rules.yaml"
JOB = "prom-test"
FAULTS = "faulty-job"
EPOCHS = 100
# Series scraped from the ranks themselves; the Pushgateway's carry no instance label.
LIVE_SAMPLES = 'strata_samples_total{instance!=""}'

TRAIN_JOB = """
name: prom
data: {{store: {store}}}
model: {{name: sage, hidden: 32, num_layers: 2, dropout: 0.3}}
train: {{executor: minibatch, epochs: {epochs}, lr: 0.01, weight_decay: 0.0, batch_size: 128, fanouts: [5, 5], seed: 7}}
metrics: {{port: {port}, addr: 127.0.0.1, job: {job}, pushgateway: "127.0.0.1:{pushgateway}"}}
"""


def _free_base_port(count: int) -> int:
    from strata.runtime.metrics import port_is_free

    while True:
        port = free_port()
        if port + count < 65536 and all(port_is_free(port + r) for r in range(count)):
            return port


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(http_get(url))
    except Exception as exc:  # an HTTP 400 carries the PromQL error in its body
        detail = exc.read().decode() if hasattr(exc, "read") else str(exc)
        raise AssertionError(f"Prometheus refused {expr!r}: {detail}") from exc
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _by_rank(results: list[dict[str, Any]], job: str) -> dict[str, float]:
    return {r["metric"]["rank"]: float(r["value"][1]) for r in results if r["metric"].get("job") == job}


def _wait(what: str, check, timeout: float, alive=lambda: True) -> Any:
    def still_alive() -> None:
        assert alive(), f"training ended before {what}"

    value = poll(check, timeout, interval=0.5, alive=still_alive)
    assert value, f"timed out waiting for {what}"
    return value


@pytest.fixture(scope="module")
def binaries() -> None:
    require_commands(["prometheus", "prometheus-pushgateway"], ["prometheus", "prometheus-pushgateway"])


@pytest.fixture(scope="module")
def pushgateway(binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("pushgateway") / "pushgateway.log"
    # Debian's build persists to /var/lib/prometheus by default: keep this one in memory.
    argv = ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    with server(argv, ready=http_ready(f"http://127.0.0.1:{port}/-/ready"), log=log):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def faulty_ranks() -> Iterator[int]:
    """An exporter of three faulty ranks of one job: rank 0 stalled 20 minutes ago with a NaN
    loss and 1000 steps, rank 1 stepping now with 100 steps, rank 2 fine with 1000 steps."""
    registry = CollectorRegistry()
    labels = ["job", "rank", "executor"]
    last = Gauge("strata_last_step_timestamp_seconds", "", labels, registry=registry)
    loss = Gauge("strata_loss", "", labels, registry=registry)
    steps = Histogram("strata_step_duration_seconds", "", labels, registry=registry, buckets=(0.1, 1.0))
    now = time.time()
    for rank, (ago, value, count) in enumerate([(1200, math.nan, 1000), (0, 0.5, 100), (0, 0.4, 1000)]):
        key = dict(job=FAULTS, rank=str(rank), executor="minibatch")
        last.labels(**key).set(now - ago)
        loss.labels(**key).set(value)
        for _ in range(count):
            steps.labels(**key).observe(0.05)
    port = free_port()
    httpd, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pushgateway: str, faulty_ranks: int) -> Iterator[dict[str, Any]]:
    """Prometheus scraping both ranks, the Pushgateway and the faulty exporter; training starts
    once Prometheus is ready."""
    root = tmp_path_factory.mktemp("prom-run")
    store = str(root / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=2000, avg_degree=8, num_classes=4, feat_dim=16, seed=1), store, progress=False)
    base = _free_base_port(2)
    (root / "job.yaml").write_text(TRAIN_JOB.format(store=store, epochs=EPOCHS, port=base, job=JOB, pushgateway=pushgateway.split(":")[1]))

    prom_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            # honor_labels: strata's own job and rank labels win over the target's.
            {"job_name": "strata", "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]}]},
            {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [pushgateway]}]},
            {"job_name": "faults", "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{faulty_ranks}"]}]},
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        "prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    url = f"http://127.0.0.1:{prom_port}"
    with server(argv, ready=http_ready(f"{url}/-/ready"), log=root / "prometheus.log"):
        log = (root / "train.log").open("w")
        train = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "strata.launch.cli", "train", "job.yaml", "-q"],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
        )
        try:
            yield {"prometheus": url, "train": train, "root": root, "pushgateway": pushgateway}
        finally:
            if train.poll() is None:
                os.killpg(train.pid, signal.SIGTERM)  # torchrun and the two workers it started
                try:
                    train.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(train.pid, signal.SIGKILL)
                    train.wait()
            stop(train)
            log.close()


def test_dashboard_and_rules_name_only_metrics_strata_exports() -> None:
    """Without a server: a renamed metric must not leave a panel or an alert silently empty."""
    import re

    from strata.runtime.config import MetricsConfig
    from strata.runtime.metrics import TrainingMetrics

    metrics = TrainingMetrics(MetricsConfig(), rank=0, local_rank=0, executor="minibatch", jsonl_url=None)
    metrics.cache_hits("host").inc()
    metrics.comm("all_to_all", 1, 0.0, {1: 0.0})  # per-peer waits come with all_to_all and recv
    exported = {s.name for family in metrics.registry.collect() for s in family.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = {name for expr in exprs + [r["expr"] for r in rules] for name in re.findall(r"\bstrata_[a-z_]+", expr)}
    assert used <= exported, used - exported
    assert {n for n in exported if not n.endswith("_created")} <= used, "a metric no panel or alert shows"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"], rule["alert"]


def _substitute(expr: str) -> str:
    """Grafana's template variables, as Grafana fills them for job=prom-test, host=All and rank=All."""
    return expr.replace("$__rate_interval", "15s").replace("$job", JOB).replace("$rank", ".*").replace("$host", ".*")


@pytest.mark.slow
def test_prometheus_sees_both_ranks_rise_and_every_expression_evaluates(run: dict[str, Any]) -> None:
    prometheus, train = run["prometheus"], run["train"]

    def alive() -> bool:
        assert train.poll() is None, f"training exited ({train.returncode}):\n{(run['root'] / 'train.log').read_text()[-3000:]}"
        return True

    first = _wait("both ranks' strata_samples_total", lambda: (lambda v: v if set(v) == {"0", "1"} else None)(
        _by_rank(_query(prometheus, LIVE_SAMPLES), JOB)), timeout=180, alive=alive)
    later = _wait("strata_samples_total to rise on both ranks", lambda: (lambda v: v if all(v.get(r, 0) > first[r] for r in first) else None)(
        _by_rank(_query(prometheus, LIVE_SAMPLES), JOB)), timeout=120, alive=alive)
    assert all(later[r] > first[r] >= 0 for r in ("0", "1"))

    # Every dashboard query, while the run is live.
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"job", "host", "rank"} <= set(variables)
    jobs = json.loads(http_get(f"{prometheus}/api/v1/label/job/values?" + urllib.parse.urlencode({"match[]": "strata_samples_total"})))
    assert JOB in jobs["data"]
    rank_match = _substitute(variables["rank"]["definition"].removeprefix("label_values(").rsplit(",", 1)[0])
    ranks = json.loads(http_get(f"{prometheus}/api/v1/label/rank/values?" + urllib.parse.urlencode({"match[]": rank_match})))
    assert ranks["data"] == ["0", "1"]
    _wait("a rate over two scrapes", lambda: _query(prometheus, _substitute('rate(strata_samples_total{job=~"$job"}[$__rate_interval])')),
          timeout=30, alive=alive)
    must_show = ("Throughput", "Step time", "Loss", "Age of the last step", "Data wait", "Communication (bytes/s")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        for target in panel["targets"]:
            results = _query(prometheus, _substitute(target["expr"]))
            if panel["title"].startswith(must_show):
                assert results, f"panel '{panel['title']}' shows nothing: {target['expr']}"
    throughput = _query(prometheus, _substitute(panels[0]["targets"][0]["expr"]))
    assert float(throughput[0]["value"][1]) > 0
    # Minibatch data parallel all-reduces gradients; the op's series starts at the first step,
    # which may be a scrape or two before this point.
    ops = _substitute('sum by (op) (rate(strata_comm_bytes_total{job=~"$job"}[1m]))')
    _wait("all_reduce traffic", lambda: "all_reduce" in {r["metric"]["op"] for r in _query(prometheus, ops)}, timeout=30, alive=alive)

    # Every alert: its expression evaluates, and picks exactly the faulty rank it is about.
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert set(rules) == {"StrataJobStalled", "StrataRankFarBehind", "StrataStragglerRank", "StrataLossNotFinite"}
    # No straggler here (two ranks on one host; tests/testing/test_cluster_metrics.py has one).
    expected = {"StrataJobStalled": {(FAULTS, "0")}, "StrataRankFarBehind": {(FAULTS, "1")}, "StrataStragglerRank": set(),
                "StrataLossNotFinite": {(FAULTS, "0")}}
    for alert, expr in rules.items():
        # The two live ranks are scraped at different moments of a fast run, so for a scrape or
        # two their step counts can seem far apart (the rule's `for:` rides that out): the
        # alert must settle on exactly the faulty rank.
        seen: list[set] = []

        def picks(expr: str = expr, seen: list[set] = seen) -> set:
            seen.append({(r["metric"]["job"], r["metric"]["rank"]) for r in _query(prometheus, expr)})
            return seen[-1]

        want = expected[alert]
        try:
            _wait(f"{alert} to pick exactly {sorted(want)}", lambda picks=picks, want=want: picks() == want, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{alert} picked {seen[-1]}, not {expected[alert]}") from exc
    state = json.loads(http_get(f"{prometheus}/api/v1/rules"))["data"]["groups"]
    loaded = {r["name"]: r for g in state for r in g["rules"]}
    assert set(loaded) == set(rules)
    _wait("the rule group to be evaluated", lambda: all(
        r["health"] == "ok" for g in json.loads(http_get(f"{prometheus}/api/v1/rules"))["data"]["groups"] for r in g["rules"]
    ), timeout=30)
    assert alive(), "the run ended before every expression was checked: raise EPOCHS"


@pytest.mark.slow
def test_final_summary_lands_in_the_pushgateway_and_stays_out_of_the_stall_alert(run: dict[str, Any]) -> None:
    train, root, prometheus = run["train"], run["root"], run["prometheus"]
    assert train.wait(timeout=300) == 0, (root / "train.log").read_text()[-3000:]
    end = [json.loads(line) for line in (root / "runs/prom/metrics.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end" and end["steps"] > 0
    text = http_get(f"http://{run['pushgateway']}/metrics").decode()
    pushed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("job") == JOB:
                pushed[(sample.name, sample.labels.get("rank"))] = sample.value
    for rank in ("0", "1"):
        assert pushed[("strata_step_duration_seconds_count", rank)] == end["steps"]
        assert pushed[("strata_samples_total", rank)] > 0
        assert pushed[("strata_last_step_timestamp_seconds", rank)] > 0
    assert pushed[("strata_samples_total", "0")] + pushed[("strata_samples_total", "1")] == 1200 * EPOCHS  # every train node once per epoch

    # Prometheus scrapes the summary from the Pushgateway; those series carry no instance label.
    summary = _wait("the pushed summary in Prometheus", lambda: _by_rank(
        _query(prometheus, f'strata_samples_total{{job="{JOB}", instance=""}}'), JOB), timeout=30)
    assert summary == {"0": pushed[("strata_samples_total", "0")], "1": pushed[("strata_samples_total", "1")]}

    # A pushed summary is history, not a stalled rank: push one from 20 minutes ago.
    registry = CollectorRegistry()
    Gauge("strata_last_step_timestamp_seconds", "", ["rank"], registry=registry).labels(rank="0").set(time.time() - 1200)
    push_to_gateway(run["pushgateway"], job="finished-long-ago", registry=registry, grouping_key={"rank": "0"})
    _wait("the pushed series in Prometheus", lambda: _query(prometheus, 'strata_last_step_timestamp_seconds{job="finished-long-ago"}'), timeout=30)
    stalled = yaml.safe_load(RULES.read_text())["groups"][0]["rules"][0]
    assert stalled["alert"] == "StrataJobStalled"
    assert {(r["metric"]["job"], r["metric"]["rank"]) for r in _query(prometheus, stalled["expr"])} == {(FAULTS, "0")}
