"""`strata quickstart`: the main job on its embedded default, a generated graph.

Generates a synthetic block-model graph (20k nodes, class-correlated features), writes it as a
store, trains GraphSAGE on sampled mini-batches, data parallel over 2 local processes started
by `strata train --nproc-per-node` (``--nproc 1``: in this process), and reports accuracy,
throughput and where everything went. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from strata.errors import StrataError
from strata.storage import fs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="generate a synthetic graph and train GraphSAGE on it on 2 local processes (the embedded default job)",
        description="Generate a synthetic graph with a learnable label signal, ingest it into a "
        "dataset store, train GraphSAGE on neighbour-sampled mini-batches on 2 local processes "
        "(torchrun's agent, gloo; --nproc 1 for one) and print accuracy, throughput and where the store, "
        "job config, checkpoints and metrics went.",
    )
    p.add_argument("--workdir", default="", help="where to put the store and run (default: a new temp dir)")
    p.add_argument("--nodes", type=int, default=20_000, help="nodes of the generated graph (default 20000)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--nproc", type=int, default=2, help="local training processes (default 2; 1 trains in this process)")
    p.add_argument("--seed", type=int, default=0, help="seed of the graph and the training run (default 0)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (+ rank) (default off)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _job(store: str, run_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """The job config of the quickstart, as `strata train` reads it."""
    return {
        "name": "quickstart",
        "run_dir": run_dir,
        "data": {"store": store},
        "model": {"name": "sage", "hidden": 64, "num_layers": 2, "dropout": 0.5},
        "train": {
            "executor": "minibatch", "epochs": args.epochs, "lr": 0.005, "weight_decay": 0.0,
            "batch_size": 512, "fanouts": [10, 10], "seed": args.seed,
        },
        "checkpoint": {"every_steps": 50},
        "metrics": {"port": args.metrics_port, "job": "quickstart"},
    }


def _train_here(job_url: str, progress: bool) -> dict[str, Any]:
    from dataclasses import asdict

    from strata.launch.job import load_job
    from strata.runtime.gnn.trainer import train_node_classifier

    job = load_job(job_url)
    result = train_node_classifier(
        job.data, job.model, job.train, job.checkpoint, job.metrics, run_dir=job.run_dir, progress=progress,
        overwrite=True,  # the quickstart starts over each time, as it regenerates its store
    )
    return asdict(result)


def _train_processes(job_url: str, nproc: int, quiet: bool) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "strata.launch.cli", "train", job_url, "--nproc-per-node", str(nproc), "--json", "--overwrite",
        *(["-q"] if quiet else []),
    ]
    print(f"training on {nproc} processes: strata train {job_url} --nproc-per-node {nproc}")
    env = {**os.environ, "DGLBACKEND": "pytorch"}
    # Progress and errors go straight to the terminal; rank 0's result comes back on stdout.
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    results = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not results:
        raise StrataError(f"training on {nproc} processes failed (exit {proc.returncode}); its errors are above")
    return json.loads(results[-1])


def run(args: argparse.Namespace) -> int:
    import yaml

    from strata.launch.progress import show_progress
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    if args.nproc < 1:
        raise StrataError(f"--nproc must be at least 1, got {args.nproc}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="strata-quickstart-")
    store = fs.join(workdir, "store")
    progress = show_progress(args)
    t0 = time.perf_counter()
    graph_cfg = SyntheticGraphConfig(num_nodes=args.nodes, seed=args.seed)
    meta = write_synthetic(graph_cfg, store, "quickstart", overwrite=True, progress=progress)
    print(f"graph: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges, {meta.num_classes} classes "
          f"({time.perf_counter() - t0:.1f}s) -> {store}")

    job_url = fs.join(workdir, "job.yaml")
    fs.write_text(job_url, yaml.safe_dump(_job(store, fs.join(workdir, "run"), args), sort_keys=False))
    if args.nproc == 1:
        result = _train_here(job_url, progress)
    else:
        result = _train_processes(job_url, args.nproc, quiet=args.quiet)
    on = f" on {result['world_size']} processes" if result["world_size"] > 1 else ""
    print(f"GraphSAGE: test accuracy {result['test_acc']:.4f} (validation {result['val_acc']:.4f}, best epoch {result['best_epoch']})")
    print(f"throughput: {result['samples_per_second']:,.0f} training nodes/s over {result['steps']} steps{on}")
    print(f"store:       {store}")
    print(f"job config:  {job_url} (train it again with 'strata train {job_url} --overwrite', or go on with --resume)")
    print(f"checkpoints: {result['checkpoint_dir']}")
    ports = ""
    if args.metrics_port:
        ports = " and " + ", ".join(f"http://localhost:{args.metrics_port + r}/metrics" for r in range(args.nproc)) + " while training"
    print(f"metrics:     {result['metrics_log']}{ports}")
    return 0
