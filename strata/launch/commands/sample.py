"""`strata sample`: draw class-conditional samples from a trained diffusion model or expert set."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  strata sample runs/digits-dit                      newest checkpoint of a run, EMA weights
  strata sample runs/digits-experts --mixture top1   an expert set and its router
  strata sample runs/digits-experts/experts/manifest.json --mixture weighted --out mix.png
  strata sample runs/digits-dit --quality stores/digits --num-per-class 100 --json

--quality trains the store's reference classifier once (seconds on digits) and caches it
inside the store; it prints the share of samples classified as the class they were asked
for and a Frechet distance in the classifier's features (on digits, a "digits FID").
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a trained diffusion model or expert set into a PNG grid",
        description="Draw class-conditional samples (one grid row per class) from the EMA weights of a diffusion "
        "model's newest complete checkpoint, or from a set of decentralized experts behind their router, and "
        "write them as a PNG grid. SOURCE is the run directory of a diffusion job (task: diffusion; its "
        "checkpoints/ or experts/manifest.json), a checkpoint folder, or an expert set's manifest.json; runs of "
        "GNNs (node classification) have nothing to sample.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="run directory, checkpoint folder or expert-set manifest (path or URL)")
    p.add_argument("--num-per-class", type=int, default=8, metavar="N",
                   help="samples per class; for an unconditional model, samples in all (default 8)")
    p.add_argument("--guidance", type=float, default=2.0, metavar="S", help="classifier-free guidance scale, 1 = none (default 2.0)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50; ddpm uses every timestep)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="sampler (default ddim)")
    p.add_argument("--mixture", choices=("top1", "top2", "weighted"), default="top1",
                   help="expert sets: top1 = each sample to the router's first choice, weighted = router probabilities "
                   "mix all experts (default top1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--out", default="", metavar="PNG",
                   help="where the grid goes (path or URL; default: samples/ beside the checkpoints or manifest)")
    p.add_argument("--quality", default="", metavar="STORE",
                   help="also report the class match rate and digits FID against this labelled image store")
    p.add_argument("--config", default="", metavar="YAML",
                   help="the job config, for checkpoints that do not record their model (older runs)")
    p.add_argument("--device", default="", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from strata.errors import ConfigError
    from strata.launch.progress import show_progress
    from strata.runtime.diffusion.generate import SampleConfig, sample

    cfg = SampleConfig(
        num_per_class=args.num_per_class, guidance=args.guidance, steps=args.steps, sampler=args.sampler,
        mixture=args.mixture, seed=args.seed,
    )
    model_cfg = noise_cfg = None
    if args.config:
        from strata.launch.job import load_job

        job = load_job(args.config)
        if job.task != "diffusion":
            raise ConfigError(
                f"config '{args.config}' is a {job.task} job (a GNN); 'strata sample' draws images from diffusion "
                "runs (task: diffusion) and expert sets, and --config is only for diffusion checkpoints that do not "
                "record their model"
            )
        model_cfg, noise_cfg = job.diffusion_model, job.noise
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = sample(
        args.source, cfg, out=args.out, quality_store=args.quality, device=device, progress=show_progress(args),
        model_cfg=model_cfg, noise_cfg=noise_cfg,
    )
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    what = f"step {result.step} of '{result.source}'" if result.kind == "model" else f"expert set '{result.source}' ({result.mixture})"
    how = f"{result.sampler}, {result.steps} steps, guidance {result.guidance:g}"
    print(f"{result.num_samples} samples from {what} in {result.seconds:.1f}s ({how})")
    if result.expert_share:
        print("expert share: " + ", ".join(f"{i}: {share:.2f}" for i, share in enumerate(result.expert_share)))
    if result.match_rate is not None:
        print(f"quality against '{result.quality_store}': class match {result.match_rate:.3f}, "
              f"FID {result.fid:.3f} (in the reference classifier's features)")
    print(f"grid: {result.out}")
    return 0
