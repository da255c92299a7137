"""The Linux commands behind the emulated cluster: network namespaces, veth pairs, one bridge
and ``tbf`` qdiscs, all through ``ip`` and ``tc`` (iproute2), run as root.

Every name a cluster makes carries its prefix and a 5-hex-digit tag, so clusters of parallel
test runs never collide and leftovers can be found by name::

    namespace   <prefix><tag>-host<i>      e.g. stc3f9a1-host0   (inside: lo, eth0, hostname host<i>)
    bridge      <prefix><tag>br            e.g. stc3f9a1br       (in the root namespace)
    veth        <prefix><tag>v<i>          host i's cable, bridge side; eth0 is its other end
    /etc/netns/<namespace>/hosts           every host's name and address (ip netns exec mounts it)

Interface names must fit the kernel's 15 characters: a prefix of at most 4 letters, the tag,
and up to 99 hosts.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from strata.errors import StrataError

TOOLS = ("ip", "tc", "unshare")
NETNS_ETC = Path("/etc/netns")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)\s*$", re.IGNORECASE)
_UNIT = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


class ClusterError(StrataError):
    """The emulated cluster cannot be built, used or torn down."""


def require_tools() -> None:
    """Fail, saying what to do, unless this process is root and has ``ip``, ``tc`` and ``unshare``."""
    if os.geteuid() != 0:
        raise ClusterError(
            "the emulated cluster needs root (network namespaces, a bridge and tc qdiscs); run as root, "
            "e.g. 'sudo python -m strata.testing.cluster up'"
        )
    missing = [tool for tool in TOOLS if _which(tool) is None]
    if missing:
        raise ClusterError(
            f"the emulated cluster needs {', '.join(missing)} on PATH; install iproute2 (ip, tc) and util-linux (unshare)"
        )


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one iproute2/util-linux command; a failure is a ClusterError naming the command."""
    tool = _which(argv[0]) or argv[0]
    try:
        proc = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"'{' '.join(argv)}' could not run: {exc}") from exc
    if check and proc.returncode != 0:
        raise ClusterError(f"'{' '.join(argv)}' failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def parse_rate(rate: str | None) -> int | None:
    """A link rate in tc's units ('100mbit', '1gbit', '2.5gbit') as bits per second; None, '' or
    'unshaped' for a link left at the speed of the veth pair."""
    if rate is None or rate.strip().lower() in ("", "unshaped", "none"):
        return None
    match = _RATE.match(rate)
    if not match:
        raise ClusterError(f"link rate '{rate}' is not a rate: write it as tc does, e.g. '100mbit', '1gbit' or 'unshaped'")
    bits = int(float(match.group(1)) * _UNIT[match.group(2).lower()])
    if bits < 8000:
        raise ClusterError(f"link rate '{rate}' is below 8kbit: tbf cannot shape that slowly; choose at least '8kbit'")
    return bits


def shape(device: str, bits_per_second: int | None, netns: str | None = None) -> None:
    """Limit ``device``'s egress to ``bits_per_second`` with a token bucket (tbf); None removes it.

    The bucket holds 4 ms of traffic and at least two 64 KiB GSO segments (a smaller bucket drops
    veth's large segments); the queue holds 100 ms of traffic, so TCP sees a bottleneck, not loss.
    """
    where = ["-n", netns] if netns else []
    if bits_per_second is None:
        sh("tc", *where, "qdisc", "del", "dev", device, "root", check=False)
        return
    burst = max(2 * 65536 + 2048, bits_per_second // 8 // 250)
    sh("tc", *where, "qdisc", "replace", "dev", device, "root", "tbf",
       "rate", f"{bits_per_second}bit", "burst", str(burst), "latency", "100ms")


def make_bridge(bridge: str, address: str | None) -> None:
    sh("ip", "link", "add", bridge, "type", "bridge")
    if address:
        sh("ip", "addr", "add", address, "dev", bridge)
    sh("ip", "link", "set", bridge, "up")


def make_host(netns: str, veth: str, bridge: str, address: str, hosts_file: str) -> None:
    """A namespace whose eth0 (``address``, with its prefix length) is cabled to ``bridge``
    through ``veth``, and whose /etc/hosts is ``hosts_file``."""
    peer = _peer_name(veth)
    sh("ip", "netns", "add", netns)
    etc = NETNS_ETC / netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(hosts_file)
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", peer, "netns", netns)
    sh("ip", "-n", netns, "link", "set", peer, "name", "eth0")
    sh("ip", "-n", netns, "addr", "add", address, "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    sh("ip", "link", "set", veth, "master", bridge)
    sh("ip", "link", "set", veth, "up")


def _peer_name(veth: str) -> str:
    """The temporary name of a veth's other end before it moves into its namespace (…v3 -> …p3)."""
    head, _, number = veth.rpartition("v")
    return f"{head}p{number}"


def set_link(veth: str, up: bool) -> None:
    sh("ip", "link", "set", veth, "up" if up else "down")


def netns_pids(netns: str) -> list[int]:
    proc = sh("ip", "netns", "pids", netns, check=False)
    return [int(pid) for pid in proc.stdout.split() if pid.isdigit()]


def kill_netns_processes(netns: str, grace: float = 5.0, *, hard: bool = False) -> None:
    """SIGTERM every process inside ``netns``, then SIGKILL those still there after ``grace``
    (``hard``: SIGKILL at once, as when the machine dies)."""
    steps = [(signal.SIGKILL, 5.0)] if hard else [(signal.SIGTERM, grace), (signal.SIGKILL, 5.0)]
    for sig, wait in steps:
        pids = netns_pids(netns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = netns_pids(netns)
        if not pids:
            return
    raise ClusterError(f"processes {netns_pids(netns)} in namespace {netns} outlived SIGKILL")


def delete_netns(netns: str, veth: str | None = None) -> None:
    """Kill what runs in ``netns``, delete its cable ``veth`` (both ends), then the namespace and
    its /etc/netns folder. The cable goes first and explicitly: the kernel removes the
    interfaces of a deleted namespace later, in the background."""
    if netns in list_netns():
        kill_netns_processes(netns)
    if veth:
        delete_link(veth)
    if netns in list_netns():
        sh("ip", "netns", "del", netns)
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)


def delete_link(name: str) -> None:
    if name in list_links():
        sh("ip", "link", "del", name)


def list_netns() -> list[str]:
    proc = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def list_links() -> list[str]:
    proc = sh("ip", "-o", "link", "show", check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if ":" in line]


def list_etc_netns() -> list[str]:
    return sorted(p.name for p in NETNS_ETC.iterdir()) if NETNS_ETC.is_dir() else []
