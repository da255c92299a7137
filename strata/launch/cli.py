"""The `strata` command: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence

from strata.errors import Preempted, StrataError

DESCRIPTION = """\
strata trains graph neural networks on graphs, and diffusion models on image sets, that
outgrow one machine: data parallel, graph parallel, layer pipelines, DeepSpeed ZeRO and
decentralized diffusion experts, under torchrun, SLURM or Kubernetes.

Graphs (node classification):
  strata ingest planetoid DIR --name cora --out stores/cora    raw data -> dataset store
  strata info stores/cora --verify                             inspect and check a store
  strata train examples/cora_gcn.yaml                          train from a YAML config
  strata quickstart                                            all of it on a synthetic graph

Images (diffusion):
  strata ingest digits --out stores/digits                     scikit-learn's digits -> image store
  strata train examples/digits_dit.yaml                        train a DiT (task: diffusion)
  strata sample runs/digits-dit --out samples.png              samples from a diffusion run or expert set

'strata COMMAND --help' describes each command. Under torchrun, srun or Kubernetes every
process runs 'strata train'; only rank 0 prints progress and errors.
"""

log = logging.getLogger("strata.launch")


def build_parser() -> argparse.ArgumentParser:
    from strata.launch.commands import (
        info,
        ingest,
        launch,
        pack,
        partition,
        quickstart,
        sample,
        train,
    )

    parser = argparse.ArgumentParser(
        prog="strata", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"strata {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (quickstart, ingest, info, train, sample, partition, pack, launch):
        module.register(sub)
    return parser


def _version() -> str:
    from strata import __version__

    return __version__


def launched_rank(env: Mapping[str, str]) -> int:
    """This process's rank when a launcher (torchrun, srun, a Kubernetes Job) started it as one
    of several; 0 otherwise, and when the launcher's variables do not make sense (the training
    command reports those itself)."""
    from strata.runtime.dist.topology import topology_from_env

    try:
        return topology_from_env(env).rank
    except (StrataError, ValueError):
        rank = env.get("RANK", "0")
        return int(rank) if rank.isdigit() else 0


def _quiet_third_party() -> None:
    """Keep output to strata's own lines: DeepSpeed calls torch.distributed functions that torch
    has deprecated, and each call warns once per process; nothing a user can act on."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.distributed\.\w+` is deprecated")


def report_error(message: str, rank: int, env: Mapping[str, str]) -> None:
    """Say what went wrong once for the whole job, not once per process.

    Rank 0 prints it. Under torchrun every rank also writes it to the error file torchrun
    gives each worker (``TORCHELASTIC_ERROR_FILE``), so torchrun's failure summary names the
    cause of a rank that failed alone instead of a link to its docs; other ranks therefore
    print nothing. Other launchers (srun) get the other ranks' errors prefixed with their rank."""
    error_file = env.get("TORCHELASTIC_ERROR_FILE", "")
    if error_file and not os.path.exists(error_file):
        try:
            # The layout of torch.distributed.elastic's ErrorHandler.record_exception; torchrun shows py_callstack.
            record = {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}
            with open(error_file, "w") as out:
                json.dump({"message": record}, out)
        except OSError:
            error_file = ""
    if rank == 0:
        print(f"strata: error: {message}", file=sys.stderr)
    elif not error_file:
        print(f"strata: error (rank {rank}): {message}", file=sys.stderr)
    else:
        log.debug("error on rank %d: %s", rank, message)


def describe_os_error(exc: OSError) -> str:
    """What the file system or network refused, said as a user needs it (the traceback is
    ``--verbose``'s): the operation's path, its reason, and what to check."""
    where = f" '{exc.filename}'" if exc.filename else ""
    reason = exc.strerror or str(exc)
    return (
        f"{reason}:{where or ' ' + str(exc)}. Check that the location exists, is writable by this user and has "
        "space left (run with --verbose for the traceback)"
    )


def _one_of_several(env: Mapping[str, str]) -> bool:
    """Whether this process is one of a job of several (a launcher's WORLD_SIZE or SLURM_NTASKS > 1)."""
    size = env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or "1"
    return size.isdigit() and int(size) > 1


def _leave(code: int) -> None:
    """Exit a rank of a multi-process job at once, after Python's exit handlers ran and the
    output is flushed, skipping the interpreter's teardown.

    That teardown destroys gloo's and DGL's native objects in no particular order, and a rare
    one aborts ("terminate called without an active exception", SIGABRT) after the rank's work
    was done and written; its peers and the launcher would then report a finished job as
    failed. Everything strata writes is closed before this point (files by their ``with``
    blocks, checkpoints sealed, metrics pushed), and ``atexit`` handlers (temporary folders,
    logging) still run."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `strata` command and return its exit status; a rank of a multi-process job
    leaves the process from here instead (see :func:`_leave`)."""
    code = _run(argv)
    if _one_of_several(os.environ):
        _leave(code)
    return code


def _run(argv: Sequence[str] | None) -> int:
    os.environ.setdefault("DGLBACKEND", "pytorch")
    _quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = launched_rank(os.environ)
    # Only rank 0 says what the job is doing; the others speak up for warnings and worse.
    quiet = getattr(args, "quiet", False) or rank != 0
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="strata %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except Preempted as exc:
        if rank == 0:
            print(f"strata: {exc}", file=sys.stderr)
        return Preempted.exit_code
    except StrataError as exc:
        report_error(str(exc), rank, os.environ)
        return 2
    except OSError as exc:
        if args.verbose:
            raise
        report_error(describe_os_error(exc), rank, os.environ)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print("strata: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
