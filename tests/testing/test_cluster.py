"""The emulated cluster itself, on real namespaces: it leaves nothing behind however its block
ends, a shaped link really takes the time its rate says, a cut link carries nothing until it is
restored, and the command line builds, uses and removes a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from strata.testing import netns
from strata.testing.cluster import STATE_DIR, Cluster, ClusterConfig, ClusterError, cleanup

# Receives until the sender closes, then prints the bytes and the seconds from first to last byte.
RECEIVER = textwrap.dedent("""
    import socket, time
    server = socket.create_server(("0.0.0.0", 5001))
    print("listening", flush=True)
    conn, _ = server.accept()
    received, first = 0, None
    while chunk := conn.recv(1 << 20):
        first = first or time.perf_counter()
        received += len(chunk)
    print(received, time.perf_counter() - first, flush=True)
""")
SENDER = textwrap.dedent("""
    import socket, sys
    with socket.create_connection((sys.argv[1], 5001), timeout=float(sys.argv[3])) as conn:
        conn.sendall(b"x" * int(sys.argv[2]))
""")


def _names(cluster: Cluster) -> set[str]:
    """Everything of ``cluster`` that exists now: namespaces, interfaces, /etc/netns folders, its record."""
    stem = f"{cluster.config.prefix}{cluster.tag}"
    found = {n for n in netns.list_netns() + netns.list_links() + netns.list_etc_netns() if n.startswith(stem)}
    return found | ({"record"} if (STATE_DIR / f"{cluster.tag}.json").exists() else set())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_nothing_is_left_behind_when_the_block_raises(as_root: None) -> None:
    with pytest.raises(RuntimeError, match="the test body failed"):
        with Cluster(ClusterConfig(hosts=2, rate="100mbit")) as cluster:
            sleeper = cluster.popen(1, ["sleep", "300"])
            # A process that left its process group is still found: it runs inside host1's namespace.
            escaped = cluster.run(1, ["sh", "-c", "setsid sleep 300 > /dev/null 2>&1 & echo $!"], check=True)
            escaped_pid = int(escaped.stdout.strip())
            made = _names(cluster)
            assert made == {f"{cluster.config.prefix}{cluster.tag}{n}" for n in ("-host0", "-host1", "br", "v0", "v1")} | {"record"}
            assert cluster.run(1, ["hostname"], check=True).stdout.strip() == "host1"
            assert _alive(sleeper.pid) and _alive(escaped_pid)
            raise RuntimeError("the test body failed")
    assert _names(cluster) == set()
    assert sleeper.poll() is not None and not _alive(escaped_pid)


def _transfer(cluster: Cluster, nbytes: int, timeout: float = 30) -> float:
    """Seconds ``nbytes`` took from host0 to host1, as the receiver saw them."""
    receiver = cluster.popen(1, [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout.readline().strip() == "listening"
    cluster.run(0, [sys.executable, "-c", SENDER, cluster.host(1).address, str(nbytes), str(timeout)], check=True, timeout=timeout)
    received, seconds = receiver.communicate(timeout=timeout)[0].split()
    assert int(received) == nbytes
    return float(seconds)


def test_a_shaped_link_takes_the_time_its_rate_says(as_root: None) -> None:
    rate = 200e6 / 8  # bytes/s of "200mbit"
    nbytes = 8_000_000  # 0.32 s at that rate
    with Cluster(ClusterConfig(hosts=2, rate="200mbit")) as cluster:
        shaped = nbytes / _transfer(cluster, nbytes)
        cluster.set_rate(1, "50mbit")  # the receiving host's link alone slows the path
        slower = (nbytes // 4) / _transfer(cluster, nbytes // 4)
        cluster.set_rate(0, None)
        cluster.set_rate(1, None)
        unshaped = nbytes / _transfer(cluster, nbytes)
    print(f"200mbit: {shaped * 8 / 1e6:.0f} Mbit/s, 50mbit: {slower * 8 / 1e6:.0f} Mbit/s, unshaped: {unshaped * 8 / 1e6:.0f} Mbit/s")
    assert 0.6 * rate < shaped < 1.1 * rate
    assert 0.6 * rate / 4 < slower < 1.1 * rate / 4
    assert unshaped > 1.5 * rate  # veth runs at GB/s; the margin leaves room for a receiver slowed by a loaded CPU


def test_a_cut_link_carries_nothing_until_it_is_restored(as_root: None) -> None:
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 9), timeout=1)"
    with Cluster(ClusterConfig(hosts=2)) as cluster:
        address = cluster.host(1).address
        refused = cluster.run(0, [sys.executable, "-c", probe, address])
        assert "ConnectionRefusedError" in refused.stderr  # host1 answers: nothing listens on port 9
        cluster.cut(1)
        cut = cluster.run(0, [sys.executable, "-c", probe, address])
        assert "ConnectionRefusedError" not in cut.stderr and ("timed out" in cut.stderr or "unreachable" in cut.stderr.lower())
        cluster.restore(1)
        assert "ConnectionRefusedError" in cluster.run(0, [sys.executable, "-c", probe, address]).stderr


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "strata.testing.cluster", *args], capture_output=True, text=True, timeout=120)
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def test_the_command_line_builds_uses_and_removes_a_cluster(as_root: None) -> None:
    up = _cli("up", "--hosts", "2", "--rate", "100mbit", "--subnet", "10.78.0.0/24")
    tag = up.stdout.split()[1].rstrip(":")
    try:
        assert "host1  10.78.0.2" in up.stdout
        assert tag not in cleanup(include_up=False)  # what the tests clear at start leaves a cluster 'up' made
        assert _cli("run", "--tag", tag, "host1", "--", "hostname").returncode == 0
        ran = subprocess.run([sys.executable, "-m", "strata.testing.cluster", "run", "--tag", tag, "1", "--", "cat", "/etc/hosts"],
                             capture_output=True, text=True, timeout=60)
        assert "10.78.0.1 host0" in ran.stdout and "10.78.0.2 host1" in ran.stdout
        _cli("link", "--tag", tag, "host1", "--cut")
        assert "state DOWN" in netns.sh("ip", "link", "show", f"stc{tag}v1").stdout
        _cli("link", "--tag", tag, "host1", "--restore")
        _cli("link", "--tag", tag, "host1", "--rate", "1gbit")
        assert "rate 1Gbit" in netns.sh("tc", "qdisc", "show", "dev", f"stc{tag}v1").stdout
        bad = _cli("link", "--tag", tag, "host1", "--rate", "fast", check=False)
        assert bad.returncode == 2 and "'fast' is not a rate" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        down = _cli("down", "--tag", tag)
    assert tag in down.stdout
    assert not [n for n in netns.list_netns() + netns.list_links() if tag in n]


def test_down_removes_the_cluster_of_a_killed_process_but_not_a_held_one(as_root: None) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", "from strata.testing.cluster import Cluster; import sys, time; "
         "c = Cluster(); c.up(); print(c.tag, flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )
    orphan = owner.stdout.readline().strip()
    owner.send_signal(signal.SIGKILL)  # no chance to clean up
    owner.wait()
    with Cluster() as held:
        assert json.loads((STATE_DIR / f"{orphan}.json").read_text())["owner"]["pid"] == owner.pid
        assert any(orphan in n for n in netns.list_netns())
        assert orphan in _cli("down").stdout
        assert not any(orphan in n for n in netns.list_netns() + netns.list_links() + netns.list_etc_netns())
        assert len(_names(held)) == 6  # the live one stays
        with pytest.raises(ClusterError, match=f"a cluster tagged '{held.tag}' exists already"):
            Cluster(tag=held.tag).up()  # and a second cluster of its tag neither builds nor tears it down
        assert len(_names(held)) == 6
    assert _names(held) == set()


def test_clear_errors_without_root_or_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match="needs root"):
        Cluster().up()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "_which", lambda tool: None if tool == "tc" else "/usr/bin/true")
    with pytest.raises(ClusterError, match="needs tc on PATH; install iproute2"):
        Cluster().up()
    with pytest.raises(ClusterError, match="'10 gigs' is not a rate"):
        ClusterConfig(rate="10 gigs")
    with pytest.raises(ClusterError, match="hosts must be between 1 and 99"):
        ClusterConfig(hosts=0)
