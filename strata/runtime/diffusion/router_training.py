"""Training the experts' router on the one loop: data parallel over the whole job, on every
image of the set, learning which cluster a noisy image (and its class) came from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from strata.models.diffusion.config import NoiseConfig
from strata.models.diffusion.router import Router
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime import checkpointing
from strata.runtime.diffusion.config import ExpertsConfig
from strata.runtime.diffusion.engines import global_batch, rank_rows
from strata.runtime.diffusion.image_data import ImageData
from strata.runtime.dist.comm import Comm
from strata.runtime.dist.replicas import all_reduce_gradients, broadcast_parameters
from strata.runtime.loop import (
    ExecutorStats,
    LoopConfig,
    LoopState,
    StepOutput,
    run_loop,
)
from strata.runtime.metrics import TrainingMetrics

SMALL_T = 50
"""Timesteps below this count as 'small t' in the router's reported accuracy."""


@dataclass
class RouterSummary:
    steps: int
    final_loss: float
    accuracy_small_t: float
    """Share of noisy images with t < 50 whose cluster the router names (from x_t and t alone)."""
    accuracy_all_t: float
    """The same over t uniform in [0, T)."""
    accuracy_all_t_given_class: float | None
    """A router with labels, told each image's class: its accuracy over t uniform in [0, T)
    (the two above are measured with the null label). None without labels."""
    train_seconds: float
    checkpoint_dir: str
    accuracy_by_noise: dict[str, float] = field(default_factory=dict)
    """Accuracy per band of timesteps, keyed 'lo-hi' (t in [lo, hi)), told each image's class
    when the router takes labels (as when sampling a class): how well it routes at each noise level."""


NOISE_BANDS = (0.0, 0.05, 0.25, 0.5, 0.75, 1.0)
"""Edges of the timestep bands of :attr:`RouterSummary.accuracy_by_noise`, as shares of T."""


def accuracy_by_noise(router: Router, schedule: NoiseSchedule, images: torch.Tensor, clusters: torch.Tensor, *,
                      labels: torch.Tensor | None = None, samples: int = 1024) -> dict[str, float]:
    """Cluster accuracy of ``router`` in each band of :data:`NOISE_BANDS`."""
    edges = sorted({round(share * schedule.timesteps) for share in NOISE_BANDS})
    return {
        f"{lo}-{hi}": router_accuracy(router, schedule, images, clusters, t_min=lo, t_max=hi, labels=labels, samples=samples)
        for lo, hi in zip(edges, edges[1:])
    }


def router_accuracy(
    router: Router, schedule: NoiseSchedule, images: torch.Tensor, clusters: torch.Tensor, *, t_max: int,
    labels: torch.Tensor | None = None, samples: int = 2048, seed: int = 1, t_min: int = 0,
) -> float:
    """Share of ``samples`` images, noised at t uniform in [t_min, t_max), whose cluster ``router``
    predicts; told their class ``labels`` when given (else the null label)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(images), (samples,), generator=g)
    t = torch.randint(t_min, t_max, (samples,), generator=g)
    noise = torch.randn((samples, *images.shape[1:]), generator=g)
    device = next(router.parameters()).device
    y = None if labels is None else labels[rows].to(device)
    with torch.no_grad():
        x_t = schedule.q_sample(images[rows], t, noise).to(device)
        predicted = router.eval()(x_t, t.to(device), y).argmax(-1).cpu()
    return float((predicted == clusters[rows]).float().mean())


@dataclass
class RouterBatch:
    """Noisy images of one step with their clusters (the targets) and their classes (the condition)."""

    x_t: Tensor
    t: Tensor
    cluster: Tensor
    y: Tensor | None

    def __len__(self) -> int:
        return len(self.cluster)


class RouterExecutor:
    """The router, replicated, gradients averaged over all ranks."""

    def __init__(self, router: Router, comm: Comm, lr: float) -> None:
        self.router, self.comm = router, comm
        broadcast_parameters(router, comm)
        self.optimizer = torch.optim.AdamW(router.parameters(), lr=lr)

    def forward_backward(self, batch: RouterBatch, scale: float) -> StepOutput:
        self.router.train()
        loss = F.cross_entropy(self.router(batch.x_t, batch.t, batch.y), batch.cluster)  # logits: (rows, k)
        (loss * scale).backward()
        return StepOutput(loss=float(loss.detach()) * scale / self.comm.world_size, samples=len(batch))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        all_reduce_gradients(self.router.parameters(), self.comm, average=True)
        self.optimizer.step()

    def stats(self) -> ExecutorStats:
        return ExecutorStats()


class RouterJob:
    """Each step's batch is drawn like a diffusion batch (images, timesteps, noise, dropped
    labels) from (seed, step), and each rank takes its rows."""

    def __init__(self, executor: RouterExecutor, data: ImageData, clusters: Tensor, schedule: NoiseSchedule,
                 cfg: ExpertsConfig, *, seed: int, num_classes: int, comm: Comm, metrics: TrainingMetrics,
                 device: str, log_every: int, meta: dict) -> None:
        self.executor, self.data, self.schedule, self.cfg = executor, data, schedule, cfg
        self.targets = ImageData(data.images, clusters, cfg.num_experts)
        self.seed, self.num_classes, self.metrics, self.device = seed, num_classes, metrics, device
        self.log_every, self.meta = log_every, meta
        self.rows = rank_rows(cfg.router_batch_size, 1, comm.rank, comm.world_size)

    def steps_per_epoch(self) -> int:
        return self.cfg.router_steps

    def steps(self, epoch: int, start: int) -> Iterator[list[RouterBatch]]:
        for step in range(start, self.cfg.router_steps):
            # The same (seed, step) draws twice: once with the clusters as labels (the targets),
            # once with the classes, some dropped (the router's condition).
            draw = {"step": step, "batch_size": self.cfg.router_batch_size, "seed": self.seed,
                    "timesteps": self.schedule.timesteps, "rows": self.rows}
            batch = global_batch(self.targets, null_label=self.cfg.num_experts, label_dropout=0.0, **draw).to(self.device)
            y = None
            if self.num_classes:
                y = global_batch(self.data, null_label=self.num_classes, label_dropout=self.cfg.router_label_dropout, **draw).y
                y = y.to(self.device)
            yield [RouterBatch(self.schedule.q_sample(batch.x0, batch.t, batch.noise), batch.t, batch.y, y)]

    def after_step(self, state: LoopState) -> None:
        if self.log_every and state.step % self.log_every == 0:
            self.metrics.log("router_step", step=state.step, loss=state.last_loss)

    def end_epoch(self, state: LoopState) -> bool:
        return True  # never called: the job has no epochs

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.executor.router.state_dict(), "optimizer": self.executor.optimizer.state_dict(), "meta": self.meta}

    def load_state_dict(self, shard: dict[str, Any], step: int, root: str) -> None:
        checkpointing.load_states(step, root, {
            "router": (self.executor.router, shard["model"]), "router optimizer": (self.executor.optimizer, shard["optimizer"]),
        })


def train_router(
    data: ImageData, clusters: torch.Tensor, noise_cfg: NoiseConfig, cfg: ExpertsConfig, *, seed: int, root: str,
    keep: int, every_steps: int, comm: Comm, metrics: TrainingMetrics, device: str, resume: bool, log_every: int,
) -> RouterSummary:
    """Train the router on every image of ``data`` (``clusters`` its targets), data parallel
    over the ranks of ``comm``, and measure its cluster accuracy."""
    num_classes = data.num_classes if cfg.router_labels and data.labels is not None else 0
    torch.manual_seed(seed)
    router = Router(image_shape=data.image_shape, num_clusters=cfg.num_experts, hidden=cfg.router_hidden, num_classes=num_classes)
    router = router.to(device)
    schedule = NoiseSchedule(noise_cfg).to(device)
    meta = {"num_clusters": cfg.num_experts, "hidden": cfg.router_hidden, "image_shape": list(data.image_shape),
            "num_classes": num_classes}
    job = RouterJob(RouterExecutor(router, comm, cfg.router_lr), data, clusters, schedule, cfg, seed=seed,
                    num_classes=num_classes, comm=comm, metrics=metrics, device=device, log_every=log_every, meta=meta)
    loop_cfg = LoopConfig(epochs=0, max_steps=cfg.router_steps, checkpoint_dir=root, every_steps=every_steps, keep=keep, desc="router")
    state = run_loop(job, loop_cfg, comm=comm, metrics=metrics, device=device, resume=resume)
    small = router_accuracy(router, schedule, data.images, clusters, t_max=min(SMALL_T, schedule.timesteps))
    overall = router_accuracy(router, schedule, data.images, clusters, t_max=schedule.timesteps)
    given = router_accuracy(router, schedule, data.images, clusters, t_max=schedule.timesteps, labels=data.labels) if num_classes else None
    bands = accuracy_by_noise(router, schedule, data.images, clusters, labels=data.labels if num_classes else None)
    return RouterSummary(state.step, state.last_loss, small, overall, given, state.train_seconds, root, bands)
