"""The config sections of a diffusion job: diffusion (how to train) and experts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from strata.errors import ConfigError
from strata.runtime.config import PRECISIONS


@dataclass
class OptimizerConfig:
    lr: float
    weight_decay: float
    grad_clip: float
    warmup_steps: int

    def lr_at(self, step: int) -> float:
        return self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr


ENGINES = ("ddp", "deepspeed")



@dataclass
class DiffusionTrainConfig:
    """How to train a diffusion model."""

    steps: int = 2000
    """Optimizer steps in total."""
    batch_size: int = 128
    """Images per optimizer step over all processes and accumulation steps (the global batch)."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed before each optimizer step."""
    lr: float = 1e-3
    """AdamW learning rate after warm-up."""
    warmup_steps: int = 100
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Clip the gradient norm to this; 0 = off."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of weights that samples are drawn from."""
    label_dropout: float = 0.1
    """Share of labels replaced by 'no class' in training, for classifier-free guidance."""
    engine: str = "ddp"
    """'ddp' (gradients all-reduced by strata) or 'deepspeed' (ZeRO, see zero_stage)."""
    zero_stage: int = 1
    """engine=deepspeed: ZeRO stage 1 (optimizer state partitioned) or 2 (and gradients)."""
    executor: str = "data_parallel"
    """'data_parallel' (every process a replica), 'pipeline' (the model's blocks cut into one
    stage per process) or 'experts' (see the experts section)."""
    pipeline_chunks: int = 4
    """executor=pipeline: micro-batches each global batch is cut into as it flows through the stages."""
    pipeline_schedule: str = "1f1b"
    """executor=pipeline: 'gpipe' or '1f1b'."""
    seed: int = 0
    """Seed of the initial weights, the batches, timesteps, noise and label dropout."""
    log_every: int = 50
    """Write a JSON-lines 'step' record every this many steps."""
    sample_every: int = 0
    """Write a PNG grid of samples from the EMA weights every this many steps; 0 = only at the end."""
    sample_per_class: int = 8
    """Samples per class in each grid (one row per class)."""
    sample_steps: int = 50
    """DDIM steps when sampling grids."""
    guidance_scale: float = 2.0
    """Classifier-free guidance scale when sampling grids (1 = none)."""
    images_in_memory: bool = True
    """Load every image before training (fastest); false = leave them in the store and read
    each batch's rows through a cache of decoded chunks, for sets larger than memory."""
    image_cache_mb: int = 256
    """images_in_memory=false: megabytes of decoded image chunks each process keeps."""
    precision: str = "auto"
    """'auto' (bf16 where the device supports it, i.e. CUDA GPUs with bfloat16; fp32 on CPU),
    'fp32', or 'bf16' (forward passes autocast to bfloat16 on any device, CPU included; weights,
    gradients and optimizer state stay fp32). The pipeline executor runs in fp32."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("diffusion.steps, diffusion.batch_size and diffusion.grad_accum must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"diffusion.lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"diffusion.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"diffusion.label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.engine not in ENGINES:
            raise ConfigError(f"diffusion.engine must be one of {', '.join(ENGINES)}, got '{self.engine}'")
        if self.zero_stage not in (1, 2):
            raise ConfigError(f"diffusion.zero_stage must be 1 or 2, got {self.zero_stage}")
        if self.executor not in ("data_parallel", "pipeline", "experts"):
            raise ConfigError(f"diffusion.executor must be data_parallel, pipeline or experts, got '{self.executor}'")
        if self.executor == "pipeline" and self.engine != "ddp":
            raise ConfigError("diffusion.executor=pipeline runs strata's own pipeline schedule; drop diffusion.engine=deepspeed")
        if min(self.warmup_steps, self.log_every, self.sample_every, self.weight_decay, self.grad_clip) < 0:
            raise ConfigError("diffusion.warmup_steps, log_every, sample_every, weight_decay and grad_clip must be >= 0")
        if self.sample_per_class < 1 or self.sample_steps < 1 or self.pipeline_chunks < 1:
            raise ConfigError("diffusion.sample_per_class, sample_steps and pipeline_chunks must be at least 1")
        if self.image_cache_mb < 0:
            raise ConfigError(f"diffusion.image_cache_mb must be >= 0, got {self.image_cache_mb}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"diffusion.precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.precision == "bf16" and self.executor == "pipeline":
            raise ConfigError(
                "diffusion.precision=bf16 is not supported by the pipeline executor (its stage messages are fp32); use auto or fp32"
            )
        if self.executor == "experts" and not self.images_in_memory:
            raise ConfigError("diffusion.images_in_memory=false is for data_parallel and pipeline; experts cluster the whole set in memory")

    @property
    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(self.lr, self.weight_decay, self.grad_clip, self.warmup_steps)


ROUTER_MODES = ("auto", "yes", "no", "only")
CLUSTER_FEATURES = ("pixels", "encoder", "labels")


@dataclass
class ExpertsConfig:
    """diffusion.executor=experts: how many experts, which of them this job trains, the router
    and the clustering. Every expert trains diffusion.steps steps of diffusion.batch_size
    images of its own cluster."""

    num_experts: int = 4
    """k: clusters of the data set, one expert each."""
    expert: int = -1
    """-1: this job trains all k experts, its ranks split into k groups (when it has fewer
    ranks than k, each rank trains several experts one after another). i >= 0: this job
    trains only expert i, data parallel over all its ranks, so experts can be separate jobs."""
    train_router: str = "auto"
    """'auto' (train the router when this job trains all experts), 'yes', 'no', or 'only'
    (train just the router, no expert)."""
    router_steps: int = 1000
    """Optimizer steps of router training."""
    router_batch_size: int = 256
    """Images per router step over all ranks of the job."""
    router_hidden: int = 64
    """Width of the router (channels of its convolutions and its MLP)."""
    router_lr: float = 2e-3
    """AdamW learning rate of the router."""
    router_labels: bool = True
    """Give the router the class label too (labelled stores): it learns p(cluster | x_t, t, y),
    which class-conditional sampling needs to reach the experts that saw the class asked for;
    without it, p(cluster | x_t, t)."""
    router_label_dropout: float = 0.2
    """router_labels: share of labels replaced by "no class" in router training, so it also
    routes the unconditional pass of classifier-free guidance."""
    cluster_epochs: int = 5
    """Mini-batch k-means passes over the images."""
    cluster_seed: int = 0
    """Seed of the k-means initialisation and passes (and of the encoder's training): the same
    seed gives the same clusters."""
    cluster_features: str = "pixels"
    """What the images are clustered on. 'pixels': mini-batch k-means on the raw pixels, streamed
    from the store (cluster sizes come out as they fall). 'encoder': balanced k-means (no cluster
    over ceil(N / k) images) on the features of a small contrastive encoder trained on the store
    itself in the same job, without labels, and kept beside the clusters (``encoder.pt``) so later
    jobs of the set reuse it. 'labels': balanced k-means on the class labels, so each expert sees
    few classes: the upper bound, for comparison only (it needs a labelled store)."""
    encoder_steps: int = 400
    """cluster_features=encoder: training steps of the encoder (batches of 256 images, two views each)."""
    encoder_dim: int = 32
    """cluster_features=encoder: width of the features that are clustered."""

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"experts.num_experts must be at least 1, got {self.num_experts}")
        if not -1 <= self.expert < self.num_experts:
            raise ConfigError(
                f"experts.expert must be -1 (all) or an expert index 0..{self.num_experts - 1}, got {self.expert}"
            )
        if self.train_router not in ROUTER_MODES:
            raise ConfigError(f"experts.train_router must be one of {', '.join(ROUTER_MODES)}, got '{self.train_router}'")
        for key in ("router_steps", "router_batch_size", "router_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"experts.{key} must be at least 1, got {getattr(self, key)}")
        if not (self.router_lr > 0 and math.isfinite(self.router_lr)):
            raise ConfigError(f"experts.router_lr must be a positive number, got {self.router_lr}")
        if not 0.0 <= self.router_label_dropout < 1.0:
            raise ConfigError(f"experts.router_label_dropout must be in [0, 1), got {self.router_label_dropout}")
        if self.cluster_epochs < 0:
            raise ConfigError(f"experts.cluster_epochs must be >= 0, got {self.cluster_epochs}")
        if self.cluster_features not in CLUSTER_FEATURES:
            raise ConfigError(
                f"experts.cluster_features must be one of {', '.join(CLUSTER_FEATURES)}, got '{self.cluster_features}'"
            )
        if self.encoder_steps < 1 or self.encoder_dim < 1:
            raise ConfigError(f"experts.encoder_steps and encoder_dim must be at least 1, got {self.encoder_steps}, {self.encoder_dim}")

    @property
    def trains_router(self) -> bool:
        return self.train_router in ("yes", "only") or (self.train_router == "auto" and self.expert == -1)

    @property
    def experts_to_train(self) -> list[int]:
        if self.train_router == "only":
            return []
        return list(range(self.num_experts)) if self.expert == -1 else [self.expert]
