"""Multi-node launches on the emulated cluster, for real: torchrun with c10d rendezvous across two
hosts (namespaces with their own addresses, links shaped to 1 Gbit/s) trains minibatch and
graph_parallel to the same losses as one host with two processes and the same seed; a host's
link cut mid-run makes the other host's rank fail within the configured timeout, naming the
unreachable rank and host, and once the link is back the job resumes to the uninterrupted
run's result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.testing.cluster import Cluster, ClusterConfig

TIMEOUT_SECONDS = 5
"""distributed.timeout_seconds of these jobs: how long a collective waits for a lost peer."""
EPOCHS = {"minibatch": 2, "graph_parallel": 12}
JOB = """\
name: {executor}
data: {{store: {store}}}
model: {{name: {model}, hidden: 16, num_layers: 2, dropout: 0.3}}
train: {{executor: {executor}, epochs: {epochs}, lr: 0.01, seed: 3, batch_size: 100, fanouts: [5, 5], partitioner: random}}
checkpoint: {{every_steps: 1, keep: 2}}
distributed: {{timeout_seconds: {timeout}}}
"""
ENV = {"OMP_NUM_THREADS": "1", "DGLBACKEND": "pytorch", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    url = str(tmp_path_factory.mktemp("data") / "store")
    write_synthetic(SyntheticGraphConfig(num_nodes=1000, avg_degree=8, num_classes=4, feat_dim=16, seed=1), url, progress=False)
    return url


@pytest.fixture(scope="module")
def configs(store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("configs")
    paths = {}
    for executor, model in (("minibatch", "sage"), ("graph_parallel", "gcn")):
        paths[executor] = folder / f"{executor}.yaml"
        paths[executor].write_text(
            JOB.format(executor=executor, model=model, store=store, epochs=EPOCHS[executor], timeout=TIMEOUT_SECONDS)
        )
    return paths


class References:
    """The single-host runs (`strata train CONFIG --nproc-per-node 2`), started at once side by
    side with the multi-host runs and waited for when a test needs one."""

    def __init__(self, configs: dict[str, Path], folder: Path) -> None:
        self.folder = folder
        self.procs = {
            executor: subprocess.Popen(
                [sys.executable, "-m", "strata.launch.cli", "train", str(cfg), "--nproc-per-node", "2", "--json", "-q",
                 "--set", f"run_dir={folder / executor}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV},
            )
            for executor, cfg in configs.items()
        }

    def result(self, executor: str) -> tuple[dict, list[dict]]:
        out, err = self.procs[executor].communicate(timeout=300)
        assert self.procs[executor].returncode == 0, err
        return _final(out), _epochs(self.folder / executor)


@pytest.fixture(scope="module")
def references(as_root: None, configs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[References]:
    refs = References(configs, tmp_path_factory.mktemp("one-host"))
    yield refs
    for proc in refs.procs.values():
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def two_hosts(as_root: None) -> Iterator[Cluster]:
    with Cluster(ClusterConfig(hosts=2, rate="1gbit")) as cluster:
        yield cluster


def _final(stdout: str) -> dict:
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))


def _epochs(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "epoch"]


_ports = iter(range(29400, 29500))


def _torchrun(cluster: Cluster, cfg: Path, run_dir: Path, *extra: str) -> list[subprocess.Popen]:
    """`torchrun --nnodes N --node-rank i` on every host of ``cluster``, one process each, with the
    c10d rendezvous on host0; started, not waited for."""
    endpoint = f"{cluster.host(0).address}:{next(_ports)}"
    return [
        cluster.popen(
            host.index,
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(cluster.hosts)), "--node-rank", str(host.index),
             "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--nproc-per-node", "1",
             "-m", "strata.launch.cli", "train", str(cfg), "--json", "-q", "--set", f"run_dir={run_dir}", *extra],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for host in cluster.hosts
    ]


def _wait_all(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    return outputs


def _assert_same_training(multi: tuple[dict, list[dict]], single: tuple[dict, list[dict]]) -> None:
    (final, epochs), (ref_final, ref_epochs) = multi, single
    assert [e["loss"] for e in epochs] == [e["loss"] for e in ref_epochs]  # the training losses, bit for bit
    for key in ("epochs", "steps", "best_epoch", "final_loss", "world_size", "executor"):
        assert final[key] == ref_final[key], key
    for key in ("val_acc", "test_acc"):
        assert final[key] == pytest.approx(ref_final[key], abs=1e-9), key


@pytest.mark.parametrize("executor", ["minibatch", "graph_parallel"])
def test_two_hosts_train_like_one_host_with_two_processes(
    executor: str, two_hosts: Cluster, configs: dict[str, Path], references: References, tmp_path: Path
) -> None:
    outputs = _wait_all(_torchrun(two_hosts, configs[executor], tmp_path / "run"))
    final = _final("".join(out for out, _ in outputs))  # rank 0 prints it, on whichever host it landed
    assert final["world_size"] == 2 and final["executor"] == executor
    _assert_same_training((final, _epochs(tmp_path / "run")), references.result(executor))


def test_a_cut_link_fails_the_other_host_naming_it_then_the_job_resumes(
    two_hosts: Cluster, configs: dict[str, Path], references: References, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    two_hosts.set_rate(1, "2mbit")  # about 0.4 s of graph_parallel's halo traffic per epoch: time to cut it mid-run
    try:
        procs = _torchrun(two_hosts, configs["graph_parallel"], run_dir)
        _wait_for_epoch(run_dir, 2, procs)
        two_hosts.cut(1)
        cut_at = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        failed_after = time.monotonic() - cut_at
        print(f"host0's job ended {failed_after:.1f}s after host1's link was cut (timeout {TIMEOUT_SECONDS}s):\n{err[-1500:]}")
        assert procs[0].returncode != 0
        assert failed_after < TIMEOUT_SECONDS + 2 + 10  # the collective's timeout, the probe, leaving
        assert re.search(r"rank \d on host0 \(10\.77\.0\.1\) lost contact with the job", err), err[-3000:]
        assert re.search(r"Unreachable: rank \d on host1 \(10\.77\.0\.2\)", err), err[-3000:]
        assert "Check the network of host1" in err and "[rank0]: Traceback" not in err and "unbound_buffer.cc" not in err
    finally:
        two_hosts.kill(1)  # its agent waits on the lost rendezvous store
        two_hosts.restore(1)
        two_hosts.set_rate(1, "1gbit")
    resumed = _wait_all(_torchrun(two_hosts, configs["graph_parallel"], run_dir, "--resume"))
    starts = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert starts[-1]["resumed_at"] >= 2
    final, ref_final = _final("".join(out for out, _ in resumed)), references.result("graph_parallel")[0]
    assert final["epochs"] == ref_final["epochs"] and final["final_loss"] == ref_final["final_loss"]


def _wait_for_epoch(run_dir: Path, epochs: int, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    log = run_dir / "metrics.jsonl"
    while not (log.exists() and log.read_text().count('"event": "epoch"') >= epochs):
        for proc in procs:
            assert proc.poll() is None, f"a host's torchrun ended before the cut:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {epochs} epochs within {timeout:g}s"
        time.sleep(0.05)
