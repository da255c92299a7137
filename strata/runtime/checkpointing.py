"""The collective side of checkpoints, shared by every training loop.

Every rank writes its own shard (its optimizer, RNG and data position differ); once all
have, rank 0 commits the checkpoint. On resume rank 0 picks the newest complete checkpoint
and every rank reads its own shard of that one, so ranks never resume from different steps.
One training at a time writes a checkpoint directory: rank 0 holds its writer lock
(:mod:`strata.storage.locks`) from :func:`claim` until :func:`release` or the process ends.
What goes into a shard is the training loop's business; the file format is
:mod:`strata.storage.checkpoint`'s.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from typing import Any

import numpy as np

from strata.errors import CheckpointError
from strata.runtime.dist.comm import Comm
from strata.storage import checkpoint, fs
from strata.storage.locks import LockHeld, WriterLock

log = logging.getLogger(__name__)

_HELD: dict[str, WriterLock] = {}
"""The checkpoint directories this process trains into, each locked until :func:`release`
(or the process ends: the kernel drops the lock of a dead process). A second claim by the same
process (a training run again in-process) keeps its lock."""

RUN_RECORD = "RUN.json"
"""Beside the checkpoints: which run they belong to (an id, when and where it started, and
the config that matters for resuming it)."""


def save(root: str, step: int, shard: dict[str, Any], *, keep: int, comm: Comm) -> None:
    """Write this rank's ``shard`` of checkpoint ``step``; rank 0 commits once every rank has."""
    checkpoint.write_shard(root, step, comm.rank, shard)
    comm.barrier()
    if comm.rank == 0:
        checkpoint.commit(root, step, world_size=comm.world_size, keep=keep)
    comm.barrier()


FIXED_SHARDS = (
    "each rank's optimizer, RNG and data position are in its own shard and this job cannot re-split them"
)
"""Why a job resumes only at the process count that wrote its checkpoint, unless it says otherwise."""


def restore(root: str, comm: Comm, *, fixed: str = FIXED_SHARDS) -> tuple[int, dict[str, Any]] | None:
    """(step, this rank's shard) of the newest complete checkpoint under ``root`` whose every
    shard reads back intact, or None when there is no complete checkpoint. A corrupt or
    unreadable newer one is skipped with a warning; if none is usable, that is an error.

    A checkpoint written by another number of processes is refused, saying why (``fixed``),
    unless ``fixed`` is empty: then every rank reads shard 0 (the replicas' model and optimizer
    and the loop's position, the same on every rank of a data-parallel job) and the caller
    re-splits the rest; :func:`written_by` tells how many processes wrote it."""
    steps = checkpoint.complete_steps(root) if comm.rank == 0 else []
    count = comm.broadcast_int(len(steps))
    if count == 0:
        log.info("no complete checkpoint under %s: starting from scratch", root)
        return None
    skipped: list[str] = []
    for index in range(count):
        step = comm.broadcast_int(steps[-1 - index] if comm.rank == 0 else -1)
        shard_rank = comm.rank if _check_world_size(root, step, comm, fixed) else 0
        try:
            shard, failure = checkpoint.read_shard(root, step, shard_rank), ""
        except CheckpointError as exc:
            shard, failure = None, str(exc)
        failed = comm.sum_floats([float(bool(failure))])[0] if comm.world_size > 1 else float(bool(failure))
        if not failed:
            log.info("resuming from checkpoint step %d under %s", step, root)
            return step, shard  # type: ignore[return-value]
        if failure:
            log.warning("rank %d: %s; trying the previous complete checkpoint", comm.rank, failure)
        skipped.append(f"step {step}")
    raise CheckpointError(
        f"no usable checkpoint under '{root}': {', '.join(skipped)} are complete but corrupt or unreadable "
        "(see the warnings above); resume from another checkpoint.dir or start afresh with a new run_dir"
    )


def written_by(root: str, step: int) -> int:
    """How many processes wrote checkpoint ``step`` under ``root``."""
    return int(checkpoint.read_marker(root, step)["world_size"])


def _check_world_size(root: str, step: int, comm: Comm, fixed: str) -> bool:
    """Whether checkpoint ``step`` was written by as many processes as this run has; refused
    (naming ``fixed``, why the job cannot re-split) when not and ``fixed`` is set."""
    count = written_by(root, step)
    if count != comm.world_size and fixed:
        raise CheckpointError(
            f"checkpoint step {step} under '{root}' was written by {count} processes but this run has "
            f"{comm.world_size}: {fixed}; resume with {count} processes, or start afresh with another checkpoint.dir"
        )
    return count == comm.world_size


def load_states(step: int, root: str, pairs: dict[str, tuple[Any, dict[str, Any]]]) -> None:
    """``target.load_state_dict(state)`` for each named (target, state), as one CheckpointError
    naming the part that does not fit."""
    for name, (target, state) in pairs.items():
        try:
            target.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint step {step} under '{root}': its {name} does not fit this run: {exc}") from exc


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for each rank (replicas must draw different dropout masks), a pure
    function of (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def claim(root: str, identity: dict[str, Any], comm: Comm, *, resume: bool, overwrite: bool) -> None:
    """Make the checkpoints under ``root`` this run's, before any is read or written.

    A fresh run refuses a directory holding another run's complete checkpoints unless asked to
    ``overwrite`` them (they are deleted then); a resumed run refuses checkpoints whose run
    was configured otherwise (``identity``: the config that matters for resuming). Another
    training writing there at this moment (its lock held) is refused, naming it. Rank 0
    decides; every rank stops together on a refusal."""
    flat = _flatten(json.loads(json.dumps(identity, default=str)))
    refusal = ""
    if comm.rank == 0:
        refusal = _lock(root)
        if not refusal:
            refusal = _claim(root, flat, resume=resume, overwrite=overwrite)
            if refusal:
                release(root)
    if comm.broadcast_int(1 if refusal else 0):
        raise CheckpointError(refusal or f"rank 0 refused the checkpoints under '{root}' (its error says why)")


def release(root: str) -> None:
    """Release the lock :func:`claim` took on ``root`` (nothing when it holds none)."""
    held = _HELD.pop(str(root).rstrip("/"), None)
    if held is not None:
        held.release()


def _lock(root: str) -> str:
    root = str(root).rstrip("/")
    if root in _HELD:
        return ""
    try:
        _HELD[root] = WriterLock(root, "strata train").acquire()
    except LockHeld as exc:
        return f"{exc}. Two trainings never share a run directory: give this one another run_dir"
    return ""


def _claim(root: str, identity: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    record_url = fs.join(root, RUN_RECORD)
    record = json.loads(fs.read_text(record_url)) if fs.exists(record_url) else None
    steps = checkpoint.complete_steps(root) if fs.exists(root) else []
    if resume and steps:
        differ = [key for key in sorted(set(identity) | set((record or {}).get("config", {})))
                  if record is not None and record["config"].get(key) != identity.get(key)]
        if differ:
            shown = "; ".join(f"{key}: {record['config'].get(key)!r} there, {identity.get(key)!r} now" for key in differ[:3])
            return (
                f"the checkpoints under '{root}' belong to run {record['run_id']}, configured otherwise ({shown}); "
                "resume it with its own config, or start this one in another run_dir"
            )
        if record is not None:
            return ""
    elif steps and not overwrite:
        owner = f"run {record['run_id']} (started {_when(record['started'])} on {record['host']})" if record else "an earlier run"
        return (
            f"'{root}' holds the checkpoints of {owner}, newest step {steps[-1]}. To continue that run add --resume; "
            "to start over here add --overwrite (its checkpoints are deleted); or give this run another run_dir"
        )
    elif steps:
        log.warning("deleting the %d checkpoints under %s (--overwrite): this run starts over", len(steps), root)
        for step in steps:
            fs.remove(checkpoint.step_dir(root, step))
    fs.makedirs(root)
    mine = {"run_id": uuid.uuid4().hex[:12], "started": time.time(), "host": socket.gethostname(), "config": identity}
    fs.write_atomically(record_url, json.dumps(mine, indent=1, sort_keys=True))
    return ""


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` as ``{"train.lr": 0.1}``, so a difference names its key."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
