"""Decentralized experts against one model at equal training compute, on scikit-learn's digits.

Both sides use the same DiT and the same batch size; the monolith takes S optimizer steps
on the whole set, each of the k experts S / k steps on its cluster, so both train on
S x batch images through the same network (equal training FLOPs). The router is extra
compute on the experts' side; its training time is printed beside theirs.

Each side then draws ``--num-per-class`` samples per class (DDIM, classifier-free
guidance) from its EMA weights with the same noise seed, and is measured with the store's
reference classifier: the share of samples classified as the class they were asked for,
and the Frechet distance in its features to the store's images (a "digits FID"; lower is
better). The experts are sampled top-1 (the DDM paper's best) and weighted, with the
default router that is also told the class asked for, p(cluster | x_t, t, y), and top-1 with a
second router trained on (x_t, t) alone.

    python benchmarks/diffusion_experts.py [--steps 3000] [--experts 4] [--workdir DIR] [--json OUT]

One process, one CPU thread; ~15 minutes at the defaults on a busy 2-core machine.

With ``--json`` it also writes each model's figures (``methods``: ``monolith``,
``experts_top1``, ``experts_weighted``, ``experts_top1_router_xt_only``), the clusters and
routers under ``context``, and the ratios ``<experts variant>_over_monolith_fid``,
``<experts variant>_over_monolith_match`` and ``experts_over_monolith_train_seconds``; see
benchmarks/report.py. The smallest run that exercises every part, a minute on 2 cores (its
figures mean nothing)::

    python benchmarks/diffusion_experts.py --steps 40 --experts 2 --router-steps 10 --hidden 16 --depth 1 \\
        --num-per-class 2 --sample-steps 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from report import add_json_flag, publish, ratio


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="monolith steps; each expert trains steps / experts")
    p.add_argument("--experts", type=int, default=4, help="k")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64, help="DiT width")
    p.add_argument("--depth", type=int, default=4, help="DiT blocks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--router-steps", type=int, default=500)
    p.add_argument("--num-per-class", type=int, default=100, help="samples per class for the quality measures")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="", help="where the store and runs go (default: a temporary folder)")
    add_json_flag(p)
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.steps % args.experts:
        raise SystemExit(f"--steps {args.steps} must be a multiple of --experts {args.experts} for equal compute")
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import torch

    # One thread: on a shared CPU, torch's spinning threads cost far more than they give, and
    # both sides run under the same setting.
    torch.set_num_threads(1)

    from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
    from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
    from strata.runtime.diffusion.config import DiffusionTrainConfig, ExpertsConfig
    from strata.runtime.diffusion.experts import (
        ExpertPaths,
        read_clusters,
        train_experts,
    )
    from strata.runtime.diffusion.generate import SampleConfig, sample
    from strata.runtime.diffusion.image_data import load_image_data
    from strata.runtime.diffusion.model_loading import read_manifest, write_manifest
    from strata.runtime.diffusion.router_training import train_router
    from strata.runtime.diffusion.trainer import train_diffusion
    from strata.runtime.dist.comm import Comm
    from strata.runtime.metrics import TrainingMetrics
    from strata.storage import fs
    from strata.storage.ingest.images import ingest_digits

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-experts-bench-"))
    store = str(workdir / "digits")
    if not (workdir / "digits").exists():
        ingest_digits(store)
    model = DiffusionModelConfig(arch="dit", image_size=8, channels=1, num_classes=10, hidden=args.hidden, depth=args.depth,
                                 heads=4, patch_size=2)
    noise = NoiseConfig(schedule="cosine", timesteps=1000, prediction="eps")
    train = DiffusionTrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=100, ema_decay=0.999, label_dropout=0.1,
        seed=args.seed, log_every=0, sample_per_class=4, sample_steps=20, guidance_scale=args.guidance,
    )
    data, ckpt, metrics = DataConfig(store=store), CheckpointConfig(keep=1), MetricsConfig()
    print(f"DiT hidden {args.hidden} depth {args.depth}, batch {args.batch_size}: monolith {args.steps} steps, "
          f"{args.experts} experts x {args.steps // args.experts} steps ({args.steps * args.batch_size:,} images each side)")

    started = time.perf_counter()
    mono = train_diffusion(data, model, noise, train, ckpt, metrics, run_dir=str(workdir / "monolith"), progress=False)
    mono_seconds = time.perf_counter() - started
    print(f"monolith: final loss {mono.final_loss:.4f}, {mono_seconds:.0f} s")

    started = time.perf_counter()
    expert_train = DiffusionTrainConfig(**{**asdict(train), "steps": args.steps // args.experts, "executor": "experts"})
    experts_cfg = ExpertsConfig(num_experts=args.experts, router_steps=args.router_steps, router_batch_size=256)
    experts = train_experts(data, model, noise, expert_train, experts_cfg, ckpt, metrics, run_dir=str(workdir / "experts"),
                            progress=False)
    experts_seconds = time.perf_counter() - started
    router = experts.router
    expert_train_seconds = sum(e.train_seconds for e in experts.experts)
    print(f"experts: cluster sizes {experts.cluster_sizes}; final losses "
          f"{[round(e.final_loss, 4) for e in experts.experts]}; {expert_train_seconds:.0f} s in expert steps, "
          f"router {router.train_seconds:.0f} s ({router.steps} steps of 256), {experts_seconds:.0f} s in all")
    print(f"router cluster accuracy: {router.accuracy_small_t:.3f} at t < 50, {router.accuracy_all_t:.3f} over all t "
          f"(null label); {router.accuracy_all_t_given_class:.3f} over all t told the class")

    # The same experts behind a router that sees only (x_t, t), as a second manifest of the set.
    started = time.perf_counter()
    paths = ExpertPaths.of(str(workdir / "experts"), ckpt)
    clusters, _ = read_clusters(paths.clusters)
    plain = replace(experts_cfg, router_labels=False)
    metrics_sink = TrainingMetrics(metrics, rank=0, local_rank=0, executor="bench", jsonl_url=None)
    plain_router = train_router(
        load_image_data(store), torch.from_numpy(clusters), noise, plain, seed=args.seed,
        root=fs.join(paths.root, "router-xt-only"), keep=1, every_steps=0, comm=Comm(0, 1), metrics=metrics_sink,
        device="cpu", resume=False, log_every=0,
    )
    metrics_sink.close()
    manifest = read_manifest(paths.manifest)
    plain_manifest = fs.join(paths.root, "manifest-xt-only-router.json")
    write_manifest(plain_manifest, replace(manifest, router="router-xt-only", router_num_classes=0))
    print(f"router on (x_t, t) only: cluster accuracy {plain_router.accuracy_small_t:.3f} at t < 50, "
          f"{plain_router.accuracy_all_t:.3f} over all t ({time.perf_counter() - started:.0f} s)")

    cfg = SampleConfig(num_per_class=args.num_per_class, guidance=args.guidance, steps=args.sample_steps, seed=args.seed)
    methods = {
        "monolith": {"final_loss": mono.final_loss, "train_seconds": mono.train_seconds, "wall_seconds": mono_seconds,
                     "steps": args.steps},
        "experts_top1": {"final_losses": [e.final_loss for e in experts.experts], "train_seconds": expert_train_seconds,
                         "router_seconds": router.train_seconds, "seconds_in_all": experts_seconds,
                         "steps_each": args.steps // args.experts},
        "experts_weighted": {},
        "experts_top1_router_xt_only": {"router_accuracy_small_t": plain_router.accuracy_small_t,
                                        "router_accuracy_all_t": plain_router.accuracy_all_t},
    }
    for name, path, mixture in (
        ("monolith", str(workdir / "monolith"), "top1"),
        ("experts_top1", str(workdir / "experts"), "top1"),
        ("experts_weighted", str(workdir / "experts"), "weighted"),
        ("experts_top1_router_xt_only", plain_manifest, "top1"),
    ):
        result = sample(path, replace(cfg, mixture=mixture), quality_store=store)
        methods[name].update(match_rate=result.match_rate, fid=result.fid, sample_seconds=result.seconds,
                             expert_share=result.expert_share, grid=result.out)
        share = f"  expert share {[round(s, 2) for s in result.expert_share]}" if result.expert_share else ""
        print(f"{name:28s} class match {result.match_rate:.3f}  digits FID {result.fid:8.3f}  "
              f"({result.num_samples} samples, {result.seconds:.0f} s){share}")
    mono_figures = methods["monolith"]
    # Seconds in training steps on both sides (setup, checkpoints and the router not counted).
    ratios = {"experts_over_monolith_train_seconds": ratio(expert_train_seconds, mono.train_seconds)}
    for name in ("experts_top1", "experts_weighted", "experts_top1_router_xt_only"):
        # FID: lower is better, so above 1 means the experts are worse; class match: higher is better.
        ratios[f"{name}_over_monolith_fid"] = ratio(methods[name]["fid"], mono_figures["fid"])
        ratios[f"{name}_over_monolith_match"] = ratio(methods[name]["match_rate"], mono_figures["match_rate"])
    context = {"images_each_side": args.steps * args.batch_size, "cluster_sizes": experts.cluster_sizes,
               "router": asdict(router), "router_xt_only": asdict(plain_router)}
    publish(args, "diffusion_experts", methods, ratios, context)


if __name__ == "__main__":
    main()
