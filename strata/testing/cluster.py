"""The emulated cluster: several hosts on one machine, with links that cost time and can fail.

Each host is a Linux network namespace with its own address on one bridge, its own hostname
(``host0``, ``host1``, ...) and an /etc/hosts naming every host, so torchrun's c10d rendezvous,
gloo and the TCP store run between hosts exactly as between machines. Each host's NIC is
shaped to a rate by a ``tbf`` qdisc on both ends of its cable (what the host sends and what it
receives), so bytes between hosts take the time the rate says, and a host's link can be
re-shaped, cut (``ip link set ... down``) and restored while a job runs. The hosts still share
this machine's CPUs: compute does not scale with hosts, only the network is real.

::

    with Cluster(ClusterConfig(hosts=2, rate="1gbit")) as cluster:
        job = cluster.popen(1, ["torchrun", ...])     # host1, in its namespace
        cluster.cut(1)                                # its cable unplugged
        cluster.restore(1)
    # every process of every host is stopped and every namespace, cable and bridge removed,
    # however the block ended

From a shell (root)::

    python -m strata.testing.cluster up --hosts 2 --rate 1gbit
    python -m strata.testing.cluster run host0 -- torchrun --nnodes 2 --node-rank 0 ...
    python -m strata.testing.cluster link host1 --cut        # or --restore, --rate 100mbit
    python -m strata.testing.cluster down                    # also clears leftovers of crashed runs

A cluster records itself in ``/run/strata-cluster/<tag>.json`` with the process that holds it;
``down`` removes every cluster that no live process holds (those ``up`` made, and those of a
test that was killed before it could clean up), found by the names ``netns`` describes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from strata.testing import netns
from strata.testing.netns import ClusterError, parse_rate

__all__ = ["Cluster", "ClusterConfig", "ClusterError", "Host", "cleanup"]

STATE_DIR = Path("/run/strata-cluster")
_SET_HOSTNAME = 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"'


@dataclass
class ClusterConfig:
    """The shape of an emulated cluster."""

    hosts: int = 2
    """Number of hosts (network namespaces), 1 to 99."""
    rate: str | None = None
    """Every host's link rate in tc's units ('100mbit', '1gbit'); None or 'unshaped' for none."""
    subnet: str = "10.77.0.0/24"
    """The hosts' network: host i gets its (i+1)-th address. Clusters side by side may share it
    (each bridge is its own network) unless ``root_address`` is set."""
    root_address: bool = False
    """Also give the bridge the subnet's last address, so this (root) namespace reaches the hosts
    (e.g. Prometheus scraping them). Clusters side by side then need different subnets."""
    prefix: str = "stc"
    """First letters of every namespace and interface name (1 to 4 lowercase letters)."""

    def __post_init__(self) -> None:
        if not 1 <= self.hosts <= 99:
            raise ClusterError(f"hosts must be between 1 and 99, got {self.hosts}")
        parse_rate(self.rate)
        try:
            network = ipaddress.ip_network(self.subnet)
        except ValueError as exc:
            raise ClusterError(f"subnet '{self.subnet}' is not a network like '10.77.0.0/24': {exc}") from None
        if network.num_addresses < self.hosts + 3:
            raise ClusterError(f"subnet {self.subnet} has too few addresses for {self.hosts} hosts; widen it (e.g. a /24)")
        if not (1 <= len(self.prefix) <= 4 and self.prefix.isalpha() and self.prefix.islower()):
            raise ClusterError(f"prefix must be 1 to 4 lowercase letters (interface names are at most 15 characters), got '{self.prefix}'")


@dataclass(frozen=True)
class Host:
    """One emulated machine."""

    index: int
    name: str
    """Its hostname, which every host resolves to ``address`` (``host0``, ``host1``, ...)."""
    address: str
    """Its IPv4 address on the bridge."""
    netns: str
    """Its network namespace."""
    link: str
    """Its cable's end on the bridge (shaped, cut and restored from the root namespace)."""


@dataclass
class Cluster:
    """N hosts on one bridge; a context manager that builds them and always tears them down."""

    config: ClusterConfig = field(default_factory=ClusterConfig)
    tag: str = field(default_factory=lambda: secrets.token_hex(3)[:5])
    """5 hex digits in every name this cluster makes."""
    hosts: list[Host] = field(init=False)
    _procs: list[subprocess.Popen] = field(init=False, default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{5}", self.tag):
            raise ClusterError(f"a cluster's tag is 5 lowercase hex digits, got '{self.tag}'")
        network = ipaddress.ip_network(self.config.subnet)
        addresses = list(network.hosts())
        stem = f"{self.config.prefix}{self.tag}"
        self.hosts = [
            Host(i, f"host{i}", str(addresses[i]), f"{stem}-host{i}", f"{stem}v{i}") for i in range(self.config.hosts)
        ]
        self._bridge = f"{stem}br"
        self._prefixlen = network.prefixlen
        self._root = f"{addresses[-1]}/{network.prefixlen}" if self.config.root_address else None

    # -- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, *, owner: int | None = None) -> None:
        """Build the bridge and every host, shaped; on any failure remove what was made and raise.
        ``owner`` is the pid that holds the cluster (this process by default; 0 for none, as
        ``up`` from the shell leaves it for ``down``)."""
        netns.require_tools()
        if _state_file(self.tag).exists() or self.tag in _tags_by_name(self.config.prefix):
            raise ClusterError(f"a cluster tagged '{self.tag}' exists already; choose another tag (or leave it to chance)")
        self._write_state(os.getpid() if owner is None else owner)
        try:
            netns.make_bridge(self._bridge, self._root)
            # The IPv4-mapped lines let a dual-stack server (torch's TCPStore) name its clients.
            hosts_file = "127.0.0.1 localhost\n" + "".join(f"{h.address} {h.name}\n" for h in self.hosts) + "".join(
                f"::ffff:{h.address} {h.name}\n" for h in self.hosts
            )
            for host in self.hosts:
                netns.make_host(host.netns, host.link, self._bridge, f"{host.address}/{self._prefixlen}", hosts_file)
                self.set_rate(host.index, self.config.rate)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every process started on the hosts, then remove the hosts, the bridge and the
        record. Runs every step even when one fails, then raises the first failure."""
        failures: list[BaseException] = []
        for proc in self._procs:
            _stop_group(proc)
        self._procs.clear()
        for step in [*(lambda h=h: netns.delete_netns(h.netns, h.link) for h in self.hosts), lambda: netns.delete_link(self._bridge)]:
            try:
                step()
            except ClusterError as exc:
                failures.append(exc)
        _state_file(self.tag).unlink(missing_ok=True)
        if failures:
            raise failures[0]

    # -- links ---------------------------------------------------------------------------------

    def set_rate(self, host: int | str, rate: str | None) -> None:
        """Shape ``host``'s link to ``rate`` both ways ('100mbit'; None or 'unshaped' lifts it)."""
        h = self.host(host)
        bits = parse_rate(rate)
        netns.shape("eth0", bits, netns=h.netns)  # what the host sends
        netns.shape(h.link, bits)  # what it receives

    def cut(self, host: int | str) -> None:
        """Unplug ``host``'s cable: its packets go nowhere, its processes keep running."""
        netns.set_link(self.host(host).link, up=False)

    def restore(self, host: int | str) -> None:
        netns.set_link(self.host(host).link, up=True)

    # -- processes -----------------------------------------------------------------------------

    def host(self, host: int | str) -> Host:
        """A host by index (0) or name ('host0')."""
        for h in self.hosts:
            if host in (h.index, h.name, str(h.index)):
                return h
        raise ClusterError(f"no host '{host}' in this cluster of {len(self.hosts)} ({', '.join(h.name for h in self.hosts)})")

    def command(self, host: int | str, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on ``host``: in its namespace, under its hostname."""
        h = self.host(host)
        ip = netns._which("ip") or "ip"
        return [ip, "netns", "exec", h.netns, "unshare", "--uts", "sh", "-c", _SET_HOSTNAME, h.name, *argv]

    def popen(self, host: int | str, argv: Sequence[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start ``argv`` on ``host`` (in its own process group) and return at once; it is stopped
        at :meth:`down` if it still runs. ``env`` adds to this process's environment."""
        proc = subprocess.Popen(
            self.command(host, argv), env={**os.environ, **(env or {})}, start_new_session=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def run(
        self, host: int | str, argv: Sequence[str], *, timeout: float = 600, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` to the end and return its output (text)."""
        proc = self.popen(host, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            out, err = proc.communicate()
            raise ClusterError(f"{argv[0]} on {self.host(host).name} ran past {timeout:g}s:\n{out[-2000:]}\n{err[-2000:]}") from None
        finally:
            if proc in self._procs and proc.poll() is not None:
                self._procs.remove(proc)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} on {self.host(host).name} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
        return done

    def stop(self, proc: subprocess.Popen) -> None:
        """Stop a process :meth:`popen` started, and its process group (SIGTERM, then SIGKILL)."""
        _stop_group(proc)
        if proc in self._procs:
            self._procs.remove(proc)

    def kill(self, host: int | str) -> None:
        """Kill every process running on ``host`` (as when the machine dies); the host stays up."""
        netns.kill_netns_processes(self.host(host).netns, hard=True)

    # -- the record ----------------------------------------------------------------------------

    def _write_state(self, owner: int) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        record = {"tag": self.tag, "owner": _process_id(owner), "config": asdict(self.config), "hosts": [asdict(h) for h in self.hosts]}
        _state_file(self.tag).write_text(json.dumps(record, indent=1))

    @classmethod
    def attach(cls, tag: str | None = None) -> Cluster:
        """The cluster recorded under ``tag`` (or the only one recorded), to use or take down."""
        tags = [tag] if tag else recorded_tags()
        if len(tags) != 1:
            found = ", ".join(recorded_tags()) or "none"
            raise ClusterError(f"{'no cluster' if not tags else 'several clusters'} to choose from (recorded: {found}); "
                               "name one with --tag, or start one with 'up'")
        path = _state_file(tags[0])
        if not path.exists():
            raise ClusterError(f"no cluster recorded under tag '{tags[0]}' in {STATE_DIR}; 'list' shows those there are")
        record = json.loads(path.read_text())
        return cls(ClusterConfig(**record["config"]), tag=record["tag"])


def _state_file(tag: str) -> Path:
    return STATE_DIR / f"{tag}.json"


def recorded_tags() -> list[str]:
    return sorted(p.stem for p in STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []


def _process_id(pid: int) -> dict | None:
    """A pid with its start time (a reused pid is not the owner); None for pid 0."""
    if not pid:
        return None
    try:
        return {"pid": pid, "start": Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]}
    except (OSError, IndexError):
        return None


def _held(tag: str) -> bool:
    """Whether a live process holds the cluster recorded under ``tag``."""
    try:
        owner = json.loads(_state_file(tag).read_text()).get("owner")
    except (OSError, ValueError):
        return False
    return bool(owner) and _process_id(owner["pid"]) == owner


def _made_by_up(tag: str) -> bool:
    """Whether the cluster recorded under ``tag`` was left up for the shell (no owner)."""
    try:
        return json.loads(_state_file(tag).read_text()).get("owner") is None
    except (OSError, ValueError):
        return False


def _stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM a process we started and its process group, then SIGKILL what lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def cleanup(prefix: str = "stc", *, tag: str | None = None, include_held: bool = False, include_up: bool = True) -> list[str]:
    """Remove clusters by name: the one ``tag`` names, else every one no live process holds
    (every one with ``include_held``; ``include_up=False`` also keeps those ``up`` made, as the
    tests do when they clear a killed run's leftovers). Returns the tags removed."""
    if tag is None:
        found = _tags_by_name(prefix) | set(recorded_tags())
        tags = sorted(t for t in found if (include_held or not _held(t)) and (include_up or not _made_by_up(t)))
    else:
        tags = [tag]
    for t in tags:
        stem = f"{prefix}{t}"
        for name in sorted(set(netns.list_netns() + netns.list_etc_netns())):
            if name.startswith(f"{stem}-host"):
                netns.delete_netns(name, f"{stem}v{name.rpartition('-host')[2]}")
        for name in netns.list_links():
            if name.startswith(stem):
                netns.delete_link(name)
        _state_file(t).unlink(missing_ok=True)
    return tags


def _tags_by_name(prefix: str) -> set[str]:
    pattern = re.compile(rf"^{prefix}([0-9a-f]{{5}})(?:-host\d+|br|v\d+)$")
    names = netns.list_netns() + netns.list_etc_netns() + netns.list_links()
    return {m.group(1) for m in map(pattern.match, names) if m}


# -- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m strata.testing.cluster",
        description="An emulated cluster on this machine (root): hosts as network namespaces on a bridge, links shaped by tc tbf.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a cluster and leave it up (until 'down')")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--rate", default=None, help="every host's link rate, e.g. 1gbit, 100mbit (default: unshaped)")
    up.add_argument("--subnet", default=ClusterConfig.subnet)
    up.add_argument("--root-address", action="store_true", help="give this namespace an address on the bridge too")
    down = sub.add_parser("down", help="remove clusters 'up' made and leftovers of crashed runs (never one a live process holds)")
    down.add_argument("--all", action="store_true", help="also clusters that live processes hold")
    run = sub.add_parser("run", help="run a command on a host: run host0 -- CMD ARGS...")
    run.add_argument("host", help="host name (host0) or index (0)")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    link = sub.add_parser("link", help="re-shape, cut or restore a host's link")
    link.add_argument("host")
    what = link.add_mutually_exclusive_group(required=True)
    what.add_argument("--rate", help="new rate, e.g. 100mbit, or 'unshaped'")
    what.add_argument("--cut", action="store_true")
    what.add_argument("--restore", action="store_true")
    sub.add_parser("list", help="the clusters recorded on this machine")
    for p in (down, run, link):
        p.add_argument("--tag", help="which cluster (default: the only one recorded)")
    parser.add_argument("--prefix", default=ClusterConfig.prefix, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except ClusterError as exc:
        print(f"strata.testing.cluster: error: {exc}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace) -> int:
    if args.command == "up":
        cluster = Cluster(ClusterConfig(hosts=args.hosts, rate=args.rate, subnet=args.subnet, root_address=args.root_address))
        cluster.up(owner=0)
        print(f"cluster {cluster.tag}: {len(cluster.hosts)} hosts, links {args.rate or 'unshaped'}")
        for h in cluster.hosts:
            print(f"  {h.name}  {h.address}  (namespace {h.netns})")
        print("run a command on a host with 'python -m strata.testing.cluster run host0 -- CMD'; remove it with 'down'")
        return 0
    if args.command == "down":
        netns.require_tools()
        removed = cleanup(args.prefix, tag=args.tag, include_held=args.all)
        print(f"removed {len(removed)} cluster(s){': ' + ', '.join(removed) if removed else ''}")
        return 0
    if args.command == "list":
        for tag in recorded_tags():
            print(f"{tag}  {'held by a live process' if _held(tag) else 'free'}")
        return 0
    cluster = Cluster.attach(args.tag)
    if args.command == "link":
        if args.cut:
            cluster.cut(args.host)
        elif args.restore:
            cluster.restore(args.host)
        else:
            cluster.set_rate(args.host, args.rate)
        return 0
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise ClusterError("run needs a command: run host0 -- CMD ARGS...")
    return subprocess.call(cluster.command(args.host, argv))


if __name__ == "__main__":
    sys.exit(main())
