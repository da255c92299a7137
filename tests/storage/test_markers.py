"""Completion markers and staged directories, on a local path and on memory://."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from strata.errors import StoreError
from strata.storage import fs
from strata.storage.markers import StagedDir, marker_fields, read_marker, seal


@dataclass
class _Info:
    name: str
    parts: int = 1


def test_a_marker_is_read_only_when_present_and_its_unknown_fields_are_ignored(store_root: str) -> None:
    url = fs.join(store_root, "dir", "_COMPLETE")
    assert read_marker(url) is None
    fs.write_text(url, '{"name": "a", "parts": 3, "added_by_a_newer_writer": true}')
    assert marker_fields(_Info, read_marker(url), StoreError) == _Info("a", 3)
    with pytest.raises(StoreError, match="not valid"):
        marker_fields(_Info, "{not json", lambda exc: StoreError(f"marker not valid ({exc})"))
    with pytest.raises(StoreError, match="not valid"):
        marker_fields(_Info, '{"parts": 2}', lambda exc: StoreError(f"marker not valid ({exc})"))


def test_a_staged_directory_appears_complete_or_not_at_all(store_root: str) -> None:
    url = fs.join(store_root, "out")
    with pytest.raises(RuntimeError), StagedDir(url) as staged:
        fs.write_text(fs.join(staged.tmp, "data"), "half")
        raise RuntimeError("interrupted")
    assert not fs.exists(url) and not fs.exists(staged.tmp)

    with StagedDir(url) as staged:
        fs.write_text(fs.join(staged.tmp, "data"), "v1")
        seal(staged.tmp, url, "_COMPLETE", "{}")
    assert fs.read_text(fs.join(url, "data")) == "v1" and read_marker(fs.join(url, "_COMPLETE")) == "{}"
    assert [name for name in fs.listdir(store_root) if name.startswith(".")] == []

    fs.write_atomically(fs.join(url, "data"), "v2")
    assert fs.read_text(fs.join(url, "data")) == "v2" and sorted(fs.listdir(url)) == ["_COMPLETE", "data"]
