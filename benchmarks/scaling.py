"""Epoch time and communication volume of distributed training at 1, 2 and 4 processes.

Writes a synthetic graph store, then runs `strata train` under torchrun for each process
count and executor (graph_parallel GCN on the whole graph, cut by METIS with 'strata
partition' into one part per process; minibatch GraphSAGE on sampled batches) and prints one markdown table: epoch time (rank 0's training steps, evaluation
excluded), its ratio to the 1-process run measured here, and the bytes each collective
moved, summed over ranks, per epoch. For graph_parallel it also prints the halo size and the
all_to_all volume predicted from it, which the measured bytes must equal. Bytes are exact;
times are indicative when the processes share fewer cores than there are processes.

    python benchmarks/scaling.py [--nodes 20000] [--procs 1 2 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--executors", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--workdir", default="")
    parser.add_argument("--port", type=int, default=29731)
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
    print("| executor | processes | epoch time (s) | vs 1 process | test acc | all_to_all / epoch | all_reduce / epoch | broadcast (setup) | halo nodes | all_to_all measured = predicted |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for executor in args.executors:
        baseline = None
        for i, procs in enumerate(args.procs):
            stored = partition(store, procs) if executor == "graph_parallel" and procs > 1 else ""
            r = _run(workdir, store, executor, procs, args.port + 10 * i + (100 if executor == "minibatch" else 0), stored)
            epoch = r["train_seconds"] / r["epochs"]
            baseline = baseline or epoch
            per_epoch = {op: b / r["epochs"] for op, b in r["comm_bytes"].items()}
            check = ""
            if stored:
                halo, predicted = predicted_all_to_all(store, stored, r)
                measured = r["comm_bytes"].get("all_to_all", 0)
                check = f" {halo:,} | {measured:,} {'=' if measured == predicted else '!='} {predicted:,} |"
            print(
                f"| {executor} | {procs} | {epoch:.3f} | {epoch / baseline:.2f}x | {r['test_acc']:.4f} | "
                f"{_mb(per_epoch.get('all_to_all', 0))} | {_mb(per_epoch.get('all_reduce', 0))} | "
                f"{_mb(r['comm_bytes'].get('broadcast', 0))} |" + (check or " | |"),
                flush=True,
            )


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB" if nbytes else "0"


if __name__ == "__main__":
    main()
