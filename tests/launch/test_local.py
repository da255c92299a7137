"""`strata train --nproc-per-node N` ends a failed job with one line per distinct error: rank 0's
(which rank 0 printed itself) is not repeated, a rank that failed alone is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from strata.launch.local import _report_failures, threads_per_process


def _failure(tmp_path: Path, rank: int, exitcode: int, message: str | None) -> ProcessFailure:
    error_file = tmp_path / f"error-{rank}.json"
    if message is not None:
        record = {"message": message, "extraInfo": {"py_callstack": message, "timestamp": "1"}}
        error_file.write_text(json.dumps({"message": record}))
    return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(error_file))


def test_each_distinct_error_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = "store 'x' has no partition 'p'"
    failures = {
        0: _failure(tmp_path, 0, 2, same),
        1: _failure(tmp_path, 1, 2, same),
        2: _failure(tmp_path, 2, 2, "partition 'p': part 2 is missing"),
        3: _failure(tmp_path, 3, -15, None),  # stopped by the agent
    }
    assert _report_failures(ChildFailedError("strata.launch.cli", failures)) == 2
    assert capsys.readouterr().err == "strata: error (rank 2): partition 'p': part 2 is missing\n"


def test_a_rank_that_failed_alone_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failures = {0: _failure(tmp_path, 0, -15, None), 1: _failure(tmp_path, 1, 1, None)}
    assert _report_failures(ChildFailedError("strata.launch.cli", failures)) == 1
    err = capsys.readouterr().err
    assert err == "strata: error (rank 1): the process exited with code 1 without a strata error; its output is above\n"


def test_threads_per_process() -> None:
    assert threads_per_process(2, {"OMP_NUM_THREADS": "3"}) == "3"
    assert int(threads_per_process(10_000, {})) == 1
