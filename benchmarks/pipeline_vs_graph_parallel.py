"""Layer pipeline (GNNPipe) against graph parallelism on deep GCNII, 4 processes.

Writes a synthetic R-MAT store with a learnable label signal, cuts it with METIS into one
part per process (graph_parallel's best case), then runs `strata train` under torchrun for
each depth and executor and prints one markdown table: communication bytes per epoch from
the counters next to the analytic expectation, epoch time (median over epochs, from the
run's metrics log), test accuracy, and the ratios of graph_parallel to layer_pipeline.

Analytic volume per training epoch, all ranks together (float32):

- graph_parallel: every graph layer but the first exchanges the halo of its input forward
  and its gradient backward: 2 x (layers - 1) x sum of halo sizes x hidden x 4. GCNII's
  first graph layer reads hidden-wide input too, so here it is 2 x layers x halo x hidden x 4.
- layer_pipeline: each node crosses each of the stages - 1 boundaries once forward and once
  backward; GCNII carries its initial residual h0 with h: 2 x (stages - 1) x nodes x 2 hidden x 4.

Evaluation passes are forward only and are counted separately (one per epoch).

    python benchmarks/pipeline_vs_graph_parallel.py [--nodes 200000] [--layers 32 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from torchrun_job import run_training

JOB = """
name: {name}
data: {{store: {store}}}
model: {{name: gcnii, hidden: {hidden}, num_layers: {layers}, dropout: 0.0, alpha: 0.1, lambda_: 0.5}}
train: {{executor: {executor}, epochs: {epochs}, lr: 0.01, weight_decay: 0.0, seed: 0}}
pipeline: {{chunks: {chunks}, schedule: 1f1b, history: true, sync_every: 0}}
checkpoint: {{every_steps: 0, keep: 1}}
"""


def _run(workdir: Path, store: str, executor: str, args: argparse.Namespace, layers: int, port: int, extra: list[str]) -> dict:
    name = f"{executor}-{layers}"
    config = workdir / f"{name}.yaml"
    config.write_text(
        JOB.format(name=name, store=store, executor=executor, hidden=args.hidden, layers=layers, epochs=args.epochs, chunks=args.chunks)
    )
    result = run_training(workdir, config, args.procs, port, extra)
    events = [json.loads(line) for line in (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    stamps = [e["time"] for e in events if e["event"] in ("start", "epoch")]
    result["epoch_seconds"] = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--avg-degree", type=float, default=10.0)
    parser.add_argument("--layers", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()

    from strata.partitioners import PartitionConfig, open_partition, partition_store
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-pipe-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = str(workdir / "store")
    t0 = time.perf_counter()
    meta = write_synthetic(
        SyntheticGraphConfig(num_nodes=args.nodes, avg_degree=args.avg_degree, kind="rmat", num_classes=8, feat_dim=64, seed=0),
        store, overwrite=True, progress=False,
    )
    cut = PartitionConfig(method="metis", num_parts=args.procs, name=f"metis-{args.procs}", overwrite=True)
    partition_store(store, cut)
    parts = open_partition(store, cut.partition_name)
    halo = sum(parts.part(k).halo_per_hop[0] for k in range(args.procs))
    print(f"graph: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges; METIS {args.procs} parts: "
          f"sum of halos {halo:,} ({halo / meta.num_nodes:.2f} x nodes); setup {time.perf_counter() - t0:.0f}s\n")

    rows = ["| layers | executor | comm bytes/epoch (measured) | analytic (training) | epoch time | test acc |",
            "| --- | --- | --- | --- | --- | --- |"]
    ratios = []
    port = 29600
    for layers in args.layers:
        gp = _run(workdir, store, "graph_parallel", args, layers, port, [f"train.partition={cut.partition_name}"])
        lp = _run(workdir, store, "layer_pipeline", args, layers, port + 1, [])
        port += 2
        expected = {
            "graph_parallel": 2 * layers * halo * args.hidden * 4,
            "layer_pipeline": 2 * (args.procs - 1) * meta.num_nodes * 2 * args.hidden * 4,
        }
        for name, r in (("graph_parallel", gp), ("layer_pipeline", lp)):
            per_epoch = sum(r["comm_bytes"].get(op, 0) for op in ("all_to_all", "send")) / r["epochs"]
            rows.append(
                f"| {layers} | {name} | {per_epoch / 1e6:,.1f} MB | {expected[name] / 1e6:,.1f} MB | "
                f"{r['epoch_seconds']:.1f} s | {r['test_acc']:.4f} |"
            )
        gp_bytes = sum(gp["comm_bytes"].get(op, 0) for op in ("all_to_all", "send"))
        lp_bytes = sum(lp["comm_bytes"].get(op, 0) for op in ("all_to_all", "send"))
        ratios.append(f"{layers} layers: bytes graph_parallel/layer_pipeline {gp_bytes / lp_bytes:.2f}x, "
                      f"epoch time {gp['epoch_seconds'] / lp['epoch_seconds']:.2f}x, "
                      f"accuracy {gp['test_acc']:.4f} vs {lp['test_acc']:.4f}")
    rows.append("| - | hybrid (2x2) | not implemented yet | | | |")
    print("\n".join(rows))
    print()
    print("\n".join(ratios))
    print("\nMeasured bytes include evaluation passes (forward only, one per epoch and one at the end).")


if __name__ == "__main__":
    main()
