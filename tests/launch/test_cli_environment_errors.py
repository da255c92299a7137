"""What the environment refuses (an unknown URL scheme, a location that cannot be written, a
Pushgateway that does not answer) is said in one line, not a traceback; a training that is
done stays done."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.launch.cli import main
from tests.helpers.ports import free_port


def test_an_unknown_url_scheme_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "synthetic", "--out", "nosuchproto://bucket/store", "--nodes", "200", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("strata: error: 'nosuchproto://bucket/store': fsspec knows no protocol 'nosuchproto'")
    assert "Traceback" not in err


def test_a_location_that_cannot_be_written_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["ingest", "synthetic", "--out", str(blocker / "store"), "--nodes", "200", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("strata: error: ") and str(blocker) in err and "Check that the location exists" in err
    assert blocker.read_text() == "not a directory"


def test_an_unreachable_pushgateway_after_training_is_a_warning_and_the_result_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    store = str(tmp_path / "store")
    assert main(["ingest", "synthetic", "--out", store, "--nodes", "300", "-q"]) == 0
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: t\ndata: {{store: {store}}}\nrun_dir: {tmp_path / 'run'}\ntrain: {{executor: full, epochs: 1}}\n"
        f"metrics: {{pushgateway: 'http://127.0.0.1:{free_port()}'}}\n"
    )
    assert main(["train", str(job), "--json"]) == 0
    assert '"test_acc"' in capsys.readouterr().out
    assert any("could not push its final metrics to the Pushgateway" in r.getMessage() for r in caplog.records)
