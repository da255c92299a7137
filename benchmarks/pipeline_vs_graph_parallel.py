"""Layer pipeline (GNNPipe) and its hybrid against graph parallelism on deep GCNII, 4 processes.

Writes a synthetic R-MAT store with a learnable label signal, cuts it with METIS into one
part per process (graph_parallel's best case), then, for each depth, runs under torchrun:

- graph_parallel on the 4 METIS parts,
- layer_pipeline with 4 stages (one per process),
- hybrid 2 x 2: 2 pipeline stages, each graph-parallel over 2 ranks (a METIS 2-part cut).

Each run trains ``--epochs`` epochs (the pipelines: history on, one synchronous pass, then
chunked passes) and evaluates once at the end. Bytes come from the ranks' Comm counters,
read around every training step and around the evaluation separately, summed over ranks, so
the training column is comparable to the analytic one. It prints one markdown table and the
ratios against graph_parallel.

Analytic activation traffic per training epoch, all ranks together (float32, h = hidden,
L = GCNII layers, N = nodes, H_P = sum of the halo sizes of a P-part cut):

- graph_parallel: every graph layer exchanges its input's halo forward and its gradient
  backward (GCNII's first graph layer reads hidden-wide input too): 2 x L x H_4 x h x 4.
- layer_pipeline: each node's h crosses each of the stages - 1 boundaries once forward and
  once backward (every stage recomputes GCNII's initial residual h0 from the features):
  2 x (4 - 1) x N x h x 4.
- hybrid S x G: the boundaries of S stages, plus the graph-parallel halo of a G-part cut at
  every layer: 2 x (S - 1) x N x h x 4 + 2 x L x H_G x h x 4.

Gradient all-reduce (graph_parallel: the whole model; hybrid: each stage's layers over its
G ranks; the pipelines: also the replicated input layer over all ranks) is reported in its own
column: it does not grow with the graph.

    python benchmarks/pipeline_vs_graph_parallel.py [--nodes 200000] [--layers 32 64] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from torchrun_job import run_worker

OPS = ("send", "all_to_all", "all_reduce", "broadcast", "all_gather")
CONFIGS = {
    # name: (train.executor, pipeline stages)
    "graph_parallel": ("graph_parallel", 0),
    "layer_pipeline": ("layer_pipeline", 0),
    "hybrid": ("layer_pipeline", 2),
}
GNNPIPE = "GNNPipe (paper): comm volume 8.7x less on average, up to 22.9x; epoch time 1.58x shorter on average, up to 2.45x"


# -- one run, on every rank under torchrun ----------------------------------------------------


def _seconds(comm: object) -> float:
    """Seconds this rank spent inside comm ops so far (moving data and waiting for peers)."""
    return sum(t.seconds for t in comm.totals.values())  # type: ignore[attr-defined]


def _delta(after: dict[str, int], before: dict[str, int]) -> list[float]:
    return [float(after.get(op, 0) - before.get(op, 0)) for op in OPS]


def worker(spec: dict) -> None:
    import torch

    from strata.models.config import ModelConfig
    from strata.models.gnn import build_gnn
    from strata.runtime.config import DataConfig
    from strata.runtime.dist.comm import Comm
    from strata.runtime.dist.process_group import process_group
    from strata.runtime.dist.topology import topology_from_env
    from strata.runtime.gnn.config import PipelineConfig, TrainConfig
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.trainer import build_executor

    torch.set_num_threads(1)
    topology = topology_from_env(os.environ)
    executor_name, stages = CONFIGS[spec["config"]]
    with process_group(topology, timeout_seconds=1800):
        torch.manual_seed(0)
        data_cfg = DataConfig(store=spec["store"])
        model_cfg = ModelConfig(name="gcnii", hidden=spec["hidden"], num_layers=spec["layers"], dropout=0.0, alpha=0.1, lambda_=0.5)
        data = load_node_data(data_cfg, self_loops=True)
        model = build_gnn(model_cfg, data.feat.shape[1], data.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"])
        comm = Comm(topology.rank, topology.world_size)
        train = TrainConfig(executor=executor_name, partition=spec["partition"] if executor_name == "graph_parallel" else "", seed=0)
        pipeline = PipelineConfig(stages=stages, chunks=spec["chunks"], schedule="1f1b", history=True, sync_every=0)
        started = time.perf_counter()
        executor = build_executor(train, model, data, data_cfg, comm, topology, pipeline=pipeline)
        setup_seconds = time.perf_counter() - started

        epoch_bytes, epoch_seconds, comm_seconds, cpu_seconds, losses = [], [], [], [], []
        for epoch in range(spec["epochs"]):
            for batch in executor.epoch(epoch, 0):
                before, waited = comm.bytes_by_op(), _seconds(comm)
                t0, cpu0 = time.perf_counter(), time.process_time()
                step = executor.train_step(batch, optimizer)
                epoch_seconds.append(time.perf_counter() - t0)
                cpu_seconds.append(time.process_time() - cpu0)
                epoch_bytes.append(_delta(comm.bytes_by_op(), before))
                comm_seconds.append(_seconds(comm) - waited)
                losses.append(step.loss)
        before = comm.bytes_by_op()
        t0 = time.perf_counter()
        scores = executor.evaluate()
        eval_seconds = time.perf_counter() - t0
        eval_bytes = _delta(comm.bytes_by_op(), before)
        # Halo rows of the cut the executor uses: graph_parallel's 4 parts, the hybrid's G parts
        # (counted on stage 0's ranks only: every stage holds the same cut).
        stage = getattr(executor, "stage", 0)
        halo = float(executor.halo_rows()) if stage == 0 else 0.0
        flat = [x for row in epoch_bytes for x in row] + eval_bytes + [halo] + comm_seconds + cpu_seconds
        totals = comm.sum_floats(flat)
        epochs = len(epoch_seconds)
        cpu_total = totals[len(flat) - epochs :]
        comm_mean = [t / topology.world_size for t in totals[len(flat) - 2 * epochs : len(flat) - epochs]]
        totals = totals[: len(flat) - 2 * epochs]
        if topology.rank == 0:
            n = len(OPS)
            result = {
                "config": spec["config"],
                "layers": spec["layers"],
                "epoch_bytes": [dict(zip(OPS, totals[i * n : (i + 1) * n])) for i in range(len(epoch_bytes))],
                "eval_bytes": dict(zip(OPS, totals[len(epoch_bytes) * n : (len(epoch_bytes) + 1) * n])),
                "halo_rows": int(totals[-1]),
                "epoch_seconds": epoch_seconds,
                "comm_seconds": comm_mean,
                "cpu_seconds": cpu_total,
                "eval_seconds": eval_seconds,
                "setup_seconds": setup_seconds,
                "losses": losses,
                "scores": scores,
                "num_nodes": int(data.feat.shape[0]),
            }
            Path(spec["out"]).write_text(json.dumps(result))


def _launch(spec: dict, procs: int, port: int, workdir: Path) -> dict:
    spec_path = workdir / f"{spec['config']}-{spec['layers']}.json"
    spec["out"] = str(workdir / f"{spec['config']}-{spec['layers']}.result.json")
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    run_worker(__file__, spec_path, procs, port, workdir, f"{spec['config']} at {spec['layers']} layers")
    result = json.loads(Path(spec["out"]).read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


# -- the driver -----------------------------------------------------------------------------


def _activation(bytes_by_op: dict[str, float]) -> float:
    return bytes_by_op.get("send", 0.0) + bytes_by_op.get("all_to_all", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--avg-degree", type=float, default=10.0)
    parser.add_argument("--layers", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="training epochs; epoch time is the median of the last 3")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--workdir", default="")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return

    from strata.partitioners.build import partition_store
    from strata.partitioners.config import PartitionConfig
    from strata.partitioners.format import open_partition
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    procs, stages_hybrid = 4, 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-pipe-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = str(workdir / "store")
    t0 = time.perf_counter()
    meta = write_synthetic(
        SyntheticGraphConfig(num_nodes=args.nodes, avg_degree=args.avg_degree, kind="rmat", num_classes=8, feat_dim=64, seed=0),
        store, overwrite=True, progress=False,
    )
    cut = PartitionConfig(method="metis", num_parts=procs, name=f"metis-{procs}", overwrite=True)
    partition_store(store, cut)
    parts = open_partition(store, cut.partition_name)
    halo4 = sum(parts.part(k).halo_per_hop[0] for k in range(procs))
    print(f"graph: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges; METIS {procs} parts: sum of halos {halo4:,} "
          f"({halo4 / meta.num_nodes:.2f} x nodes); setup {time.perf_counter() - t0:.0f}s", flush=True)

    h, n, b = args.hidden, meta.num_nodes, 4
    timed = max(1, min(3, args.epochs - 1))
    rows = [
        "| layers | executor | training bytes/epoch (counters) | analytic | measured/analytic | grad all-reduce/epoch "
        "| eval bytes/pass | epoch time (median of last 3) | of which in comm ops | CPU seconds/epoch, all ranks | test acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    port = 29600 + os.getpid() % 1000
    cores = min(procs, len(os.sched_getaffinity(0)))
    for layers in args.layers:
        results = {}
        for name in args.configs:
            spec = {"config": name, "store": store, "partition": cut.partition_name, "layers": layers, "hidden": h,
                    "epochs": args.epochs, "chunks": args.chunks, "lr": args.lr}
            results[name] = r = _launch(spec, procs, port, workdir)
            port += 1
            if name == "graph_parallel":
                r["analytic"] = 2 * layers * r["halo_rows"] * h * b
            elif name == "layer_pipeline":
                r["analytic"] = 2 * (procs - 1) * n * h * b
            else:
                r["analytic"] = 2 * (stages_hybrid - 1) * n * h * b + 2 * layers * r["halo_rows"] * h * b
            per_epoch = [_activation(e) for e in r["epoch_bytes"]]
            r["measured"] = statistics.mean(per_epoch)
            r["spread"] = (max(per_epoch) - min(per_epoch)) / r["measured"] if r["measured"] else 0.0
            r["time"] = statistics.median(r["epoch_seconds"][-timed:])
            r["in_comm"] = statistics.median(r["comm_seconds"][-timed:])
            r["cpu"] = statistics.median(r["cpu_seconds"][-timed:])
            label = "hybrid (2x2)" if name == "hybrid" else name + (" (4 parts)" if name == "graph_parallel" else " (4 stages)")
            rows.append(
                f"| {layers} | {label} | {r['measured'] / 1e6:,.1f} MB | {r['analytic'] / 1e6:,.1f} MB | "
                f"{r['measured'] / r['analytic']:.4f} | {statistics.mean(e['all_reduce'] for e in r['epoch_bytes']) / 1e6:,.2f} MB | "
                f"{_activation(r['eval_bytes']) / 1e6:,.1f} MB | {r['time']:.2f} s | {r['in_comm']:.2f} s | {r['cpu']:.2f} s | {r['scores'].get('test_acc', float('nan')):.4f} |"
            )
            print(f"  {layers} layers, {name}: {r['measured'] / 1e6:,.1f} MB/epoch (analytic {r['analytic'] / 1e6:,.1f}, "
                  f"epochs differ by {r['spread']:.1%}), epoch {r['time']:.2f} s of which {r['in_comm']:.2f} s in comm ops "
                  f"(mean over ranks, waiting included), {r['cpu']:.2f} CPU seconds (all ranks), setup {r['setup_seconds']:.0f} s, "
                  f"losses {', '.join(f'{x:.3f}' for x in r['losses'])}, wall {r['wall_seconds']:.0f} s", flush=True)
        gp = results.get("graph_parallel")
        for name in ("layer_pipeline", "hybrid"):
            other = results.get(name)
            if gp is None or other is None:
                continue
            ratios.append(
                f"{layers} layers, graph_parallel / {name}: bytes {gp['measured'] / other['measured']:.2f}x measured "
                f"({gp['analytic'] / other['analytic']:.2f}x analytic), epoch time {gp['time'] / other['time']:.2f}x, "
                f"CPU work {gp['cpu'] / other['cpu']:.2f}x (on {cores} cores an epoch takes at least CPU seconds / {cores}: "
                f"{gp['cpu'] / cores:.2f} s vs {other['cpu'] / cores:.2f} s), "
                f"test accuracy {gp['scores']['test_acc']:.4f} vs {other['scores']['test_acc']:.4f}"
            )
    print()
    print("\n".join(rows))
    print()
    print("\n".join(ratios))
    print(f"\n{GNNPIPE}")
    print(f"Epoch time: median of the last {timed} of {args.epochs} training steps on rank 0 (the first epoch is the pipelines' "
          "synchronous pass and everyone's first touch of memory); evaluation and setup not included. In comm ops: seconds inside "
          "send/recv/all_to_all/all_reduce per epoch, mean over ranks, waiting for peers included. CPU seconds: "
          "process time of the training step summed over ranks (blocked waits cost none): the work an epoch needs, whatever the cores.")


if __name__ == "__main__":
    main()
