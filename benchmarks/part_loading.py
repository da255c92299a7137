"""Memory and time for a graph_parallel rank to get its data: its part of the store against the
whole data set.

Writes a synthetic store, cuts it with METIS into one part per process ('strata partition'),
then, under torchrun, has every rank build what GraphParallelExecutor needs in two ways:

- share (strata): ``load_part``, which reads the owned nodes' feature rows chunk-run by
  chunk-run, labels and splits, and counts degrees over the edges in bounded chunks;
- whole (the baseline, what every rank did before): ``load_node_data`` (the whole graph as a
  DGL graph and the whole feature matrix), then the stored part and ``part_data_in_memory``.

Each way runs as its own torchrun job, so each rank's peak resident memory (ru_maxrss, above
what the process held after its imports) belongs to that way alone. It prints per-rank peaks,
seconds, and the ratios whole / share.

    python benchmarks/part_loading.py [--nodes 500000] [--feat-dim 256] [--procs 4] [--json OUT]

With ``--json`` it also writes both ways' per-rank figures (``methods["share"]``,
``methods["whole"]``) and the ratios ``whole_over_share_peak_memory`` (largest rank peak) and
``whole_over_share_seconds`` (median rank); see benchmarks/report.py. The smallest useful run,
half a minute on 2 cores::

    python benchmarks/part_loading.py --nodes 5000 --feat-dim 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from report import add_json_flag, publish, ratio
from torchrun_job import run_worker


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> None:
    import torch

    from strata.runtime.config import DataConfig
    from strata.runtime.dist.comm import Comm
    from strata.runtime.dist.process_group import process_group
    from strata.runtime.dist.topology import topology_from_env
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.part_data import load_part, part_data_in_memory

    torch.set_num_threads(1)
    topology = topology_from_env(os.environ)
    with process_group(topology, timeout_seconds=1800):
        comm = Comm(topology.rank, topology.world_size)
        data_cfg = DataConfig(store=spec["store"])
        before = _peak_mb()
        started = time.perf_counter()
        if spec["way"] == "share":
            part, share = load_part(data_cfg, spec["partition"], comm, self_loops=True)
        else:
            from strata.partitioners.format import open_partition
            from strata.runtime.gnn.executors.partition import from_stored_part

            data = load_node_data(data_cfg, self_loops=True)
            parts = open_partition(spec["store"], spec["partition"])
            part = from_stored_part(parts.part(comm.rank), parts.assignment(), comm, self_loops=True)
            share = part_data_in_memory(data, part)
        seconds = time.perf_counter() - started
        result = {
            "rank": topology.rank,
            "peak_mb": _peak_mb() - before,
            "seconds": seconds,
            "owned": part.num_owned,
            "halo": part.num_halo,
            "feature_mb": share.feat.numel() * share.feat.element_size() / 2**20,
        }
        Path(spec["out"]).joinpath(f"{spec['way']}-{topology.rank}.json").write_text(json.dumps(result))


def _launch(spec: dict, procs: int, port: int, workdir: Path) -> list[dict]:
    spec_path = workdir / f"{spec['way']}.json"
    spec_path.write_text(json.dumps(spec))
    run_worker(__file__, spec_path, procs, port, workdir, spec["way"])
    return [json.loads((workdir / f"{spec['way']}-{rank}.json").read_text()) for rank in range(procs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500_000)
    parser.add_argument("--avg-degree", type=float, default=10.0)
    parser.add_argument("--feat-dim", type=int, default=256)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--workdir", default="")
    add_json_flag(parser)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return

    from strata.partitioners.build import partition_store
    from strata.partitioners.config import PartitionConfig
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-part-loading-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = str(workdir / "store")
    t0 = time.perf_counter()
    meta = write_synthetic(
        SyntheticGraphConfig(num_nodes=args.nodes, avg_degree=args.avg_degree, kind="rmat", num_classes=8, feat_dim=args.feat_dim, seed=0),
        store, overwrite=True, progress=False,
    )
    cut = PartitionConfig(method="metis", num_parts=args.procs, name=f"metis-{args.procs}", overwrite=True)
    partition_store(store, cut)
    feature_mb = meta.num_nodes * meta.feat_dim * 4 / 2**20
    print(f"store: {meta.num_nodes:,} nodes, {meta.num_edges:,} edges, {meta.feat_dim} features ({feature_mb:,.0f} MiB); "
          f"METIS {args.procs} parts; setup {time.perf_counter() - t0:.0f} s", flush=True)

    port = 29700 + os.getpid() % 1000
    results = {}
    for i, way in enumerate(("share", "whole")):
        spec = {"way": way, "store": store, "partition": cut.partition_name, "out": str(workdir)}
        results[way] = _launch(spec, args.procs, port + i, workdir)

    print()
    print("| rank | owned | halo | its features | peak memory, share | peak memory, whole | whole / share "
          "| seconds, share | seconds, whole |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for share, whole in zip(results["share"], results["whole"]):
        times = ratio(whole["peak_mb"], share["peak_mb"])  # None where a tiny share did not raise the peak
        print(f"| {share['rank']} | {share['owned']:,} | {share['halo']:,} | {share['feature_mb']:,.0f} MiB | "
              f"{share['peak_mb']:,.0f} MiB | {whole['peak_mb']:,.0f} MiB | {'-' if times is None else f'{times:.2f}x'} | "
              f"{share['seconds']:.1f} s | {whole['seconds']:.1f} s |")
    methods = {way: {"largest_peak_mb": max(r["peak_mb"] for r in ranks), "median_seconds": statistics.median(r["seconds"] for r in ranks),
                     "ranks": ranks}
               for way, ranks in results.items()}
    share, whole = methods["share"], methods["whole"]
    print(f"\nlargest rank peak: whole {whole['largest_peak_mb']:,.0f} MiB / share {share['largest_peak_mb']:,.0f} MiB; "
          f"median seconds: whole {whole['median_seconds']:.1f} / share {share['median_seconds']:.1f}")
    print("Peak memory: each rank's ru_maxrss above what it held after its imports, one torchrun job per way.")
    ratios = {
        "whole_over_share_peak_memory": ratio(whole["largest_peak_mb"], share["largest_peak_mb"]),
        "whole_over_share_seconds": ratio(whole["median_seconds"], share["median_seconds"]),
    }
    context = {"num_nodes": meta.num_nodes, "num_edges": meta.num_edges, "feat_dim": meta.feat_dim, "feature_mb": feature_mb,
               "partition": cut.partition_name}
    publish(args, "part_loading", methods, ratios, context)


if __name__ == "__main__":
    main()
