"""`strata train CONFIG --nproc-per-node N`: N training processes on this machine, started by
torchrun's own agent (torch.distributed.elastic) inside this command, as `torchrun --standalone`
would, but with strata's output only.

torchrun itself prints a banner when it sets OMP_NUM_THREADS, logs each worker it stops, and
ends a failed job with its own traceback and a summary of every rank's failure. Here the
threads per process are chosen up front (the CPUs over the processes, or the caller's
OMP_NUM_THREADS), the agent's logging is silenced, and a failure ends with rank 0's error
line (printed by rank 0) plus, once each, the errors of other ranks that differ from it.
Multi-node jobs still use torchrun, srun or Kubernetes (README, 'Run on a cluster').
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence

from strata.errors import Preempted, StrataError

log = logging.getLogger(__name__)


def threads_per_process(nproc: int, env: dict[str, str] | os._Environ) -> str:
    """OMP_NUM_THREADS of each worker: the caller's, else this machine's CPUs shared out."""
    return env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))


def run_local(argv: Sequence[str], nproc: int) -> int:
    """Run ``strata <argv>`` as ``nproc`` processes of one job on this machine; the exit code of
    the first process that failed, or 0."""
    if nproc < 1:
        raise StrataError(f"--nproc-per-node must be at least 1, got {nproc}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise StrataError(
            "--nproc-per-node starts its own processes, but this command already runs as one process of a job "
            f"(RANK={os.environ['RANK']}); drop --nproc-per-node, or run strata outside torchrun"
        )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _silence_agent()
    os.environ["OMP_NUM_THREADS"] = threads_per_process(nproc, os.environ)  # inherited by the workers
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "strata.launch.cli", *argv)
    except ChildFailedError as exc:
        return _report_failures(exc)
    except SignalException as exc:
        # The agent passed SIGINT/SIGTERM on to the workers, which finish their step, checkpoint
        # together and stop (rank 0 said where, above), and waited for them.
        print(f"strata: {exc.sigval.name} stopped the job; resume it with --resume", file=sys.stderr)
        return Preempted.exit_code
    return 0


def _silence_agent() -> None:
    """The elastic agent's loggers set their own levels at import: raise each above CRITICAL."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name == "torch.distributed.launcher.api":
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _report_failures(exc) -> int:
    """Rank 0 printed its own error; say each other rank's once, where it differs from rank 0's
    (a rank that failed alone), and return the exit status of the job."""
    failures = sorted(exc.failures.items())
    messages = {rank: _message(failure) for rank, failure in failures}
    said = {messages.get(0, "")}
    for rank, failure in failures:
        text = messages[rank]
        if rank == 0 or text in said or failure.exitcode == -15:  # -15: stopped by the agent after another failed
            continue
        said.add(text)
        print(f"strata: error (rank {rank}): {text}", file=sys.stderr)
    # Rank 0's status when it exited with one, else the lowest rank's; signals (the agent's SIGTERM) count as 1.
    codes = [failure.exitcode for _, failure in failures if failure.exitcode > 0]
    return codes[0] if codes else 1


def _message(failure) -> str:
    """A worker's error: strata's own from its error file, else how the process ended."""
    message = failure.message
    if isinstance(message, dict):
        return str(message.get("extraInfo", {}).get("py_callstack") or message.get("message", ""))
    if failure.exitcode < 0:
        return f"the process was killed by signal {failure.signal_name()}"
    if not os.path.isfile(failure.error_file):
        return f"the process exited with code {failure.exitcode} without a strata error; its output is above"
    return str(message)
