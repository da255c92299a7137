"""Checkpoint files on any fsspec URL, written atomically.

Layout under a checkpoint root::

    ROOT/
      step-00000100/
        shard-00000.pt      torch.save of one rank's state (model, optimizer, RNG, position)
        shard-00001.pt      ... one per rank when the state is sharded
        COMPLETE            JSON written last: step, world size, shard names, each shard's
                            BLAKE2b checksum
      .step-00000200.partial/   a checkpoint being written: never read
        shard-00000.pt.blake2b  the shard's checksum, until the commit moves it into COMPLETE

A checkpoint directory appears under its final name only after every shard and the marker
are written, so the newest ``step-*`` with a marker is safe to resume from unless its bytes
changed since: every shard is checked against its recorded checksum as it is read. Shards
are read with ``torch.load(weights_only=True)``: nothing but tensors and plain containers.
Checkpoints written before checksums were recorded are read unchecked.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

import torch

from strata.errors import CheckpointError
from strata.storage import fs, markers

_MARKER = "COMPLETE"
_SUM = ".blake2b"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: str, step: int) -> str:
    return fs.join(root, f"step-{step:08d}")


def _partial_dir(root: str, step: int) -> str:
    return fs.join(root, f".step-{step:08d}.partial")


def shard_name(rank: int) -> str:
    return f"shard-{rank:05d}.pt"


def checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write_shard(root: str, step: int, rank: int, state: dict[str, Any]) -> None:
    """Write one rank's state, and its checksum beside it, into the partial checkpoint of ``step``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    url = fs.join(_partial_dir(root, step), shard_name(rank))
    fs.write_bytes(url, data)
    fs.write_text(url + _SUM, checksum(data))


def commit(root: str, step: int, world_size: int, extra: dict[str, Any] | None = None, keep: int = 0) -> str:
    """Mark the checkpoint of ``step`` complete and move it into place (one rank calls this,
    after every rank wrote its shard). Keeps the newest ``keep`` checkpoints when ``keep`` > 0."""
    partial = _partial_dir(root, step)
    shards = [shard_name(r) for r in range(world_size)]
    missing = [s for s in shards if not fs.exists(fs.join(partial, s))]
    if missing:
        raise CheckpointError(f"checkpoint step {step} under '{root}' lacks {', '.join(missing)}; not committing it")
    sums = {}
    for name in shards:
        url = fs.join(partial, name + _SUM)
        sums[name] = fs.read_text(url).strip()
        fs.remove(url)
    marker = {"step": step, "world_size": world_size, "shards": shards, "checksums": sums, **(extra or {})}
    final = step_dir(root, step)
    markers.seal(partial, final, _MARKER, json.dumps(marker, indent=1))
    if keep > 0:
        for old in complete_steps(root)[:-keep]:
            fs.remove(step_dir(root, old))
    return final


def complete_steps(root: str) -> list[int]:
    """Steps of the complete checkpoints under ``root``, oldest first."""
    steps = []
    for name in fs.listdir(root):
        match = _STEP_DIR.match(name)
        if match and fs.exists(fs.join(root, name, _MARKER)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_step(root: str) -> int | None:
    """The newest complete checkpoint's step, or None when there is none."""
    steps = complete_steps(root)
    return steps[-1] if steps else None


def read_marker(root: str, step: int) -> dict[str, Any]:
    text = markers.read_marker(fs.join(step_dir(root, step), _MARKER))
    if text is None:
        raise CheckpointError(f"checkpoint '{step_dir(root, step)}' is not complete (no {_MARKER} marker)")
    return json.loads(text)


def read_shard(root: str, step: int, rank: int) -> dict[str, Any]:
    marker = read_marker(root, step)
    if rank >= marker["world_size"]:
        raise CheckpointError(
            f"checkpoint '{step_dir(root, step)}' was written by {marker['world_size']} ranks; rank {rank} has no shard"
        )
    url = fs.join(step_dir(root, step), shard_name(rank))
    try:
        data = fs.read_bytes(url)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint shard '{url}' is missing") from exc
    recorded = marker.get("checksums", {}).get(shard_name(rank))
    if recorded is not None and checksum(data) != recorded:
        raise CheckpointError(
            f"checkpoint shard '{url}' is corrupt: its bytes changed since the checkpoint was committed "
            "(the checksum recorded in its COMPLETE marker does not match)"
        )
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"checkpoint shard '{url}' cannot be read ({type(exc).__name__}: {exc})") from exc
