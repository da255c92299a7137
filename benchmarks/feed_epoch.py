"""One minibatch epoch fed through the tiered feature store to the training device, against
the same epoch on the path before the device feed (used by gpu_check.py; runs alone too).

* fed:   features ``cached`` with a device tier on the GPU (the hottest rows by in-degree,
         resident there), the rest assembled on background threads in pinned host memory;
         :class:`strata.runtime.gnn.device_feed.DeviceFeed` copies batch i+1 on a side stream
         while batch i trains (H2D overlap: share of copy time hidden behind compute)
* plain: the same store and batches (run before and after fed, the better run kept), features assembled on the host, each batch copied to
         the device (a blocking copy) when it is trained

Both train GraphSAGE from the same initial weights on the same batches; the loss of each
step is compared (``max_loss_diff``). On a machine without CUDA both run on the CPU, where the
feed passes batches through: the figures then show the path works, not what a GPU gains.

    python benchmarks/feed_epoch.py --nodes 20000 --store /tmp/feed_syn --json feed_epoch.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from report import add_json_flag, publish, ratio


@dataclass
class EpochSpec:
    nodes: int
    feat_dim: int
    batch_size: int
    store: str
    fanouts: tuple[int, ...] = (10, 10)
    train_fraction: float = 0.05
    hidden: int = 128
    host_cache_bytes: int = 1 << 30
    device_cache_share: float = 0.25
    """Share of the feature rows the device tier holds (on CUDA)."""
    prefetch: int = 4
    workers: int = 4


def ensure_store(spec: EpochSpec) -> float:
    """Write the synthetic R-MAT store unless it is there; seconds spent writing."""
    from strata.storage.ingest.synthetic import SyntheticGraphConfig, write_synthetic

    if (Path(spec.store) / "zarr.json").exists():
        return 0.0
    t0 = time.perf_counter()
    cfg = SyntheticGraphConfig(num_nodes=spec.nodes, avg_degree=10, feat_dim=spec.feat_dim, kind="rmat",
                               train_fraction=spec.train_fraction, valid_fraction=0.01)
    write_synthetic(cfg, spec.store, overwrite=True, progress=False)
    return time.perf_counter() - t0


def one_epoch(spec: EpochSpec, device: Any, fed: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from strata.models.config import ModelConfig
    from strata.models.gnn import build_gnn
    from strata.runtime.config import DataConfig
    from strata.runtime.gnn.batches import FeatureOptions, make_batches
    from strata.runtime.gnn.config import TrainConfig
    from strata.runtime.gnn.data import load_node_data
    from strata.runtime.gnn.device_feed import DeviceFeed
    from strata.storage.featstore.config import FeaturesConfig

    data = load_node_data(DataConfig(store=spec.store), self_loops=False, load_features=False)
    row_bytes = spec.feat_dim * 4
    on_gpu = device.type == "cuda"
    device_bytes = int(spec.nodes * spec.device_cache_share) * row_bytes if (fed and on_gpu) else 0
    features = FeaturesConfig(mode="cached", host_cache_bytes=spec.host_cache_bytes, device_cache_bytes=device_bytes,
                              prefetch=spec.prefetch, workers=spec.workers)
    cfg = TrainConfig(mode="minibatch", executor="minibatch", fanouts=list(spec.fanouts), batch_size=spec.batch_size, seed=0)
    options = FeatureOptions(features, spec.store, device=device if fed else None)
    source = make_batches(data, cfg, len(spec.fanouts), options)
    torch.manual_seed(0)
    model = build_gnn(ModelConfig(name="sage", hidden=spec.hidden, num_layers=len(spec.fanouts), dropout=0.0),
                      spec.feat_dim, data.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    feed = DeviceFeed(device)
    batches = feed(source.epoch(0, 0)) if fed else source.epoch(0, 0)
    losses, samples = [], 0
    t0 = time.perf_counter()
    for batch in batches:
        graphs = [b.to(device) for b in batch.graphs]
        logits = model(graphs, batch.x.to(device))
        loss = F.cross_entropy(logits[batch.seeds.to(device)], batch.y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        samples += len(batch.seeds)
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stats = feed.summary().as_dict() if fed else {}
    hits = source.counters.cache_hits()
    source.close()
    return {"epoch_seconds": seconds, "samples": samples, "steps": len(losses), "samples_per_second": samples / seconds,
            "cache_hits": hits, "losses": [float(v) for v in losses], **stats}


def compare_epochs(spec: EpochSpec) -> dict[str, Any]:
    """Both epochs' figures, the store's writing time, and how far apart their losses are."""
    import torch

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    write_seconds = ensure_store(spec)
    # plain, fed, plain: the first run pays the warm-up (page cache, CUDA context, kernels' first
    # calls); the plain figure is the better of its two runs.
    first = one_epoch(spec, device, fed=False)
    fed = one_epoch(spec, device, fed=True)
    plain = min(first, one_epoch(spec, device, fed=False), key=lambda run: run["epoch_seconds"])
    diff = max((abs(a - b) for a, b in zip(fed.pop("losses"), plain.pop("losses"))), default=0.0)
    if device.type != "cuda":
        fed["h2d_overlap"] = None  # nothing is copied on the CPU
    return {"device": str(device), "spec": asdict(spec), "store_write_seconds": write_seconds,
            "fed": fed, "plain": plain, "max_loss_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2_000_000)
    p.add_argument("--feat-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--store", required=True, help="where the synthetic store is (written when absent)")
    add_json_flag(p)
    args = p.parse_args()
    result = compare_epochs(EpochSpec(args.nodes, args.feat_dim, args.batch_size, args.store))
    print(json.dumps(result, indent=1))
    ratios = {"plain_over_fed_epoch_seconds": ratio(result["plain"]["epoch_seconds"], result["fed"]["epoch_seconds"])}
    context = {key: result[key] for key in ("device", "store_write_seconds", "max_loss_diff")}
    publish(args, "feed_epoch", {"plain": result["plain"], "fed": result["fed"]}, ratios, context)


if __name__ == "__main__":
    main()
