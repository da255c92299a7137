"""A real SLURM on the emulated cluster: one slurmctld and one slurmd per host.

host0 is the head node: it runs munged and slurmctld, and takes the clients (``sbatch``,
``squeue``, ``strata launch slurm --submit``) as a login node would. Every host, host0 too, runs
its own slurmd, named after the host (``slurmd -N host1``) and registered under its address
(``NodeName=host1 NodeAddr=10.78.0.2``), so slurmctld reaches each node over the bridge and an
``srun`` on host0 starts tasks on host1 through host1's slurmd, across the shaped links.

The hosts share this machine's filesystem and process table, so what real nodes keep apart is
kept apart by name: each slurmd has its own spool directory and pid file (``%n`` in
slurm.conf), and all read one slurm.conf. There is one munged, on host0, whose socket every
host reaches through the shared filesystem; real nodes each run one with the same key, which
is what sharing its socket amounts to. The configuration is the cgroup-free one that works in
a container (proctrack/linuxproc, task/none, no accounting).

::

    with Cluster(ClusterConfig(hosts=2)) as cluster, SlurmHosts(cluster, workdir) as slurm:
        slurm.run(["sbatch", "--nodes=2", "job.sbatch"])
    # every job is cancelled and every daemon stopped, however the block ended; the cluster's
    # teardown then ends anything left in its namespaces (job steps included)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strata.testing.cluster import Cluster
from strata.testing.netns import ClusterError
from strata.testing.polling import poll

__all__ = ["COMMANDS", "SlurmHosts", "missing_commands", "slurm_conf"]

COMMANDS = ("munged", "mungekey", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
"""What a SLURM on the cluster needs (Debian: slurm-wlm and munge)."""
_CGROUP_MOUNT = (
    "mount -t tmpfs cgroup /sys/fs/cgroup && mkdir /sys/fs/cgroup/systemd"
    ' && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd && exec "$@"'
)
"""slurmd (22.05) initialises its cgroup plugin even when no plugin uses cgroups, and wants a
cgroup v1 layout with a ``systemd`` hierarchy; ``ip netns exec`` mounts a fresh /sys without any.
So the daemon's command first mounts a tmpfs on /sys/fs/cgroup and the (existing) named
``systemd`` hierarchy in it, in the mount namespace ``ip netns exec`` made for it (invisible
outside); with proctrack/linuxproc and task/none nothing is created there."""
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if not (shutil.which(c) or shutil.which(c, path="/usr/sbin:/sbin"))]


def daemon_settings(munge_socket: Path, *, cred_expire: int, ctld_port: int, slurmd_port: int) -> dict[str, object]:
    """The slurm.conf settings of a SLURM that runs as root on one machine's cores, without
    systemd, cgroups or accounting (a container, or namespaces of one): munge auth on
    ``munge_socket``, the daemons' ports, plain process tracking, CPU scheduling.

    ``cred_expire`` is a job step credential's lifetime, and SLURM holds a requeued job for that
    long plus a second before it may start again (BeginTime): 121 s with SLURM's default 120."""
    return {
        "SlurmctldPort": ctld_port,
        "SlurmdPort": slurmd_port,
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={munge_socket},cred_expire={cred_expire}",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "MpiDefault": "none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "SchedulerType": "sched/builtin",
        "ReturnToService": 2,
        "KillWait": 5,
        # Nodes may declare more CPUs than the machine has cores (several share them).
        "SlurmdParameters": "config_overrides",
    }


def slurm_conf(
    cluster: Cluster, root: Path, *, cpus_per_node: int, cred_expire: int = 15, extra: dict[str, object] | None = None,
    ctld_port: int = 6817, slurmd_port: int = 6818,
) -> str:
    """slurm.conf for ``cluster``: slurmctld on host0, a node per host under its address, one
    partition ``hosts`` of them all; state, spool and pid files under ``root``.

    ``cred_expire``: see :func:`daemon_settings`. ``extra`` adds or replaces settings (e.g.
    ``SlurmdTimeout``)."""
    head = cluster.host(0)
    settings = {
        "ClusterName": f"strata{cluster.tag}",
        "SlurmctldHost": f"{head.name}({head.address})",
        **daemon_settings(root / "munge.sock", cred_expire=cred_expire, ctld_port=ctld_port, slurmd_port=slurmd_port),
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool" / "%n",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd-%n.pid",
    }
    lines = [f"{key}={value}" for key, value in {**settings, **(extra or {})}.items()]
    lines += [f"NodeName={h.name} NodeAddr={h.address} CPUs={cpus_per_node} State=UNKNOWN" for h in cluster.hosts]
    names = ",".join(h.name for h in cluster.hosts)
    lines.append(f"PartitionName=hosts Nodes={names} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


@dataclass
class SlurmHosts:
    """SLURM daemons on every host of a running :class:`Cluster`; a context manager."""

    cluster: Cluster
    root: Path
    """Where slurm.conf, the munge key and socket, state, spool dirs and daemon logs go."""
    cpus_per_node: int = 2
    cred_expire: int = 15
    """Seconds a step credential lives, and a requeued job waits (see :func:`slurm_conf`)."""
    extra: dict[str, object] = field(default_factory=dict)
    """More slurm.conf settings, e.g. ``{"SlurmdTimeout": 10}`` to declare a dead host's node
    down (and fail over its jobs) in seconds rather than SLURM's 300."""
    ready_seconds: float = 60.0
    _daemons: list[tuple[str, subprocess.Popen, Path]] = field(init=False, default_factory=list, repr=False)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a SLURM client needs in its environment (SLURM_CONF)."""
        return {"SLURM_CONF": str(self.conf)}

    def __enter__(self) -> SlurmHosts:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        """Write the configuration and start munged, slurmctld and every slurmd; wait until every
        node is idle. On any failure stop what started and raise, with the daemons' logs."""
        missing = missing_commands()
        if missing:
            raise ClusterError(f"SLURM on the cluster needs {', '.join(missing)}: install the Debian packages slurm-wlm and munge")
        for sub in ("state", "spool", *(f"spool/{h.name}" for h in self.cluster.hosts)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key, sock = self.root / "munge.key", self.root / "munge.sock"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}", "--force"], check=True, capture_output=True)
        self.conf.write_text(slurm_conf(self.cluster, self.root, cpus_per_node=self.cpus_per_node, cred_expire=self.cred_expire,
                                         extra=self.extra))
        try:
            self._start(0, "munged", ["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                                      f"--log-file={self.root / 'munged.log'}", f"--pid-file={self.root / 'munged.pid'}",
                                      f"--seed-file={self.root / 'munged.seed'}"],
                        ready=lambda: subprocess.run(["munge", "-S", str(sock), "-n"], capture_output=True).returncode == 0)
            self._start(0, "slurmctld", ["slurmctld", "-D", "-f", str(self.conf)],
                        ready=lambda: self.run(["scontrol", "ping"]).returncode == 0)
            for host in self.cluster.hosts:
                self.start_slurmd(host.index)
            self.wait(self._all_idle, self.ready_seconds, "every node to be idle")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Cancel every job, then stop the daemons (slurmds first). Steps a cancel leaves behind
        end with the cluster's namespaces."""
        if self._daemons and all(proc.poll() is None for _, proc, _ in self._daemons):
            try:
                self.run(["scancel", "--user", "root"], timeout=30)
                self.wait(lambda: not self.queue(), 30, "cancelled jobs to leave the queue")
            except ClusterError:
                pass
        for _, proc, _ in reversed(self._daemons):
            self.cluster.stop(proc)
        self._daemons.clear()

    def start_slurmd(self, host: int) -> None:
        """Start ``host``'s slurmd (again, as when the machine is back after a crash: with
        ``ReturnToService=2`` its node returns to service once it registers)."""
        name = f"slurmd-{self.cluster.host(host).name}"
        self._daemons = [d for d in self._daemons if d[0] != name or d[1].poll() is None]
        argv = ["slurmd", "-D", "-f", str(self.conf), "-N", self.cluster.host(host).name]
        self._start(host, name, ["sh", "-c", _CGROUP_MOUNT, "slurmd", *argv])

    def node_states(self) -> dict[str, str]:
        """Each node's state as sinfo says it ('idle', 'mixed', 'down*', ...)."""
        words = self.run(["sinfo", "-h", "-N", "-o", "%N %T"]).stdout.split()
        return dict(zip(words[0::2], words[1::2]))

    # -- clients, on the head node ---------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a client command on host0 (the login node) with this SLURM's configuration."""
        proc = self.cluster.popen(0, argv, env={**self.env, **(env or {})}, cwd=cwd,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cluster.stop(proc)
            raise ClusterError(f"'{' '.join(argv)}' on host0 ran past {timeout:g}s") from None
        self.cluster.stop(proc)  # forgets it
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def queue(self) -> list[str]:
        return self.run(["squeue", "-h", "-o", "%i"]).stdout.split()

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, NodeList, Restarts, ...); empty once forgotten."""
        text = self.run(["scontrol", "show", "job", job_id]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for_end(self, job_id: str, timeout: float, log: Path | None = None) -> str:
        """The state a job ends in (COMPLETED, FAILED, CANCELLED, ...), waiting at most ``timeout``."""

        def ended() -> str | None:
            state = self.show_job(job_id).get("JobState", "")
            return state if state in ENDED else None

        return self.wait(ended, timeout, f"job {job_id} to end", log)

    def wait(self, check: Callable[[], object], timeout: float, what: str, log: Path | None = None):
        """``check()``'s first true value, polled; after ``timeout`` a ClusterError naming ``what``
        with the tail of ``log`` (or of every daemon's log)."""
        value = poll(check, timeout)
        if not value:
            logs = [log] if log else sorted(self.root.glob("*.out"))
            detail = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs if p.exists())
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}\n{detail}")
        return value

    # -- internals -------------------------------------------------------------------------------

    def _start(self, host: int, name: str, argv: list[str], ready: Callable[[], bool] | None = None) -> None:
        log = self.root / f"{name}.out"
        with log.open("wb") as handle:
            proc = self.cluster.popen(host, argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT)
        self._daemons.append((name, proc, log))
        if ready is not None:
            self.wait(lambda: ready() or self._alive(proc, name, log), self.ready_seconds, f"{name} to serve", log)

    @staticmethod
    def _alive(proc: subprocess.Popen, name: str, log: Path) -> bool:
        if proc.poll() is not None:
            raise ClusterError(f"{name} exited with {proc.returncode} before it served:\n{log.read_text()[-3000:]}")
        return False

    def _all_idle(self) -> bool:
        for name, proc, log in self._daemons:
            self._alive(proc, name, log)
        states = self.node_states()
        return all(states.get(h.name) == "idle" for h in self.cluster.hosts)
