"""`strata train` epoch time of one revision against another, side by side: did a change make
training slower?

Cases: Cora GCN, GAT and GCNII (the configs in examples/, full graph, ``--cora-epochs`` epochs,
early stopping off) and ``--minibatch-epochs`` epochs of minibatch GraphSAGE (fanouts 10,10, batch 1024) on a
synthetic block-model graph of ``--nodes`` nodes (200k by default, mean in-degree 10, 64
features). Each revision is checked out with ``git worktree add --detach`` into a temporary
folder (the working tree itself where ``--head`` is empty), and both run under this Python
(one environment, so only the code differs) as separate ``python -m strata.launch.cli train
CONFIG --json`` processes with ``PYTHONPATH`` at their tree and ``--threads`` OpenMP threads.
Runs alternate base, head, base, head ... for ``--repeats`` rounds so both see the same load.

Figures per case and revision: ``epoch_seconds`` (the loop's step time per epoch,
TrainResult.train_seconds / epochs: forward, backward, optimizer step and the data wait), the
best over the rounds (on a shared machine the least disturbed run is the one closest to the
code's own speed) and the median beside it; ``cpu_seconds``, the CPU time of the whole command
(start-up, loading, evaluation after each epoch; hardly moved by other work on the machine, as
each run has one thread), and ``wall_seconds``, both medians; the test accuracy. Ratios:
``head_over_base_epoch_<case>`` (best epoch seconds) and ``head_over_base_cpu_<case>``.
The stores are written once, by the base revision's ingest, under ``--work`` (the Cora
store from the Planetoid files in ``--planetoid``; without them the Cora cases are skipped,
saying so).

    python benchmarks/epoch_time_vs_commit.py --base REV [--head REV] [--planetoid DIR] [--json OUT]

The smallest useful run, a few minutes on 2 cores::

    python benchmarks/epoch_time_vs_commit.py --base HEAD~1 --nodes 20000 --cora-epochs 10 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import add_json_flag, publish, ratio

REPO = Path(__file__).resolve().parents[1]
CORA_CASES = {"cora_gcn": "cora_gcn.yaml", "cora_gat": "cora_gat.yaml", "cora_gcnii": "cora_gcnii.yaml"}
MINIBATCH_CONFIG = """name: minibatch-sage
data:
  store: {store}
model:
  name: sage
  hidden: 64
  num_layers: 2
  dropout: 0.5
train:
  mode: minibatch
  epochs: {epochs}
  batch_size: 1024
  fanouts: [10, 10]
  lr: 0.003
  seed: 0
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the revision to compare against (e.g. the commit before a change)")
    p.add_argument("--head", default="", help="the revision measured (default: the working tree as it is)")
    p.add_argument("--planetoid", default=str(REPO.parent / "shared" / "data" / "planetoid"),
                   help="folder with the Planetoid Cora files (default: ../shared/data/planetoid)")
    p.add_argument("--work", default="", help="folder for stores and run directories (default: a temporary one)")
    p.add_argument("--cases", default="cora_gcn,cora_gat,cora_gcnii,minibatch",
                   help="comma-separated: cora_gcn, cora_gat, cora_gcnii, minibatch")
    p.add_argument("--nodes", type=int, default=200_000, help="nodes of the minibatch case's synthetic graph")
    p.add_argument("--cora-epochs", type=int, default=50, help="epochs of each Cora run")
    p.add_argument("--minibatch-epochs", type=int, default=1, help="epochs of each minibatch run")
    p.add_argument("--repeats", type=int, default=3, help="rounds of base, head runs")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS and torch threads of each run")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one training run may take")
    add_json_flag(p)
    return p.parse_args(argv)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def _env(tree: Path, threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads), "DGLBACKEND": "pytorch"}
    env.pop("STRATA_GRAPH_KERNELS", None)  # each revision's default kernels
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(tree: Path, threads: int, *argv: str, timeout: float) -> tuple[str, float, float]:
    """Run ``strata ARGV`` from ``tree``; (stdout, wall seconds, CPU seconds of the command)."""
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, "-m", "strata.launch.cli", *argv], cwd=tree, env=_env(tree, threads),
                          capture_output=True, text=True, timeout=timeout)
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"'strata {' '.join(argv)}' in {tree} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout, wall, cpu


def _stores(args: argparse.Namespace, base: Path, work: Path, cases: list[str]) -> dict[str, str]:
    stores = {}
    if any(case in CORA_CASES for case in cases):
        if (Path(args.planetoid) / "ind.cora.x").exists():
            stores["cora"] = str(work / "cora")
            if not Path(stores["cora"]).exists():
                _cli(base, args.threads, "ingest", "planetoid", args.planetoid, "--name", "cora", "--out", stores["cora"],
                     timeout=args.timeout)
        else:
            print(f"no Cora files in {args.planetoid}: the Cora cases are skipped", flush=True)
    if "minibatch" in cases:
        stores["synthetic"] = str(work / f"synthetic-{args.nodes}")
        if not Path(stores["synthetic"]).exists():
            print(f"writing a {args.nodes:,}-node synthetic store ...", flush=True)
            _cli(base, args.threads, "ingest", "synthetic", "--nodes", str(args.nodes), "--out", stores["synthetic"],
                 timeout=args.timeout)
    return stores


def _train(args: argparse.Namespace, tree: Path, case: str, stores: dict[str, str], run_dir: Path) -> dict[str, float]:
    where = ["--set", f"run_dir={run_dir}"]
    if case == "minibatch":
        config = run_dir.parent / f"{case}.yaml"
        config.write_text(MINIBATCH_CONFIG.format(store=stores["synthetic"], epochs=args.minibatch_epochs))
        argv = ["train", str(config), *where]
    else:
        argv = ["train", str(tree / "examples" / CORA_CASES[case]), *where, "--set", f"data.store={stores['cora']}",
                "--set", f"train.epochs={args.cora_epochs}", "--set", "train.patience=0"]
    stdout, wall, cpu = _cli(tree, args.threads, *argv, "--overwrite", "--json", "-q", timeout=args.timeout)
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"epoch_seconds": result["train_seconds"] / max(result["epochs"], 1), "cpu_seconds": cpu, "wall_seconds": wall,
            "test_acc": result["test_acc"], "epochs": result["epochs"]}


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """The best epoch seconds (and their median), the median of everything else."""
    out = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    out["epoch_seconds_median"] = out["epoch_seconds"]
    out["epoch_seconds"] = min(run["epoch_seconds"] for run in runs)
    return out


def _worktree(rev: str, into: Path) -> Path:
    _git("worktree", "add", "--detach", str(into), rev)
    return into


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = [case for case in cases if case not in (*CORA_CASES, "minibatch")]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}: choose from {', '.join((*CORA_CASES, 'minibatch'))}")
    with tempfile.TemporaryDirectory(prefix="strata-epoch-vs-commit-") as tmp:
        tmp_path = Path(tmp)
        work = Path(args.work) if args.work else tmp_path / "work"
        work.mkdir(parents=True, exist_ok=True)
        trees = {"base": _worktree(args.base, tmp_path / "base")}
        trees["head"] = _worktree(args.head, tmp_path / "head") if args.head else REPO
        revisions = {name: _git("-C", str(tree), "rev-parse", "--short", "HEAD") + ("" if name == "base" or args.head else "+worktree")
                     for name, tree in trees.items()}
        try:
            stores = _stores(args, trees["base"], work, cases)
            cases = [case for case in cases if case == "minibatch" or "cora" in stores]
            runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {case: [] for case in cases} for name in trees}
            for round_ in range(args.repeats):
                for case in cases:
                    for name, tree in trees.items():
                        figures = _train(args, tree, case, stores, work / "runs" / f"{case}-{name}")
                        runs[name][case].append(figures)
                        print(f"round {round_ + 1}/{args.repeats} {case} {name} ({revisions[name]}): "
                              f"{figures['epoch_seconds']:.4f} s/epoch, {figures['cpu_seconds']:.1f} s CPU, "
                              f"{figures['wall_seconds']:.1f} s wall, "
                              f"test acc {figures['test_acc']:.4f}", flush=True)
        finally:
            for tree in trees.values():
                if tree != REPO:
                    _git("worktree", "remove", "--force", str(tree))
    methods = {name: {case: _summary(case_runs) for case, case_runs in by_case.items()} for name, by_case in runs.items()}
    ratios = {}
    for case in cases:
        for figure in ("epoch", "cpu"):
            ratios[f"head_over_base_{figure}_{case}"] = ratio(methods["head"][case][f"{figure}_seconds"],
                                                             methods["base"][case][f"{figure}_seconds"])
    publish(args, "epoch_time_vs_commit", methods, ratios, {"revisions": revisions, "python": sys.executable})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
