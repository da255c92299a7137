"""Decentralized experts against one model at equal training compute, on scikit-learn's digits.

The monolith takes S optimizer steps of B images on the whole set. Each of the k experts of a
set takes as many steps of B images on its cluster as gives the same training FLOPs in all:
S / k for experts as large as the monolith, more for smaller ones (``--expert-hidden``,
``--expert-depth``; the forward FLOPs of each network are measured with torch's FLOP counter,
so the step count follows from them). The router and the clustering encoder are extra compute
on the experts' side; their seconds are reported beside.

Clusterings side by side (``--clusterings``): ``pixels`` (k-means on raw pixels, as before
issue 19), ``encoder`` (balanced k-means on a contrastive encoder trained on the store without
labels) and ``labels`` (balanced k-means on the class labels: the upper bound). Every set is
sampled with each of ``--mixtures``: ``top1``, ``top2``, ``weighted`` (guidance routed per
expert: both passes of a sample go to the experts chosen for its class) and ``top1_per_pass``
(top-1 with the unconditional pass routed on its own, as before issue 19).

Each model draws ``--num-per-class`` samples per class (DDIM, classifier-free guidance, the same
noise seed) from its EMA weights and is measured with the store's reference classifier: the
share classified as the class asked for ("class match") and the Frechet distance in its features
to the store's images ("digits FID", lower is better). Every figure is repeated for each seed of
``--seeds`` (the seed of the weights, batches, noise, clusters and samples) and the means are
compared.

    python benchmarks/diffusion_experts.py [--experts 4 8] [--seeds 0 1 2] [--json OUT]

One process, one CPU thread. With ``--json`` it writes per seed and mean figures under
``methods`` (``monolith``, ``k4_encoder_top1``, ...; per seed ``seed0_k4_encoder_top1``) and the
ratios ``<k>_<clustering>_<mixture>_over_monolith_fid`` and ``..._match`` (of the means over
seeds); see benchmarks/report.py. The smallest run that exercises every part (its figures mean
nothing)::

    python benchmarks/diffusion_experts.py --steps 40 --experts 2 --seeds 0 --router-steps 10 --hidden 16 --depth 1 \\
        --num-per-class 2 --sample-steps 5 --encoder-steps 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from report import add_json_flag, publish, ratio

CLUSTERINGS = ("pixels", "encoder", "labels")
MIXTURES = ("top1", "top2", "weighted", "top1_per_pass")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="monolith steps")
    p.add_argument("--experts", type=int, nargs="+", default=[4, 8], help="k, one set per value")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clusterings", nargs="+", choices=CLUSTERINGS, default=list(CLUSTERINGS))
    p.add_argument("--mixtures", nargs="+", choices=MIXTURES, default=["top1", "top2"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64, help="monolith DiT width")
    p.add_argument("--depth", type=int, default=4, help="monolith DiT blocks")
    p.add_argument("--expert-hidden", type=int, default=0, help="expert DiT width (0: as the monolith)")
    p.add_argument("--expert-depth", type=int, default=0, help="expert DiT blocks (0: as the monolith)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of both sides")
    p.add_argument("--router-steps", type=int, default=500)
    p.add_argument("--encoder-steps", type=int, default=400)
    p.add_argument("--num-per-class", type=int, default=100, help="samples per class for the quality measures")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--no-monolith", action="store_true",
                   help="train only the expert sets (an ablation to compare with another run's monolith; no ratios)")
    p.add_argument("--workdir", default="", help="where the store and runs go (default: a temporary folder)")
    add_json_flag(p)
    return p.parse_args()


def forward_flops(model_cfg, batch: int) -> float:
    """Measured FLOPs of one forward pass of ``batch`` images (training costs a fixed multiple)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from strata.models.diffusion.config import build_diffusion

    model = build_diffusion(model_cfg)
    x = torch.zeros(batch, model_cfg.channels, model_cfg.image_size, model_cfg.image_size)
    t = torch.zeros(batch, dtype=torch.long)
    y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, y)
    return float(counter.get_total_flops())


class Bench:
    """The runs of one invocation: a store, and per seed a monolith and the expert sets."""

    def __init__(self, args: argparse.Namespace) -> None:
        from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
        from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
        from strata.storage.ingest.images import ingest_digits

        self.args = args
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="strata-experts-bench-"))
        self.store = str(self.workdir / "digits")
        if not (self.workdir / "digits").exists():
            ingest_digits(self.store)
        self.model = DiffusionModelConfig(arch="dit", image_size=8, channels=1, num_classes=10, hidden=args.hidden,
                                          depth=args.depth, heads=4, patch_size=2)
        self.expert_model = replace(self.model, hidden=args.expert_hidden or args.hidden, depth=args.expert_depth or args.depth)
        self.noise = NoiseConfig(schedule="cosine", timesteps=1000, prediction="eps")
        self.data, self.ckpt, self.metrics = DataConfig(store=self.store), CheckpointConfig(keep=1), MetricsConfig()
        self.flops_ratio = forward_flops(self.model, args.batch_size) / forward_flops(self.expert_model, args.batch_size)

    def expert_steps(self, k: int) -> int:
        """Steps of each of k experts for the monolith's training FLOPs."""
        return max(1, round(self.args.steps * self.flops_ratio / k))

    def train_cfg(self, seed: int, steps: int, executor: str = "data_parallel"):
        from strata.runtime.diffusion.config import DiffusionTrainConfig

        a = self.args
        return DiffusionTrainConfig(
            steps=steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=min(100, steps // 10), ema_decay=a.ema_decay,
            label_dropout=0.1, seed=seed, log_every=0, sample_per_class=4, sample_steps=20, guidance_scale=a.guidance,
            executor=executor,
        )

    def measure(self, path: str, mixture: str, seed: int) -> dict:
        from strata.runtime.diffusion.generate import SampleConfig, sample

        a = self.args
        routing = "per_pass" if mixture.endswith("_per_pass") else "per_expert"
        cfg = SampleConfig(num_per_class=a.num_per_class, guidance=a.guidance, steps=a.sample_steps, seed=seed,
                           mixture=mixture.removesuffix("_per_pass"), guidance_routing=routing)
        result = sample(path, cfg, quality_store=self.store)
        return {"fid": result.fid, "match_rate": result.match_rate, "sample_seconds": result.seconds,
                "expert_share": [round(s, 3) for s in result.expert_share]}

    def monolith(self, seed: int) -> dict:
        from strata.runtime.diffusion.trainer import train_diffusion

        run_dir = str(self.workdir / f"seed{seed}" / "monolith")
        started = time.perf_counter()
        mono = train_diffusion(self.data, self.model, self.noise, self.train_cfg(seed, self.args.steps), self.ckpt,
                               self.metrics, run_dir=run_dir, progress=False)
        figures = {"final_loss": mono.final_loss, "train_seconds": mono.train_seconds, "steps": self.args.steps,
                   "wall_seconds": time.perf_counter() - started, **self.measure(run_dir, "top1", seed)}
        print(f"seed {seed} monolith: {self.args.steps} steps, loss {mono.final_loss:.4f}, {mono.train_seconds:.0f} s; "
              f"class match {figures['match_rate']:.3f}, digits FID {figures['fid']:.2f}", flush=True)
        return figures

    def expert_set(self, seed: int, k: int, clustering: str) -> dict[str, dict]:
        """The figures of one set, trained once and sampled with each mixture."""
        from strata.runtime.diffusion.config import ExpertsConfig
        from strata.runtime.diffusion.experts import train_experts

        a = self.args
        run_dir = str(self.workdir / f"seed{seed}" / f"k{k}-{clustering}")
        cfg = ExpertsConfig(num_experts=k, router_steps=a.router_steps, router_batch_size=256, cluster_seed=seed,
                            cluster_features=clustering, encoder_steps=a.encoder_steps)
        started = time.perf_counter()
        result = train_experts(self.data, self.expert_model, self.noise, self.train_cfg(seed, self.expert_steps(k), "experts"),
                               cfg, self.ckpt, self.metrics, run_dir=run_dir, progress=False)
        wall = time.perf_counter() - started
        router = result.router
        shared = {
            "cluster_sizes": result.cluster_sizes, "steps_each": self.expert_steps(k),
            "final_losses": [round(e.final_loss, 4) for e in result.experts],
            "train_seconds": sum(e.train_seconds for e in result.experts), "router_seconds": router.train_seconds,
            "clustering_and_router_seconds": wall - sum(e.train_seconds for e in result.experts),
            "router_accuracy_small_t": router.accuracy_small_t, "router_accuracy_given_class": router.accuracy_all_t_given_class,
            "router_accuracy_by_noise": router.accuracy_by_noise, "class_purity": class_purity(self.store, run_dir, k),
        }
        print(f"seed {seed} k={k} {clustering}: sizes {result.cluster_sizes}, class purity {shared['class_purity']:.3f}, "
              f"{shared['steps_each']} steps each, losses {shared['final_losses']}, router by noise "
              f"{ {band: round(acc, 3) for band, acc in router.accuracy_by_noise.items()} }, {wall:.0f} s", flush=True)
        out = {}
        for mixture in a.mixtures:
            out[mixture] = {**shared, **self.measure(run_dir, mixture, seed)}
            print(f"    {mixture:14s} class match {out[mixture]['match_rate']:.3f}  digits FID {out[mixture]['fid']:7.2f}  "
                  f"share {out[mixture]['expert_share']}  ({out[mixture]['sample_seconds']:.0f} s)", flush=True)
        return out


def class_purity(store: str, run_dir: str, k: int) -> float:
    """Share of images whose class is their cluster's most common one (how semantic the clusters are)."""
    import numpy as np

    from strata.runtime.config import CheckpointConfig
    from strata.runtime.diffusion.experts import ExpertPaths, read_clusters
    from strata.runtime.diffusion.image_data import load_image_data

    clusters, _ = read_clusters(ExpertPaths.of(run_dir, CheckpointConfig()).clusters)
    labels = load_image_data(store).labels.numpy()
    return float(sum(np.bincount(labels[clusters == c]).max() for c in range(k) if (clusters == c).any()) / len(labels))


def mean_figures(per_seed: list[dict]) -> dict:
    """Means of the numeric figures over seeds, and the per-seed FID and class match."""
    import numpy as np

    keys = [key for key, value in per_seed[0].items() if isinstance(value, (int, float)) and value is not None]
    out = {key: float(np.mean([figures[key] for figures in per_seed])) for key in keys}
    out["fid_per_seed"] = [figures["fid"] for figures in per_seed]
    out["match_rate_per_seed"] = [figures["match_rate"] for figures in per_seed]
    return out


def main() -> None:
    args = parse()
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import torch

    # One thread: on a shared CPU, torch's spinning threads cost far more than they give, and
    # both sides run under the same setting.
    torch.set_num_threads(1)
    bench = Bench(args)
    print(f"monolith DiT hidden {args.hidden} depth {args.depth}, {args.steps} steps of {args.batch_size}; experts hidden "
          f"{bench.expert_model.hidden} depth {bench.expert_model.depth} ({bench.flops_ratio:.2f}x cheaper per image): "
          + ", ".join(f"k={k}: {bench.expert_steps(k)} steps each" for k in args.experts), flush=True)
    per_seed: dict[str, list[dict]] = {}
    methods: dict[str, dict] = {}
    for seed in args.seeds:
        if not args.no_monolith:
            methods[f"seed{seed}_monolith"] = bench.monolith(seed)
            per_seed.setdefault("monolith", []).append(methods[f"seed{seed}_monolith"])
        for k in args.experts:
            for clustering in args.clusterings:
                for mixture, figures in bench.expert_set(seed, k, clustering).items():
                    name = f"k{k}_{clustering}_{mixture}"
                    methods[f"seed{seed}_{name}"] = figures
                    per_seed.setdefault(name, []).append(figures)
    means = {name: mean_figures(runs) for name, runs in per_seed.items()}
    methods.update(means)
    mono = means.get("monolith")
    ratios = {}
    print(f"\nmeans over seeds {args.seeds}:")
    for name, figures in means.items():
        over = ""
        if mono is not None and name != "monolith":
            # FID: lower is better, so above 1 means the experts are worse; class match: higher is better.
            ratios[f"{name}_over_monolith_fid"] = ratio(figures["fid"], mono["fid"])
            ratios[f"{name}_over_monolith_match"] = ratio(figures["match_rate"], mono["match_rate"])
            over = f"FID / monolith {ratios[f'{name}_over_monolith_fid']:.3f}"
        print(f"{name:28s} class match {figures['match_rate']:.3f}  digits FID {figures['fid']:7.2f}  {over}  "
              f"per seed {[round(f, 2) for f in figures['fid_per_seed']]}")
    context = {"images_monolith": args.steps * args.batch_size, "expert_flops_ratio": bench.flops_ratio,
               "expert_steps": {f"k{k}": bench.expert_steps(k) for k in args.experts}, "workdir": str(bench.workdir)}
    publish(args, "diffusion_experts", methods, ratios, context)


if __name__ == "__main__":
    main()
