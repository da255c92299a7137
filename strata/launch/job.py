"""The job config: one section per component, composed here and loaded from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from strata.errors import ConfigError
from strata.launch.config_io import apply_overrides, from_dict, load_yaml
from strata.models.config import ModelConfig
from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.diffusion.config import DiffusionTrainConfig, ExpertsConfig
from strata.runtime.dist.config import DistributedConfig
from strata.runtime.gnn.config import PipelineConfig, TrainConfig
from strata.storage.featstore.config import FeaturesConfig

TASK_SECTIONS = {
    "node_classification": ("model", "train", "features", "pipeline"),
    "diffusion": ("diffusion_model", "noise", "diffusion", "experts"),
}
"""The config sections only one kind of job reads."""


@dataclass
class JobConfig:
    """Everything `strata train` needs."""

    data: DataConfig
    """The data set (see DataConfig): a graph store, or an image store for diffusion."""
    task: str = "node_classification"
    """'node_classification' (a GNN: sections model, train, features, pipeline) or 'diffusion'
    (sections diffusion_model, noise, diffusion, experts)."""
    name: str = "strata"
    """Job name; also the default run directory runs/<name>."""
    run_dir: str = ""
    """Where checkpoints and logs go (any fsspec URL); empty = runs/<name>."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    """How node features reach training: in memory, cached, or packed by `strata pack`."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """train.executor=layer_pipeline: chunks, schedule and historical embeddings."""
    diffusion_model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    """task=diffusion: the denoiser (DiT or U-Net)."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """task=diffusion: the noise schedule and what the model predicts."""
    diffusion: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    """task=diffusion: how to train (engine, batch, EMA, sampling grids)."""
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    """task=diffusion, diffusion.executor=experts: number of experts, which this job trains, the router."""

    def __post_init__(self) -> None:
        if self.task not in TASK_SECTIONS:
            raise ConfigError(f"task must be one of {', '.join(TASK_SECTIONS)}, got '{self.task}'")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty string without '/', got '{self.name}'")
        if not self.run_dir:
            self.run_dir = f"runs/{self.name}"


def load_job(url: str, overrides: list[str] | None = None) -> JobConfig:
    """Read and validate a job config; ``overrides`` are ``section.key=value`` strings."""
    raw = apply_overrides(load_yaml(url), overrides or [])
    if "data" not in raw:
        raise ConfigError(f"config '{url}' has no 'data' section (it needs at least data.store)")
    task = raw.get("task", "node_classification")
    for other, sections in TASK_SECTIONS.items():
        stray = [name for name in sections if name in raw and other != task]
        if stray and task in TASK_SECTIONS:
            raise ConfigError(
                f"config '{url}' is a {task} job (task: {task}) but has section(s) {', '.join(stray)}, which only "
                f"a {other} job reads; remove them or set task: {other}"
            )
    return from_dict(JobConfig, raw)
