"""Decentralized diffusion experts (McAllister et al., "Decentralized Diffusion Models", 2025):
the data set is clustered into k parts, each expert is a whole diffusion model trained in
isolation on one cluster, and a router trained on the whole set picks experts when sampling.

A job (``diffusion.executor: experts``) does, in order:

1. **Clusters** (:mod:`strata.runtime.diffusion.expert_clusters`): k-means on pixels, or
   balanced k-means on a contrastive encoder's features (the encoder trained on the store in
   this job, kept in ``encoder.pt``) or on labels (``experts.cluster_features``), seeded, so
   separate jobs would compute the same clustering; but it is computed once per set and kept
   in ``clusters.npz``, written atomically, and every later job reads it and checks that it
   was made for this k, seed, features and store, with the encoder the manifest records.
2. **Router** (when this job trains it): a small classifier of the cluster of x0 from
   (x_t, t), trained on the whole set with the diffusion noising, data parallel over every
   rank of the job, checkpointed under ``router/``.
3. **Experts.** The job's ranks split into groups (:func:`expert_layout`), each group a
   process group of its own (:meth:`Comm.subgroups`) that trains its experts one after another
   with the diffusion trainer's loop (:func:`strata.runtime.diffusion.trainer.fit`) on its
   cluster's images. Gradients are averaged within a group only: no byte crosses between
   groups, and a job that trains one expert (``experts.expert: i``) may run at any time,
   anywhere, with any number of ranks.
4. **Manifest.** Rank 0 writes the set's manifest (:mod:`strata.runtime.diffusion.model_loading`,
   which draws the folder layout). Its content depends only on the configs, so jobs that
   build one set in pieces write the same file; a job whose configs disagree with an
   existing manifest is refused before it trains.

At the end every rank waits for the slowest group (the results are summed over the job), so
``distributed.timeout_seconds`` must cover the difference between groups' training times.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from strata.errors import ConfigError
from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.diffusion.config import DiffusionTrainConfig, ExpertsConfig
from strata.runtime.diffusion.expert_clusters import (
    ENCODER_SHA,
    check_encoder,
    cluster_labels,
    manifest_extra,
    read_clusters,  # noqa: F401  (re-exported: callers read a set's clusters from here)
)
from strata.runtime.diffusion.image_data import (
    ImageData,
    load_image_data,
    open_image_store,
)
from strata.runtime.diffusion.model_loading import (
    ExpertSetManifest,
    read_manifest,
    relative_to,
    write_manifest,
)
from strata.runtime.diffusion.router_training import RouterSummary, train_router
from strata.runtime.diffusion.trainer import check_model_fits, executor_label, fit
from strata.runtime.dist.comm import COUNTED_OPS, Comm
from strata.runtime.dist.topology import Topology, single_process
from strata.runtime.metrics import TrainingMetrics
from strata.storage import fs
from strata.storage.layout import IMAGES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertLayout:
    """Which ranks form each group and which experts each group trains, in order."""

    groups: tuple[tuple[int, ...], ...]
    experts: tuple[tuple[int, ...], ...]

    def group_of(self, rank: int) -> int:
        return next(g for g, ranks in enumerate(self.groups) if rank in ranks)


def expert_layout(world_size: int, experts: Sequence[int]) -> ExpertLayout:
    """Split ``world_size`` ranks over ``experts``: with at least as many ranks as experts,
    consecutive equal groups, one expert each; with fewer, one rank per group, expert j going
    to rank j mod world_size. Pure arithmetic."""
    experts = tuple(experts)
    if not experts:
        return ExpertLayout((tuple(range(world_size)),), ((),))
    n = len(experts)
    if world_size >= n:
        if world_size % n:
            raise ConfigError(
                f"{world_size} processes do not split evenly into {n} expert groups; use a multiple of {n} "
                f"processes, or fewer than {n} (then each trains several experts in turn)"
            )
        size = world_size // n
        groups = tuple(tuple(range(g * size, (g + 1) * size)) for g in range(n))
        return ExpertLayout(groups, tuple((e,) for e in experts))
    return ExpertLayout(
        tuple((r,) for r in range(world_size)),
        tuple(experts[r::world_size] for r in range(world_size)),
    )


@dataclass
class ExpertPaths:
    """Where a set's files go (see :mod:`strata.runtime.diffusion.model_loading` for the layout)."""

    root: str
    checkpoint_root: str

    @classmethod
    def of(cls, run_dir: str, ckpt_cfg: CheckpointConfig) -> ExpertPaths:
        root = fs.join(run_dir, "experts")
        return cls(root, ckpt_cfg.dir or root)

    @property
    def manifest(self) -> str:
        return fs.join(self.root, "manifest.json")

    @property
    def clusters(self) -> str:
        return fs.join(self.root, "clusters.npz")

    @property
    def encoder(self) -> str:
        """The clustering encoder (experts.cluster_features=encoder)."""
        return fs.join(self.root, "encoder.pt")

    def expert_dir(self, i: int) -> str:
        return fs.join(self.root, f"expert-{i:03d}")

    def expert_checkpoints(self, i: int) -> str:
        if self.checkpoint_root != self.root:
            return fs.join(self.checkpoint_root, f"expert-{i:03d}")
        return fs.join(self.expert_dir(i), "checkpoints")

    @property
    def router_checkpoints(self) -> str:
        if self.checkpoint_root != self.root:
            return fs.join(self.checkpoint_root, "router")
        return fs.join(self.root, "router", "checkpoints")


# -- clusters (see expert_clusters) -------------------------------------------------------------


def subset(data: ImageData, rows: torch.Tensor) -> ImageData:
    """The images (and labels) at ``rows``, with the set's number of classes."""
    return ImageData(data.images[rows], None if data.labels is None else data.labels[rows], data.num_classes)


# -- router ------------------------------------------------------------------------------------


# -- the job -----------------------------------------------------------------------------------


@dataclass
class ExpertSummary:
    expert: int
    images: int
    """Images in its cluster."""
    trained: bool
    """Whether this job trained it."""
    ranks: list[int]
    """Global ranks of the group that trained it (empty when this job did not)."""
    steps: int = 0
    final_loss: float = math.nan
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    checkpoint_dir: str = ""
    samples: str = ""


@dataclass
class ExpertsResult:
    num_experts: int
    experts: list[ExpertSummary]
    router: RouterSummary | None
    """None when this job did not train the router."""
    manifest: str
    clusters: str
    cluster_sizes: list[int]
    run_dir: str
    executor: str
    world_size: int
    train_seconds: float
    """Wall time of the whole job after loading the data."""
    expert_comm_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes sent by each op while the experts trained, summed over all ranks: only traffic
    inside expert groups (nothing at all when every group has one rank)."""
    comm_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes sent by each op over the whole job, summed over all ranks."""
    metrics_log: str = ""
    metrics_port: int | None = None


def build_manifest(
    paths: ExpertPaths, data_cfg: DataConfig, model_cfg: DiffusionModelConfig, noise_cfg: NoiseConfig,
    cfg: ExpertsConfig, checksum: str, image_shape: tuple[int, int, int], num_classes: int,
) -> ExpertSetManifest:
    base = paths.root
    return ExpertSetManifest(
        num_experts=cfg.num_experts, image_shape=list(image_shape), num_classes=num_classes, store=data_cfg.store,
        store_checksum=checksum, clusters=relative_to(base, paths.clusters),
        experts=[relative_to(base, paths.expert_checkpoints(i)) for i in range(cfg.num_experts)],
        router=relative_to(base, paths.router_checkpoints), router_num_clusters=cfg.num_experts,
        router_hidden=cfg.router_hidden, router_num_classes=num_classes if cfg.router_labels else 0,
        diffusion_model=asdict(model_cfg), noise=asdict(noise_cfg), extra=manifest_extra(cfg),
    )


def set_identity(manifest: ExpertSetManifest) -> dict:
    """What jobs of one set must agree on: the manifest's identity and its clustering (sets
    written before cluster_features existed clustered pixels)."""
    extra = {"cluster_features": "pixels", **manifest.extra}
    return {**manifest.identity(), **{f"extra.{key}": value for key, value in extra.items() if key != ENCODER_SHA}}


def check_manifest_agrees(url: str, mine: ExpertSetManifest) -> None:
    """Refuse to add to a set whose existing manifest was written for other configs."""
    if not fs.exists(url):
        return
    theirs, ours = set_identity(read_manifest(url)), set_identity(mine)
    differ = [key for key, value in ours.items() if theirs.get(key) != value]
    if differ:
        detail = "; ".join(f"{key}: set has {theirs.get(key)!r}, this job {ours[key]!r}" for key in differ[:3])
        raise ConfigError(
            f"the expert set at '{url}' was made with other settings ({detail}). The experts of one set share one "
            "model, noise, router and clustering config; use the set's config, or another run_dir for a new set"
        )


def _open_set(paths: ExpertPaths, data_cfg: DataConfig, model_cfg: DiffusionModelConfig, noise_cfg: NoiseConfig,
              cfg: DiffusionTrainConfig, experts_cfg: ExpertsConfig) -> tuple[ImageData, ExpertSetManifest]:
    """The images and this job's manifest, once the configs are checked against each other,
    the store and the set already at ``paths`` (if any); makes the set's folder."""
    if cfg.executor != "experts":
        raise ConfigError(f"train_experts needs diffusion.executor=experts, got '{cfg.executor}'")
    if cfg.engine != "ddp":
        raise ConfigError(
            "diffusion.executor=experts trains each expert with strata's own data parallelism inside its group; "
            "DeepSpeed runs on the whole job's process group: drop diffusion.engine=deepspeed"
        )
    data = load_image_data(data_cfg.store)
    check_model_fits(model_cfg, data, data_cfg.store)
    if experts_cfg.num_experts > len(data.images):
        raise ConfigError(f"experts.num_experts {experts_cfg.num_experts} exceeds the {len(data.images)} images of '{data_cfg.store}'")
    checksum = str(open_image_store(data_cfg.store).meta.arrays[IMAGES].get("checksum", ""))
    manifest = build_manifest(paths, data_cfg, model_cfg, noise_cfg, experts_cfg, checksum, data.image_shape, data.num_classes)
    check_manifest_agrees(paths.manifest, manifest)
    if fs.exists(paths.manifest):
        recorded = str(read_manifest(paths.manifest).extra.get(ENCODER_SHA, ""))
        check_encoder(paths.encoder, recorded, f"the set's manifest '{paths.manifest}'")
    fs.makedirs(paths.root)  # also makes run_dir, where the metrics log goes
    return data, manifest


def train_experts(
    data_cfg: DataConfig,
    model_cfg: DiffusionModelConfig,
    noise_cfg: NoiseConfig,
    cfg: DiffusionTrainConfig,
    experts_cfg: ExpertsConfig,
    ckpt_cfg: CheckpointConfig,
    metrics_cfg: MetricsConfig,
    *,
    run_dir: str,
    resume: bool = False,
    progress: bool = True,
    topology: Topology | None = None,
) -> ExpertsResult:
    """Cluster, train the router and the experts this job is asked for, and write the set's
    manifest (see the module docstring); every rank of ``topology`` calls it."""
    topology = topology or single_process()
    layout = expert_layout(topology.world_size, experts_cfg.experts_to_train)
    resume = resume or topology.restart_count > 0
    paths = ExpertPaths.of(run_dir, ckpt_cfg)
    data, manifest = _open_set(paths, data_cfg, model_cfg, noise_cfg, cfg, experts_cfg)
    leads = topology.rank == layout.groups[layout.group_of(topology.rank)][0]
    jsonl = (metrics_cfg.jsonl or fs.join(run_dir, "metrics.jsonl")) if topology.is_main else (
        fs.join(paths.root, f"metrics-rank-{topology.rank:05d}.jsonl") if leads else None
    )
    metrics = TrainingMetrics(
        metrics_cfg, rank=topology.rank, local_rank=topology.local_rank, executor=executor_label(cfg), jsonl_url=jsonl
    )
    try:
        comm = Comm(topology.rank, topology.world_size, sink=metrics.comm, device=topology.device)
        started = time.perf_counter()
        metrics.log(
            "start", config={"data": asdict(data_cfg), "diffusion_model": asdict(model_cfg), "noise": asdict(noise_cfg),
                             "diffusion": asdict(cfg), "experts": asdict(experts_cfg)},
            world_size=topology.world_size, launcher=topology.launcher, groups=[list(g) for g in layout.groups],
        )
        # 1. clusters: rank 0 makes or reads them, every rank gets them by broadcast.
        clusters = torch.zeros(len(data.images), dtype=torch.int64)
        if comm.rank == 0:
            labels, encoder_sha = cluster_labels(data, data_cfg.store, experts_cfg, paths.clusters, paths.encoder,
                                                 progress=progress and topology.is_main)
            clusters = torch.from_numpy(labels)
            if encoder_sha:
                manifest.extra[ENCODER_SHA] = encoder_sha
        comm.broadcast(clusters, 0)
        sizes = torch.bincount(clusters, minlength=experts_cfg.num_experts).tolist()
        metrics.log("clusters", sizes=sizes, url=paths.clusters)
        # 2. router: data parallel over the whole job.
        router = None
        if experts_cfg.trains_router:
            router = train_router(
                data, clusters, noise_cfg, experts_cfg, seed=cfg.seed, root=paths.router_checkpoints, keep=ckpt_cfg.keep,
                every_steps=ckpt_cfg.every_steps, comm=comm, metrics=metrics, device=topology.device, resume=resume,
                log_every=cfg.log_every,
            )
            metrics.log("router", **asdict(router))
        # 3. experts: each group in its own process group, no traffic between groups.
        stage = ExpertsStage(data, clusters, sizes, layout, paths, model_cfg, noise_cfg, cfg, ckpt_cfg)
        summaries, expert_bytes = stage.run(comm, metrics, topology, resume=resume, progress=progress, leads=leads)
        # 4. manifest: its content depends on the configs only.
        if comm.rank == 0:
            write_manifest(paths.manifest, manifest)
        comm.barrier()
        result = ExpertsResult(
            num_experts=experts_cfg.num_experts, experts=summaries, router=router, manifest=paths.manifest,
            clusters=paths.clusters, cluster_sizes=sizes, run_dir=run_dir, executor=executor_label(cfg),
            world_size=topology.world_size, train_seconds=time.perf_counter() - started, expert_comm_bytes=expert_bytes,
        )
        result.comm_bytes = comm.bytes_over_ranks()
        result.metrics_log, result.metrics_port = jsonl or "", metrics.port
        metrics.log("end", **asdict(result))
        metrics.push()
        return result
    finally:
        metrics.close()


@dataclass
class ExpertsStage:
    """Step 3 of a set: each group of ranks trains its experts, one after another, on the
    ordinary diffusion loop in a process group of its own."""

    data: ImageData
    clusters: torch.Tensor
    sizes: list[int]
    """Images per cluster."""
    layout: ExpertLayout
    paths: ExpertPaths
    model_cfg: DiffusionModelConfig
    noise_cfg: NoiseConfig
    cfg: DiffusionTrainConfig
    ckpt_cfg: CheckpointConfig

    def run(self, comm: Comm, metrics: TrainingMetrics, topology: Topology, *, resume: bool, progress: bool,
            leads: bool) -> tuple[list[ExpertSummary], dict[str, int]]:
        """Every expert's summary (on every rank) and the bytes the groups sent, summed over ranks."""
        layout, paths = self.layout, self.paths
        group = layout.group_of(topology.rank)
        before = comm.bytes_by_op()
        group_comm = comm.subgroups(layout.groups)
        trained: dict[int, list[float]] = {}
        for i in layout.experts[group]:
            rows = (self.clusters == i).nonzero().squeeze(1)
            metrics.log("expert_start", expert=i, images=len(rows), ranks=list(layout.groups[group]))
            log.info("experts: expert %d of %d: %s images, %d steps, rank(s) %s", i, len(self.sizes), f"{len(rows):,}",
                     self.cfg.steps, ", ".join(map(str, layout.groups[group])))
            result = fit(
                subset(self.data, rows), self.model_cfg, self.noise_cfg, self.cfg,
                replace(self.ckpt_cfg, dir=paths.expert_checkpoints(i)), comm=group_comm, metrics=metrics,
                run_dir=paths.expert_dir(i), device=topology.device, resume=resume, progress=progress and topology.is_main,
            )
            metrics.log("expert_end", expert=i, **asdict(result))
            trained[i] = [1.0, result.steps, result.final_loss, result.train_seconds, result.images_per_second]
        after = comm.bytes_by_op()
        expert_bytes = _sum_over_ranks({op: after.get(op, 0) - before.get(op, 0) for op in COUNTED_OPS}, comm)
        return _gather_summaries(trained, layout, paths, self.sizes, comm, leads), expert_bytes

def _sum_over_ranks(bytes_by_op: dict[str, int], comm: Comm) -> dict[str, int]:
    ops = sorted(bytes_by_op)
    totals = comm.sum_floats([float(bytes_by_op[op]) for op in ops]) if comm.world_size > 1 else [bytes_by_op[op] for op in ops]
    return {op: int(total) for op, total in zip(ops, totals) if total}


def _gather_summaries(
    trained: dict[int, list[float]], layout: ExpertLayout, paths: ExpertPaths, sizes: list[int], comm: Comm, leads: bool,
) -> list[ExpertSummary]:
    """Every expert's figures on every rank: each group's first rank contributes the rows of
    the experts it trained and the rows are summed over the job."""
    k = len(sizes)
    table = torch.zeros(k, 5, dtype=torch.float64)
    if leads:
        for i, row in trained.items():
            table[i] = torch.tensor(row, dtype=torch.float64)
    if comm.world_size > 1:
        table = torch.tensor(comm.sum_floats(table.flatten().tolist()), dtype=torch.float64).view(k, 5)
    ranks_of = {i: list(layout.groups[g]) for g, experts in enumerate(layout.experts) for i in experts}
    out = []
    for i in range(k):
        done, steps, loss, seconds, speed = table[i].tolist()
        summary = ExpertSummary(expert=i, images=sizes[i], trained=bool(done), ranks=ranks_of.get(i, []))
        if done:
            summary.steps, summary.final_loss, summary.train_seconds, summary.images_per_second = int(steps), loss, seconds, speed
            summary.checkpoint_dir = paths.expert_checkpoints(i)
            summary.samples = fs.join(paths.expert_dir(i), "samples", f"step-{summary.steps:08d}.png")
        out.append(summary)
    return out
