"""Job configs: YAML onto typed dataclasses, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import ConfigError
from strata.launch.job import load_job
from tests.helpers.cli import run_strata

GOOD = """
name: t
data: {store: some/store}
model: {name: gcn, hidden: 16}
train: {epochs: 3, lr: 0.01, fanouts: [5, 5]}
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


def test_good_config_maps_onto_dataclasses(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, GOOD), ["train.seed=4", "model.dropout=0.25"])
    assert job.model.name == "gcn" and job.model.hidden == 16 and job.model.dropout == 0.25
    assert job.train.fanouts == [5, 5] and job.train.seed == 4
    assert job.run_dir == "runs/t"


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "extra: 1\n", "unknown config key 'extra'"),
        (GOOD.replace("lr: 0.01", "lrr: 0.01"), "unknown config key 'train.lrr'"),
        (GOOD.replace("hidden: 16", "hidden: sixteen"), "'model.hidden' must be an integer, got 'sixteen'"),
        (GOOD.replace("name: gcn", "name: transformer"), "model.name must be one of gcn, sage, gat, gcnii"),
        (GOOD.replace("lr: 0.01", "lr: -1"), "train.lr must be a positive number"),
        (GOOD.replace("[5, 5]", "5"), "'train.fanouts' must be a list"),
        (GOOD.replace("data: {store: some/store}", "data: {}"), "data.store is required"),
        ("name: t\n", "has no 'data' section"),
        ("[1, 2]", "must hold a mapping"),
        ("a: [", "is not valid YAML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", "\\[").replace("(", "\\(")):
        load_job(_write(tmp_path, text))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(str(tmp_path / "nope.yaml"))


def test_cli_rejects_unknown_key_before_training(tmp_path: Path) -> None:
    # The store does not exist either: the config error must come first.
    proc = run_strata("train", _write(tmp_path, GOOD + "trian: {}\n"), check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown config key 'trian'" in proc.stderr
    assert not (tmp_path / "runs").exists()
