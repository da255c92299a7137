"""Help and behaviour agree: what `strata --help` and each `--help` say is what the commands do."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.launch.job import load_job
from tests.helpers.cli import run_strata

# Options that belong to one graph format only.
ONLY = {
    "planetoid": ["--planetoid-name"],
    "ogb": ["--split-scheme"],
    "synthetic": ["--nodes", "--avg-degree", "--homophily", "--kind", "--feat-dim"],
}


def test_strata_help_describes_graphs_and_diffusion() -> None:
    text = " ".join(run_strata("--help").stdout.split())
    assert "graph neural networks" in text and "diffusion models" in text
    assert "strata ingest digits --out stores/digits" in text and "strata sample runs/digits-dit" in text


@pytest.mark.parametrize("fmt", ["planetoid", "ogb", "npz", "synthetic"])
def test_ingest_format_help_lists_only_its_own_options(fmt: str) -> None:
    text = run_strata("ingest", fmt, "--help").stdout
    assert "--out STORE" in text
    for other, options in ONLY.items():
        for option in options:
            assert (option in text) == (other == fmt), f"'strata ingest {fmt} --help' and {option}"
    assert ("--allow-nan" in text) == (fmt != "synthetic")  # generated features are never NaN


def test_every_format_takes_out_store(tmp_path: Path) -> None:
    proc = run_strata("ingest", "digits", "--out", str(tmp_path / "d"), "-q")
    assert proc.stdout.startswith(f"wrote {tmp_path / 'd'}: 1,797 images") and proc.stderr == ""
    proc = run_strata("ingest", "synthetic-images", "--out", str(tmp_path / "s"), "--num", "20", "--size", "4", "-q")
    assert proc.stdout.startswith(f"wrote {tmp_path / 's'}: 20 images")
    for fmt in ("images", "digits", "synthetic-images"):
        assert "--out STORE" in run_strata("ingest", fmt, "--help").stdout
    # The older positional spelling still works, with a note.
    proc = run_strata("ingest", "digits", str(tmp_path / "old"), "-q")
    assert proc.stdout.startswith(f"wrote {tmp_path / 'old'}")
    assert f"older spelling: write --out {tmp_path / 'old'}" in proc.stderr
    proc = run_strata("ingest", "digits", check=False)
    assert proc.returncode == 2 and "needs --out STORE" in proc.stderr


def test_a_list_of_numbers_is_spelled_as_pack_spells_it(tmp_path: Path) -> None:
    """`--set train.fanouts=10,10` as `strata pack --fanouts 10,5`; YAML lists as before."""
    path = tmp_path / "job.yaml"
    path.write_text("data: {store: s}\ntrain: {fanouts: [5, 5]}\n")
    assert load_job(str(path), ["train.fanouts=10,-1"]).train.fanouts == [10, -1]
    assert load_job(str(path), ["train.fanouts=[3, 2]"]).train.fanouts == [3, 2]
    proc = run_strata("launch", "slurm", str(path), "--set", "train.fanouts=10,10", "--out", str(tmp_path / "x.sbatch"), cwd=tmp_path)
    assert "--set train.fanouts=10,10" in (tmp_path / "x.sbatch").read_text().replace("'", "") and proc.returncode == 0
    proc = run_strata("train", str(path), "--set", "train.fanouts=10,x", check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert "'train.fanouts' must be a list of integers such as [10, 10] or 10,10; got '10,x'" in proc.stderr
