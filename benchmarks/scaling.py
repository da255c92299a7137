"""Epoch time and communication volume of distributed training at 1, 2 and 4 processes.

Writes a synthetic graph store, then runs `strata train` under torchrun for each process
count and executor (graph_parallel GCN on the whole graph, cut by METIS with 'strata
partition' into one part per process; minibatch GraphSAGE on sampled batches) and prints one
markdown table: epoch time (rank 0's training steps, evaluation excluded), its ratio to the
run with the fewest processes measured here, and the bytes each collective moved, summed over
ranks, per epoch. For graph_parallel it also prints the halo size and the all_to_all volume
predicted from it, which the measured bytes must equal. Bytes are exact; times are indicative
when the processes share fewer cores than there are processes.

    python benchmarks/scaling.py [--nodes 20000] [--procs 1 2 4] [--workdir DIR] [--json OUT]

With ``--json`` it also writes each run's figures (``methods["<executor>_<P>p"]``) and the
named ratios ``<executor>_<P>p_over_<executor>_1p_epoch`` and, for graph_parallel,
``graph_parallel_<P>p_measured_over_predicted_all_to_all`` (1 when the bytes are exact); see
benchmarks/report.py. The smallest useful run, about a minute on 2 cores::

    python benchmarks/scaling.py --nodes 2000 --procs 1 2 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from report import add_json_flag, publish, ratio
from torchrun_job import run_training

JOB = """
name: {name}
data: {{store: {store}}}
model: {{name: {model}, hidden: {hidden}, num_layers: 2, dropout: 0.5}}
train: {{executor: {executor}, epochs: {epochs}, lr: 0.01, batch_size: 512, fanouts: [10, 10], seed: 0}}
checkpoint: {{every_steps: 0, keep: 1}}
"""

WORKLOADS = {
    "graph_parallel": dict(model="gcn", hidden=64, epochs=20),
    "minibatch": dict(model="sage", hidden=64, epochs=2),
}


def _run(workdir: Path, store: str, executor: str, procs: int, port: int, partition_name: str = "") -> dict:
    name = f"{executor}-{procs}"
    config = workdir / f"{name}.yaml"
    config.write_text(JOB.format(name=name, store=store, executor=executor, **WORKLOADS[executor]))
    return run_training(workdir, config, procs, port, [f"train.partition={partition_name}"] if partition_name else [])


def partition(store: str, procs: int) -> str:
    """Cut the store into ``procs`` parts with METIS (as 'strata partition' does); its name."""
    from strata.partitioners.build import partition_store
    from strata.partitioners.config import PartitionConfig

    cfg = PartitionConfig(method="metis", num_parts=procs, name=f"metis-{procs}", overwrite=True)
    partition_store(store, cfg)
    return cfg.partition_name


def predicted_all_to_all(store: str, name: str, result: dict) -> tuple[int, int]:
    """(halo nodes over all parts, all_to_all bytes of the run) for graph_parallel GCN.

    Setup exchanges the halo ids with their owners (int64) and fetches the input features'
    halo once (feat_dim wide); each training step exchanges the hidden-width input of every
    graph layer after the first, forward and backward; each evaluation (one per epoch, one
    at the end) forward only.
    """
    from strata.partitioners.format import open_partition
    from strata.storage.store import DatasetStore

    parts = open_partition(store, name)
    procs = parts.num_parts
    halo = sum(parts.part(k).halo_per_hop[0] for k in range(procs))
    hidden, layers, feat = WORKLOADS["graph_parallel"]["hidden"], 2, DatasetStore.open(store).meta.feat_dim
    per_exchange = halo * hidden * 4
    setup = procs * (procs - 1) * 8 + halo * 8 + halo * feat * 4
    steps, evaluations = result["steps"], result["epochs"] + 1
    return halo, setup + steps * (layers - 1) * 2 * per_exchange + evaluations * (layers - 1) * per_exchange


def measure(workdir: Path, store: str, executor: str, procs: int, port: int) -> dict:
    """One run's figures: epoch time, accuracy, bytes by op (per epoch, and the setup's
    broadcast); for graph_parallel on more than one process, the halo and the all_to_all bytes
    measured beside the prediction (``all_to_all_exact``)."""
    stored = partition(store, procs) if executor == "graph_parallel" and procs > 1 else ""
    r = _run(workdir, store, executor, procs, port, stored)
    figures = {
        "executor": executor,
        "processes": procs,
        "epoch_seconds": r["train_seconds"] / r["epochs"],
        "test_acc": r["test_acc"],
        "epochs": r["epochs"],
        "steps": r["steps"],
        "comm_bytes_per_epoch": {op: b / r["epochs"] for op, b in r["comm_bytes"].items()},
        "comm_bytes": r["comm_bytes"],
        "wall_seconds": r["wall_seconds"],
    }
    if stored:
        halo, predicted = predicted_all_to_all(store, stored, r)
        measured = r["comm_bytes"].get("all_to_all", 0)
        figures.update(halo_rows=halo, all_to_all_bytes=measured, all_to_all_predicted=predicted, all_to_all_exact=measured == predicted)
    return figures


def _row(f: dict, baseline: dict) -> str:
    per_epoch = f["comm_bytes_per_epoch"]
    check = " | |"
    if "all_to_all_predicted" in f:
        sign = "=" if f["all_to_all_exact"] else "!="
        check = f" {f['halo_rows']:,} | {f['all_to_all_bytes']:,} {sign} {f['all_to_all_predicted']:,} |"
    return (
        f"| {f['executor']} | {f['processes']} | {f['epoch_seconds']:.3f} | {f['epoch_seconds'] / baseline['epoch_seconds']:.2f}x | "
        f"{f['test_acc']:.4f} | {_mb(per_epoch.get('all_to_all', 0))} | {_mb(per_epoch.get('all_reduce', 0))} | "
        f"{_mb(f['comm_bytes'].get('broadcast', 0))} |" + check
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--executors", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--workdir", default="")
    parser.add_argument("--port", type=int, default=29731)
    add_json_flag(parser)
    args = parser.parse_args()
    os.environ.setdefault("DGLBACKEND", "pytorch")
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-scaling-"))
    store = str(workdir / "store")
    meta = write_synthetic(
        SyntheticGraphConfig(num_nodes=args.nodes, avg_degree=10, feat_dim=64, seed=0), store, "scaling", overwrite=True, progress=False
    )
    print(f"graph: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges, {meta.feat_dim} features; {os.cpu_count()} CPU cores")
    print()
    print("| executor | processes | epoch time (s) | vs 1 process | test acc | all_to_all / epoch | all_reduce / epoch "
          "| broadcast (setup) | halo nodes | all_to_all measured = predicted |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    methods, ratios = {}, {}
    for executor in args.executors:
        first = f"{executor}_{args.procs[0]}p"
        for i, procs in enumerate(args.procs):
            key = f"{executor}_{procs}p"
            port = args.port + 10 * i + (100 if executor == "minibatch" else 0)
            methods[key] = f = measure(workdir, store, executor, procs, port)
            print(_row(f, methods[first]), flush=True)
            if key != first:
                ratios[f"{key}_over_{first}_epoch"] = ratio(f["epoch_seconds"], methods[first]["epoch_seconds"])
            if "all_to_all_predicted" in f:
                ratios[f"{key}_measured_over_predicted_all_to_all"] = ratio(f["all_to_all_bytes"], f["all_to_all_predicted"])
    print()
    context = {"num_nodes": meta.num_nodes, "num_edges": meta.num_edges, "feat_dim": meta.feat_dim, "cpu_cores": os.cpu_count(),
               "workloads": WORKLOADS}
    publish(args, "scaling", methods, ratios, context)


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB" if nbytes else "0"


if __name__ == "__main__":
    main()
