"""`strata train`: train from a YAML job config."""

from __future__ import annotations

import argparse
import json
import posixpath

from strata.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train the model a YAML job config describes. The config is validated before "
        "anything runs: an unknown key or a bad value is an error naming the key. Runs as one process, "
        "or as every process of a job started by torchrun (e.g. 'torchrun --nproc-per-node 4 -m "
        "strata.launch.cli train CONFIG'), srun or a Kubernetes Job; a torchrun restart resumes from the "
        "newest complete checkpoint. See README.md (Config reference) and examples/.",
    )
    p.add_argument("config", help="path or URL of the YAML job config")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint, if any")
    p.add_argument(
        "--overwrite", action="store_true",
        help="start over in a run directory that holds another run's checkpoints, deleting them "
        "(without it such a directory is refused: nothing of the earlier run is lost by accident)",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.seed=3 (repeatable)",
    )
    p.add_argument(
        "--nproc-per-node", type=int, default=0, metavar="N",
        help="start N training processes on this machine (as 'torchrun --standalone --nproc-per-node N' would, "
        "with strata's output only); default: this process, alone or as one of a job torchrun, srun or "
        "Kubernetes started",
    )
    p.add_argument("--json", action="store_true", help="print the final result as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=run)


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line each process of ``--nproc-per-node`` runs: this one without that option."""
    argv = ["-v"] if getattr(args, "verbose", False) else []
    argv += ["train", args.config, *(["--resume"] if args.resume else []), *(["--overwrite"] if args.overwrite else [])]
    for item in args.overrides:
        argv += ["--set", item]
    return argv + (["--json"] if args.json else []) + (["-q"] if args.quiet else [])


def run(args: argparse.Namespace) -> int:
    import os

    if args.nproc_per_node < 0:
        raise ConfigError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.nproc_per_node > 1:
        from strata.launch.job import load_job
        from strata.launch.local import run_local

        load_job(args.config, args.overrides)  # a bad config fails here, once, before any process starts
        return run_local(worker_argv(args), args.nproc_per_node)
    import torch

    from strata.launch.job import load_job
    from strata.runtime.dist.topology import topology_from_env

    job = load_job(args.config, args.overrides)
    topology = topology_from_env(os.environ, cuda_devices=torch.cuda.device_count(), backend=job.distributed.backend)
    made = _missing_folders(job.run_dir)
    try:
        return _run_job(job, topology, args)
    except BaseException:
        if topology.is_main:
            _remove_if_empty(made)
        raise


def _missing_folders(url: str) -> list[str]:
    """``url`` and those of its parents that do not exist yet, deepest first."""
    from strata.storage import fs

    missing = []
    while url and not fs.exists(url):
        missing.append(url)
        parent = posixpath.dirname(url.rstrip("/"))
        scheme, _, rest = parent.rpartition("://")
        if parent in ("", url) or (scheme and "/" not in rest):  # never a bucket or a URL's root
            break
        url = parent
    return missing


def _remove_if_empty(folders: list[str]) -> None:
    """Remove the folders a failed training made that hold no file: each only when it is empty
    (empty folders beneath it go first), deepest first; anything holding a file stays."""
    from strata.storage import fs

    for url in folders:
        filesystem, path = fs.get_fs(url)
        try:
            if not filesystem.exists(path):
                continue
            if filesystem.find(path):
                return
            below = [p for p in filesystem.find(path, withdirs=True) if p.rstrip("/") != path.rstrip("/")]
            for folder in [*sorted(below, key=len, reverse=True), path]:
                filesystem.rmdir(folder)
        except OSError:
            return


def _run_job(job, topology, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from strata.launch.progress import show_progress
    from strata.runtime.dist.process_group import process_group
    from strata.runtime.gnn.trainer import train_node_classifier
    from strata.storage.locks import ReaderLock

    if job.task == "diffusion":
        return _run_diffusion(job, topology, args)
    # Registered as a reader of its store for the whole run: `ingest --overwrite` of it is refused meanwhile.
    with ReaderLock(job.data.store), process_group(topology, timeout_seconds=job.distributed.timeout_seconds):
        result = train_node_classifier(
            job.data, job.model, job.train, job.checkpoint, job.metrics,
            run_dir=job.run_dir, resume=args.resume, progress=show_progress(args), topology=topology,
            features=job.features, pipeline=job.pipeline, overwrite=args.overwrite,
        )
    if not topology.is_main:
        return 0
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"done: {result.epochs} epochs, {result.steps} steps; best epoch {result.best_epoch}; "
            f"val acc {result.val_acc:.4f}; test acc {result.test_acc:.4f}; "
            f"{result.samples_per_second:,.0f} samples/s"
        )
        print(f"checkpoints: {result.checkpoint_dir}\nmetrics log: {result.metrics_log}")
    return 0


def _run_diffusion(job, topology, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from strata.launch.progress import show_progress
    from strata.runtime.diffusion.trainer import train_diffusion
    from strata.runtime.dist.process_group import process_group

    if job.diffusion.executor == "experts":
        return _run_experts(job, topology, args)
    with process_group(topology, timeout_seconds=job.distributed.timeout_seconds):
        result = train_diffusion(
            job.data, job.diffusion_model, job.noise, job.diffusion, job.checkpoint, job.metrics,
            run_dir=job.run_dir, resume=args.resume, progress=show_progress(args), topology=topology,
            overwrite=args.overwrite,
        )
    if not topology.is_main:
        return 0
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(
            f"done: {result.steps} steps; final loss {result.final_loss:.4f}; {result.images_per_second:,.0f} images/s "
            f"({result.executor}, {result.world_size} processes)"
        )
        print(f"samples: {result.samples}\ncheckpoints: {result.checkpoint_dir}\nmetrics log: {result.metrics_log}")
    return 0


def _run_experts(job, topology, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from strata.launch.progress import show_progress
    from strata.runtime.diffusion.experts import train_experts
    from strata.runtime.dist.process_group import process_group

    with process_group(topology, timeout_seconds=job.distributed.timeout_seconds):
        result = train_experts(
            job.data, job.diffusion_model, job.noise, job.diffusion, job.experts, job.checkpoint, job.metrics,
            run_dir=job.run_dir, resume=args.resume, progress=show_progress(args), topology=topology,
        )
    if not topology.is_main:
        return 0
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    trained = [e for e in result.experts if e.trained]
    print(f"clusters of {result.num_experts} experts: sizes {result.cluster_sizes} ({result.clusters})")
    for e in trained:
        print(f"expert {e.expert}: {e.images} images, {e.steps} steps, final loss {e.final_loss:.4f}, ranks {e.ranks}")
    if result.router is not None:
        r = result.router
        print(f"router: {r.steps} steps, final loss {r.final_loss:.4f}; cluster accuracy {r.accuracy_small_t:.3f} at t < 50, "
              f"{r.accuracy_all_t:.3f} over all t")
    between = "none" if not result.expert_comm_bytes else ", ".join(f"{op} {n:,}" for op, n in result.expert_comm_bytes.items())
    print(f"bytes sent while experts trained (inside groups only): {between}")
    print(f"manifest: {result.manifest}\nmetrics log: {result.metrics_log}")
    return 0
