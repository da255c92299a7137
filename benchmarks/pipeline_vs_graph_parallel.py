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

    python benchmarks/pipeline_vs_graph_parallel.py [--nodes 200000] [--layers 32 64] [--epochs 4] [--json OUT]

With ``--json`` it also writes each run's figures (``methods["<config>_<layers>"]``: bytes per
epoch beside the analytic count, times, losses, scores) and the named ratios
(``graph_parallel_over_layer_pipeline_bytes_64``, ``layer_pipeline_measured_over_analytic_bytes_64``,
...; see benchmarks/report.py). The smallest useful run, a minute on 2 cores::

    python benchmarks/pipeline_vs_graph_parallel.py --nodes 2000 --layers 4 --epochs 2 --chunks 2 --hidden 8

On the emulated cluster (root; ``strata.testing.cluster``), ``--hosts N`` runs each executor
with one rank per host, torchrun ``--nnodes N`` with a c10d rendezvous on host0, and
``--link RATE ...`` sweeps the hosts' link rates (tc's units: ``unshaped 1gbit 100mbit``); every
figure and ratio then carries the rate in its name (``graph_parallel_over_layer_pipeline_epoch_64_1gbit``)::

    python benchmarks/pipeline_vs_graph_parallel.py --hosts 4 --link unshaped 10mbit --nodes 5000 --layers 8

How a link here maps to a real cluster: bytes on the wire cost real time at the shaped rate,
but compute here is CPU compute on cores the hosts share, about two orders of magnitude slower
than a GPU's. What decides the executors' order is the ratio of wire time to compute time per
epoch, so a link R here stands for a link R x (compute seconds here / compute seconds on the
modelled GPU) there. The benchmark therefore prints, for every run, the compute it measured
(CPU seconds per epoch per rank) beside the wire time its bytes need at the rate
(bytes per rank / rate), and their ratio; measure the GPU's compute for the same epoch to
place a rate on a real cluster rather than assume the factor.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from report import add_json_flag, publish, ratio
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
    """One configuration on this rank: build the executor as a job does, train ``epochs``
    steps through the loop's ``train_step``, reading the Comm counters around each; rank 0
    writes the figures summed over ranks to ``spec["out"]``."""
    import functools

    import torch

    from strata.models.config import ModelConfig
    from strata.models.gnn import build_gnn
    from strata.runtime.config import DataConfig
    from strata.runtime.dist.comm import Comm
    from strata.runtime.dist.process_group import process_group
    from strata.runtime.dist.topology import topology_from_env
    from strata.runtime.gnn.config import PipelineConfig, TrainConfig
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.executors.base import BuildContext
    from strata.runtime.gnn.registry import build_executor
    from strata.runtime.loop import train_step
    from strata.storage.store import DatasetStore

    torch.set_num_threads(1)
    topology = topology_from_env(os.environ)
    executor_name, stages = CONFIGS[spec["config"]]
    with process_group(topology, timeout_seconds=1800):
        torch.manual_seed(0)
        data_cfg = DataConfig(store=spec["store"])
        meta = DatasetStore.open(spec["store"]).meta
        model_cfg = ModelConfig(name="gcnii", hidden=spec["hidden"], num_layers=spec["layers"], dropout=0.0, alpha=0.1, lambda_=0.5)
        model = build_gnn(model_cfg, meta.feat_dim, meta.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"])
        comm = Comm(topology.rank, topology.world_size)
        train = TrainConfig(executor=executor_name, partition=spec["partition"] if executor_name == "graph_parallel" else "", seed=0)
        pipeline = PipelineConfig(stages=stages, chunks=spec["chunks"], schedule="1f1b", history=True, sync_every=0)
        started = time.perf_counter()
        # graph_parallel reads only its part of the store and never calls load_data; the
        # pipelines hold the whole graph.
        executor = build_executor(BuildContext(
            train=train, pipeline=pipeline, features=None, data_cfg=data_cfg, model=model, optimizer=optimizer, comm=comm,
            device="cpu", load_data=functools.cache(lambda: load_node_data(data_cfg, self_loops=model.self_loops)),
        ))
        setup_seconds = time.perf_counter() - started

        epoch_bytes, epoch_seconds, comm_seconds, cpu_seconds, losses = [], [], [], [], []
        for epoch in range(spec["epochs"]):
            for batch in executor.epoch(epoch, 0):
                before, waited = comm.bytes_by_op(), _seconds(comm)
                t0, cpu0 = time.perf_counter(), time.process_time()
                step = train_step(executor, [batch], comm=comm)
                epoch_seconds.append(time.perf_counter() - t0)
                cpu_seconds.append(time.process_time() - cpu0)
                epoch_bytes.append(_delta(comm.bytes_by_op(), before))
                comm_seconds.append(_seconds(comm) - waited)
                losses.append(step.loss)
        executor.close()
        before = comm.bytes_by_op()
        t0 = time.perf_counter()
        scores = executor.evaluate()
        eval_seconds = time.perf_counter() - t0
        eval_bytes = _delta(comm.bytes_by_op(), before)
        # Halo rows of the cut the executor uses: graph_parallel's 4 parts, the hybrid's G parts
        # (counted on stage 0's ranks only: every stage holds the same cut; graph_parallel has
        # no stages).
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
                "num_nodes": meta.num_nodes,
            }
            Path(spec["out"]).write_text(json.dumps(result))


def _launch(spec: dict, procs: int, port: int, workdir: Path, cluster: object | None = None) -> dict:
    """One configuration on ``procs`` local processes, or on one rank per host of ``cluster``."""
    stem = f"{spec['config']}-{spec['layers']}-{spec.get('link', 'local')}"
    spec_path = workdir / f"{stem}.json"
    spec["out"] = str(workdir / f"{stem}.result.json")
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    what = f"{spec['config']} at {spec['layers']} layers"
    if cluster is None:
        run_worker(__file__, spec_path, procs, port, workdir, what)
    else:
        _run_on_hosts(cluster, spec_path, port, workdir, f"{what}, links {spec['link']}")
    result = json.loads(Path(spec["out"]).read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _run_on_hosts(cluster, spec: Path, port: int, workdir: Path, what: str) -> None:
    """``--worker SPEC`` under torchrun on every host of the emulated ``cluster``, one rank each,
    c10d rendezvous on host0; on failure, exits naming ``what`` with each host's stderr."""
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(cluster.hosts)), "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{cluster.host(0).name}:{port}", "--rdzv-id", f"bench-{port}",
        str(Path(__file__).resolve()), "--worker", str(spec),
    ]
    env = {"OMP_NUM_THREADS": "1", "DGLBACKEND": "pytorch"}
    procs = [cluster.popen(h.index, command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for h in cluster.hosts]
    errors = [proc.communicate()[1] for proc in procs]
    failed = [f"{h.name} ({proc.returncode}):\n{err[-2000:]}" for h, proc, err in zip(cluster.hosts, procs, errors) if proc.returncode]
    if failed:
        raise SystemExit(f"{what} failed on " + "\n".join(failed))


# -- the driver -----------------------------------------------------------------------------

PROCS, HYBRID_STAGES, FLOAT_BYTES = 4, 2, 4


def _activation(bytes_by_op: dict[str, float]) -> int:
    return int(bytes_by_op.get("send", 0.0) + bytes_by_op.get("all_to_all", 0.0))


def analytic_bytes(config: str, layers: int, hidden: int, num_nodes: int, halo_rows: int, procs: int = PROCS) -> int:
    """Activation bytes per training epoch, all ranks together, by the formulas of the module
    docstring (``halo_rows``: the sum of halos of the cut the run used)."""
    per_row = hidden * FLOAT_BYTES
    if config == "graph_parallel":
        return 2 * layers * halo_rows * per_row
    if config == "layer_pipeline":
        return 2 * (procs - 1) * num_nodes * per_row
    return 2 * (HYBRID_STAGES - 1) * num_nodes * per_row + 2 * layers * halo_rows * per_row


def figures(r: dict, hidden: int, timed: int, procs: int = PROCS, link_bits: int | None = None) -> dict:
    """A run's figures, as the table and the JSON report them: the counters' training bytes of
    every epoch beside the analytic count (``bytes_exact``: equal in every epoch), medians of
    the last ``timed`` epochs' times."""
    per_epoch = [_activation(e) for e in r["epoch_bytes"]]
    analytic = analytic_bytes(r["config"], r["layers"], hidden, r["num_nodes"], r["halo_rows"], procs)
    compute = statistics.median(r["cpu_seconds"][-timed:]) / procs
    # A rank's share of the epoch's bytes, at the link rate: the wire time the network adds at least.
    wire = statistics.mean(per_epoch) / procs * 8 / link_bits if link_bits else 0.0
    return {
        "link_bits_per_second": link_bits,
        "compute_seconds_per_rank": compute,
        "wire_seconds_per_rank": wire,
        "wire_over_compute": wire / compute if compute else None,
        "executor": r["config"],
        "layers": r["layers"],
        "training_bytes": statistics.mean(per_epoch),
        "analytic_bytes": analytic,
        "bytes_exact": all(b == analytic for b in per_epoch),
        "training_bytes_per_epoch": per_epoch,
        "bytes_by_op_per_epoch": [{op: int(b) for op, b in e.items()} for e in r["epoch_bytes"]],
        "all_reduce_bytes": statistics.mean(e["all_reduce"] for e in r["epoch_bytes"]),
        "eval_bytes": _activation(r["eval_bytes"]),
        "halo_rows": r["halo_rows"],
        "epoch_seconds": statistics.median(r["epoch_seconds"][-timed:]),
        "comm_seconds": statistics.median(r["comm_seconds"][-timed:]),
        "cpu_seconds": statistics.median(r["cpu_seconds"][-timed:]),
        "epoch_seconds_all": r["epoch_seconds"],
        "setup_seconds": r["setup_seconds"],
        "eval_seconds": r["eval_seconds"],
        "wall_seconds": r["wall_seconds"],
        "losses": r["losses"],
        "test_acc": r["scores"].get("test_acc", float("nan")),
        "scores": r["scores"],
    }


def ratios_at(layers: int, runs: dict[str, dict], suffix: str = "") -> dict[str, float | None]:
    """The named ratios at one depth: each run's measured over analytic bytes (1 when the
    counters match the formula), and graph_parallel over each pipeline in bytes, measured and
    analytic, epoch time and CPU work. ``suffix``: the link rate on the emulated cluster."""
    out = {f"{name}_measured_over_analytic_bytes_{layers}{suffix}": ratio(f["training_bytes"], f["analytic_bytes"])
           for name, f in runs.items()}
    gp = runs.get("graph_parallel")
    for name in ("layer_pipeline", "hybrid"):
        other = runs.get(name)
        if gp is None or other is None:
            continue
        for figure, key in (("bytes", "training_bytes"), ("bytes_analytic", "analytic_bytes"), ("epoch", "epoch_seconds"),
                            ("cpu", "cpu_seconds")):
            out[f"graph_parallel_over_{name}_{figure}_{layers}{suffix}"] = ratio(gp[key], other[key])
    return out


def _label(name: str, procs: int) -> str:
    return {"graph_parallel": f"graph_parallel ({procs} parts)", "layer_pipeline": f"layer_pipeline ({procs} stages)",
            "hybrid": f"hybrid ({HYBRID_STAGES}x{procs // HYBRID_STAGES})"}[name]


def _row(f: dict, procs: int, link: str) -> str:
    wire = f"{f['wire_seconds_per_rank']:.2f} s / {f['compute_seconds_per_rank']:.2f} s" if f["link_bits_per_second"] else "-"
    return (
        f"| {f['layers']} | {link} | {_label(f['executor'], procs)} | {f['training_bytes'] / 1e6:,.1f} MB | "
        f"{f['analytic_bytes'] / 1e6:,.1f} MB | {f['training_bytes'] / f['analytic_bytes']:.4f} | {f['all_reduce_bytes'] / 1e6:,.2f} MB | "
        f"{f['eval_bytes'] / 1e6:,.1f} MB | {f['epoch_seconds']:.2f} s | {f['comm_seconds']:.2f} s | {f['cpu_seconds']:.2f} s | "
        f"{wire} | {f['test_acc']:.4f} |"
    )


def _comparison(layers: int, gp: dict, other: dict, cores: int, link: str) -> str:
    return (
        f"{layers} layers, links {link}, graph_parallel / {other['executor']}: bytes {gp['training_bytes'] / other['training_bytes']:.2f}x "
        f"measured ({gp['analytic_bytes'] / other['analytic_bytes']:.2f}x analytic), "
        f"epoch time {gp['epoch_seconds'] / other['epoch_seconds']:.2f}x, "
        f"CPU work {gp['cpu_seconds'] / other['cpu_seconds']:.2f}x (on {cores} cores an epoch takes at least CPU seconds / {cores}: "
        f"{gp['cpu_seconds'] / cores:.2f} s vs {other['cpu_seconds'] / cores:.2f} s), "
        f"test accuracy {gp['test_acc']:.4f} vs {other['test_acc']:.4f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--avg-degree", type=float, default=10.0)
    parser.add_argument("--layers", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="training epochs; epoch time is the median of the last 3")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--hosts", type=int, default=0,
                        help="run each executor with one rank per host on an emulated cluster of this many hosts (root; "
                        "strata.testing.cluster) instead of 4 processes on this host")
    parser.add_argument("--link", nargs="+", default=["unshaped"], metavar="RATE",
                        help="with --hosts: the hosts' link rates to sweep, in tc's units (unshaped 10gbit 1gbit 300mbit)")
    parser.add_argument("--subnet", default="10.77.0.0/24", help="with --hosts: the emulated hosts' network")
    parser.add_argument("--cluster-prefix", default="stc", help="with --hosts: first letters of the cluster's namespaces")
    parser.add_argument("--workdir", default="", help="where the store, its METIS cut and the runs' files go; reused when "
                        "it already holds the same graph and cut")
    add_json_flag(parser)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hosts and (args.hosts < 2 or ("hybrid" in args.configs and args.hosts % HYBRID_STAGES)):
        parser.error(f"--hosts must be at least 2, and a multiple of {HYBRID_STAGES} for the hybrid (or drop it from --configs)")
    return args


def _graph(args: argparse.Namespace, workdir: Path, procs: int) -> tuple[str, object, str, int]:
    """The synthetic R-MAT store and its METIS cut into ``procs`` parts: (store, meta, partition, sum of halos)."""
    from strata.partitioners.build import partition_store
    from strata.partitioners.config import PartitionConfig
    from strata.partitioners.format import open_partition
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic
    from strata.storage.store import DatasetStore

    store = str(workdir / "store")
    t0 = time.perf_counter()
    graph = SyntheticGraphConfig(num_nodes=args.nodes, avg_degree=args.avg_degree, kind="rmat", num_classes=8, feat_dim=64, seed=0)
    cut = PartitionConfig(method="metis", num_parts=procs, name=f"metis-{procs}", overwrite=True)
    # A --workdir that already holds this graph and cut (recorded in graph.json) is reused.
    stamp, wanted = workdir / "graph.json", {"graph": dataclasses.asdict(graph), "cut": dataclasses.asdict(cut)}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        meta = DatasetStore.open(store).meta
    else:
        stamp.unlink(missing_ok=True)
        meta = write_synthetic(graph, store, overwrite=True, progress=False)
        partition_store(store, cut)
        stamp.write_text(json.dumps(wanted))
    parts = open_partition(store, cut.partition_name)
    halo = sum(parts.part(k).halo_per_hop[0] for k in range(procs))
    print(f"graph: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges; METIS {procs} parts: sum of halos {halo:,} "
          f"({halo / meta.num_nodes:.2f} x nodes); setup {time.perf_counter() - t0:.0f}s", flush=True)
    return store, meta, cut.partition_name, halo


def _emulated_cluster(args: argparse.Namespace, stack: contextlib.ExitStack) -> object | None:
    if not args.hosts:
        return None
    from strata.testing.cluster import Cluster, ClusterConfig

    cluster = stack.enter_context(Cluster(ClusterConfig(hosts=args.hosts, subnet=args.subnet, prefix=args.cluster_prefix)))
    print(f"emulated cluster: {args.hosts} hosts, one rank each; links swept over {', '.join(args.link)}", flush=True)
    return cluster


def _say(f: dict, name: str, link: str) -> None:
    per_epoch = f["training_bytes_per_epoch"]
    wire = (f", wire {f['wire_seconds_per_rank']:.2f} s per rank at {link} against {f['compute_seconds_per_rank']:.2f} CPU s per rank "
            f"(wire/compute {f['wire_over_compute']:.2f})") if f["link_bits_per_second"] else ""
    print(f"  {f['layers']} layers, links {link}, {name}: {f['training_bytes'] / 1e6:,.1f} MB/epoch (analytic "
          f"{f['analytic_bytes'] / 1e6:,.1f}, every epoch equal to it: {'yes' if f['bytes_exact'] else 'NO'}, epochs differ by "
          f"{(max(per_epoch) - min(per_epoch)) / max(f['training_bytes'], 1):.1%}), epoch {f['epoch_seconds']:.2f} s of which "
          f"{f['comm_seconds']:.2f} s in comm ops (mean over ranks, waiting included), {f['cpu_seconds']:.2f} CPU seconds "
          f"(all ranks){wire}, setup {f['setup_seconds']:.0f} s, losses {', '.join(f'{x:.3f}' for x in f['losses'])}, "
          f"wall {f['wall_seconds']:.0f} s", flush=True)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return
    from strata.testing.netns import parse_rate

    procs = args.hosts or PROCS
    links = args.link if args.hosts else ["local"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-pipe-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store, meta, partition, halo = _graph(args, workdir, procs)
    timed = max(1, min(3, args.epochs - 1))
    rows = [
        "| layers | links | executor | training bytes/epoch (counters) | analytic | measured/analytic | all-reduce/epoch (gradients, loss) "
        "| eval bytes/pass | epoch time (median of last 3) | of which in comm ops | CPU seconds/epoch, all ranks "
        "| wire / compute per rank | test acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    comparisons, methods, ratios = [], {}, {}
    port = 29600 + os.getpid() % 1000
    cores = min(procs, len(os.sched_getaffinity(0)))
    with contextlib.ExitStack() as stack:
        cluster = _emulated_cluster(args, stack)
        for link in links:
            suffix = f"_{link}" if cluster is not None else ""
            if cluster is not None:
                for host in cluster.hosts:
                    cluster.set_rate(host.index, link)
            for layers in args.layers:
                runs = {}
                for name in args.configs:
                    spec = {"config": name, "store": store, "partition": partition, "layers": layers, "hidden": args.hidden,
                            "epochs": args.epochs, "chunks": args.chunks, "lr": args.lr, "link": link}
                    bits = parse_rate(link) if cluster is not None else None
                    runs[name] = f = figures(_launch(spec, procs, port, workdir, cluster), args.hidden, timed, procs, bits)
                    methods[f"{name}_{layers}{suffix}"] = f
                    port += 1
                    rows.append(_row(f, procs, link))
                    _say(f, name, link)
                ratios.update(ratios_at(layers, runs, suffix))
                comparisons += [_comparison(layers, runs["graph_parallel"], runs[name], cores, link)
                                for name in ("layer_pipeline", "hybrid") if "graph_parallel" in runs and name in runs]
    print()
    print("\n".join(rows))
    print()
    print("\n".join(comparisons))
    print(f"\n{GNNPIPE}")
    print(f"Epoch time: median of the last {timed} of {args.epochs} training steps on rank 0 (the first epoch is the pipelines' "
          "synchronous pass and everyone's first touch of memory); evaluation and setup not included. In comm ops: seconds inside "
          "send/recv/all_to_all/all_reduce per epoch, mean over ranks, waiting for peers included. CPU seconds: "
          "process time of the training step summed over ranks (blocked waits cost none): the work an epoch needs, whatever the cores. "
          "Wire / compute (emulated cluster): a rank's share of the epoch's bytes at the link rate, against its CPU seconds.")
    context = {"num_nodes": meta.num_nodes, "num_edges": meta.num_edges, "processes": procs, "cores": cores,
               f"metis_{procs}_halo_rows": halo, "timed_epochs": timed, "gnnpipe_paper": GNNPIPE,
               "hosts": args.hosts, "links": links}
    publish(args, "pipeline_vs_graph_parallel", methods, ratios, context)


if __name__ == "__main__":
    main()
