"""Loading a job config, and `strata launch slurm|k8s` without --submit, stay light (DESIGN.md, Launch).

Each case runs in a fresh interpreter, so what earlier tests imported cannot hide or cause a failure,
and inspects `sys.modules` at its end: no trainer, executor, engine, expert or block-pipeline module of
strata, no dgl and no deepspeed may be loaded. A recorder on `sys.meta_path` notes, for each such
module, the chain of strata frames that first imported it, so a failure says where to cut.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# Runs in the child. argv[1]: where to write the offenders as JSON; argv[2]: the action as JSON.
CHILD = r"""
import json, os, sys, traceback

import strata  # only __version__: where the package lives, to name frames by their path in the repository

PACKAGE = os.path.dirname(os.path.abspath(strata.__file__)) + os.sep
REPO = os.path.dirname(PACKAGE.rstrip(os.sep)) + os.sep

STRATA_HEAVY = (".trainer", ".executors", ".engines", "experts", "block_pipeline")


def heavy(name):
    top = name.split(".")[0]
    if top in ("dgl", "deepspeed"):
        return True
    return top == "strata" and any(part in name for part in STRATA_HEAVY)


first_import = {}


class Recorder:
    # Never finds anything itself: it notes who asked for a heavy module, then lets the real finders work.
    def find_spec(self, name, path=None, target=None):
        if heavy(name) and name not in first_import:
            stack = traceback.extract_stack()[:-1]
            first_import[name] = [
                f"{f.filename.removeprefix(REPO) if f.filename.startswith(PACKAGE) else 'the check'}:{f.lineno}"
                for f in stack
                if f.filename.startswith(PACKAGE) or f.filename == "<string>"
            ]
        return None


sys.meta_path.insert(0, Recorder())
out, action = sys.argv[1], json.loads(sys.argv[2])
if action["kind"] == "load_job":
    from strata.launch.job import load_job

    load_job(action["config"], action["overrides"])
else:
    from strata.launch.cli import main

    code = main(action["argv"])
    if code != 0:
        raise SystemExit(f"strata {' '.join(action['argv'])} exited with {code}")
offenders = {name: first_import.get(name, []) for name in sorted(sys.modules) if heavy(name)}
with open(out, "w") as f:
    json.dump(offenders, f)
"""


def _heavy_modules_after(action: dict, tmp_path: pathlib.Path) -> dict[str, list[str]]:
    out = tmp_path / "offenders.json"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), json.dumps(action)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"the child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def _explain(offenders: dict[str, list[str]]) -> str:
    lines = []
    for name, chain in offenders.items():
        where = " -> ".join(chain) if chain else "(no strata frame on the stack)"
        lines.append(f"  {name}: first imported via {where}")
    return "\n".join(lines)


def _check(what: str, offenders: dict[str, list[str]]) -> None:
    # Report the root causes first: a chain for dgl or a trainer, not each of its many submodules.
    tops = {name: chain for name, chain in offenders.items() if not any(name.startswith(o + ".") for o in offenders)}
    assert not offenders, (
        f"{what} imported {len(offenders)} module(s) it must not (no trainer, executor, engine, expert or "
        f"block-pipeline module, no dgl, no deepspeed): {', '.join(sorted(tops))}\n{_explain(tops)}"
    )


def _overrides(tmp_path: pathlib.Path) -> list[str]:
    # The store is never opened here; point it at tmp_path anyway so nothing reaches outside the test.
    return [f"data.store={tmp_path / 'store'}"]


@pytest.mark.parametrize("example", ["cora_gcn", "digits_dit", "digits_experts"])
def test_loading_a_job_config_imports_no_trainer_dgl_or_deepspeed(example: str, tmp_path: pathlib.Path) -> None:
    config = str(EXAMPLES / f"{example}.yaml")
    offenders = _heavy_modules_after({"kind": "load_job", "config": config, "overrides": _overrides(tmp_path)}, tmp_path)
    _check(f"load_job('{example}.yaml')", offenders)


@pytest.mark.parametrize("example", ["cora_gcn", "digits_dit"])
@pytest.mark.parametrize("target", ["slurm", "k8s"])
def test_strata_launch_without_submit_imports_no_trainer_dgl_or_deepspeed(
    target: str, example: str, tmp_path: pathlib.Path
) -> None:
    config = str(EXAMPLES / f"{example}.yaml")
    sets = [arg for item in _overrides(tmp_path) for arg in ("--set", item)]
    if target == "slurm":
        argv = ["launch", "slurm", config, *sets, "--nodes", "2", "--chdir", str(tmp_path), "--out", str(tmp_path / "job.sbatch")]
        written = tmp_path / "job.sbatch"
    else:
        argv = ["launch", "k8s", config, *sets, "--nodes", "2", "--image", "strata:test", "--out", str(tmp_path / "k8s")]
        written = tmp_path / "k8s"
    offenders = _heavy_modules_after({"kind": "cli", "argv": argv}, tmp_path)
    assert written.exists(), f"strata {' '.join(argv)} wrote nothing at {written}"
    _check(f"strata {target} launch of {example}.yaml", offenders)
