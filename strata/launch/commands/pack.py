"""`strata pack`: sample a run's mini-batches ahead of training and pack their features."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from strata.storage.featstore.writer import PackResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="sample mini-batches offline and pack their features for sequential reads",
        description="Run the neighbour sampler for every step of EPOCHS epochs ahead of training "
        "(the same batches training would sample for this seed), record each batch's blocks, and "
        "write its input features contiguously, batch after batch, reading the store's feature "
        "array in large sequential passes. Hot nodes go to a host cache instead. Interrupted? "
        "Run the same command again: finished groups are kept. Train on it with "
        "features.mode: packed (and the same fanouts, batch size, seed and epochs).",
    )
    p.add_argument("store", help="URL of the dataset store")
    p.add_argument("--fanouts", required=True, help="neighbours per layer, input layer first, e.g. 10,5 (-1 = all)")
    p.add_argument("--batch-size", type=int, required=True, help="seed nodes per mini-batch")
    p.add_argument("--epochs", type=int, required=True, help="epochs to sample (train.epochs of the run)")
    p.add_argument("--seed", type=int, default=0, help="train.seed of the run (default 0)")
    p.add_argument("--self-loops", action="store_true", help="the model adds self loops (GCN, GAT): sample over them too")
    p.add_argument("--partition", default="", help="pack only the training nodes of one part of this partition")
    p.add_argument("--part", type=int, default=-1, help="the part (with --partition)")
    p.add_argument(
        "--world-size", type=int, default=1,
        help="data-parallel training on this many ranks: pack each rank's share of the training nodes "
        "(the share the minibatch executor gives it), one pack per rank",
    )
    p.add_argument("--rank", type=int, default=-1, help="with --world-size: pack only this rank's share")
    p.add_argument("--out", default="", help="where to write the pack (default STORE/packs/<fingerprint>, where training looks)")
    p.add_argument(
        "--host-cache-bytes", type=parse_size, default=None, metavar="BYTES",
        help="host budget the hot set is sized for, e.g. 256MiB (default: features.host_cache_bytes' default)",
    )
    p.add_argument(
        "--group-size", type=int, default=32,
        help="steps packed per group; each group is one sequential pass over the feature array (memory: one group's rows)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a pack made with other settings")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_size(text: str) -> int:
    """Bytes from '268435456', '256MiB', '1GiB', '500MB' (an argparse type; the benchmarks use it too)."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    lowered = text.strip().lower()
    for unit, scale in units.items():
        if lowered.endswith(unit):
            number, factor = lowered[: -len(unit)].strip(), scale
            break
    else:
        number, factor = lowered, 1
    try:
        return int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (examples: 268435456, 256MiB, 1GiB)") from None


def _fanouts(text: str) -> list[int]:
    from strata.errors import ConfigError

    try:
        return [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(f"--fanouts must be comma-separated integers such as 10,5; got '{text}'") from None


def partition_train_ids(store_url: str, name: str, part: int) -> np.ndarray:
    """The training nodes owned by ``part`` of partition ``name``."""
    import numpy as np

    from strata.partitioners.format import open_partition
    from strata.storage.store import DatasetStore

    store = DatasetStore.open(store_url)
    assignment = open_partition(store, name).assignment()
    train = store.split("train")
    return train[np.asarray(assignment)[train] == part]


def run(args: argparse.Namespace) -> int:
    from strata.errors import ConfigError
    from strata.launch.progress import show_progress
    from strata.storage.featstore.config import FeaturesConfig
    from strata.storage.featstore.sampling import SamplerConfig
    from strata.storage.featstore.writer import Packer

    if bool(args.partition) != (args.part >= 0):
        raise ConfigError("--partition and --part go together: name the partition and the part to pack")
    if args.world_size < 1 or args.rank >= args.world_size:
        raise ConfigError(f"--rank must be below --world-size ({args.world_size}), got {args.rank}")
    if args.world_size > 1 and (args.partition or args.out):
        raise ConfigError("--world-size packs one share per rank into the default places; it does not combine with --partition or --out")
    sampler = SamplerConfig(_fanouts(args.fanouts), args.batch_size, args.seed, args.self_loops)
    budget = FeaturesConfig.host_cache_bytes if args.host_cache_bytes is None else args.host_cache_bytes
    if args.partition:
        shares = [partition_train_ids(args.store, args.partition, args.part)]
    elif args.world_size > 1:
        ranks = [args.rank] if args.rank >= 0 else list(range(args.world_size))
        shares = [rank_train_ids(args.store, rank, args.world_size, args.seed) for rank in ranks]
    else:
        shares = [None]
    for train_ids in shares:
        packer = Packer(
            args.store, sampler, args.epochs, args.out,
            train_ids=train_ids, partition=args.partition, part=args.part, host_cache_bytes=budget,
            group_size=args.group_size, overwrite=args.overwrite, progress=show_progress(args),
        )
        _print(packer.run(), bool(args.out))
    return 0


def rank_train_ids(store_url: str, rank: int, world_size: int, seed: int) -> np.ndarray:
    """The training nodes the minibatch executor gives ``rank`` of ``world_size``."""
    import torch

    from strata.runtime.gnn.executors.minibatch import balanced_share
    from strata.storage.store import DatasetStore

    train = torch.from_numpy(DatasetStore.open(store_url).split("train"))
    return balanced_share(train, rank, world_size, seed).numpy()


def _print(result: PackResult, explicit_out: bool) -> None:
    s, manifest = result.summary, result.manifest
    steps = manifest.steps_per_epoch * manifest.epochs
    print(f"pack     {result.url}")
    print(f"steps    {steps:,} ({manifest.epochs} epochs x {manifest.steps_per_epoch:,}), groups of {manifest.group_size}")
    print(f"hot      {s.hot_rows:,} nodes serve {s.hot_access_share:.1%} of row reads")
    print(f"packed   {s.packed_rows:,} rows of {s.total_input_rows:,} needed; {s.bytes_written / 2**20:,.1f} MiB written")
    print(
        f"time     sample {s.sample_seconds:.1f} s, pack {s.pack_seconds:.1f} s "
        f"({(s.sample_seconds + s.pack_seconds) / manifest.epochs:.1f} s per epoch served)"
    )
    if result.resumed_sampled or result.resumed_packed:
        print(f"resumed  {result.resumed_sampled} sampled and {result.resumed_packed} packed groups kept from an earlier run")
    where = f", pack_dir: {result.url}" if explicit_out else ""
    print(f"train with: features: {{mode: packed{where}}}  (same fanouts, batch size, seed and epochs)")
