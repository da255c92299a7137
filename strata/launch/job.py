"""The job config: one section per component, composed here and loaded from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from strata.errors import ConfigError
from strata.launch.config_io import apply_overrides, from_dict, load_yaml
from strata.models import ModelConfig
from strata.runtime.data import DataConfig
from strata.runtime.distributed import DistributedConfig
from strata.runtime.executors.layer_pipeline import PipelineConfig
from strata.runtime.metrics import MetricsConfig
from strata.runtime.trainer import CheckpointConfig, TrainConfig
from strata.storage.featstore.config import FeaturesConfig


@dataclass
class JobConfig:
    """Everything `strata train` needs."""

    data: DataConfig
    """The data set (see DataConfig)."""
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

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty string without '/', got '{self.name}'")
        if not self.run_dir:
            self.run_dir = f"runs/{self.name}"


def load_job(url: str, overrides: list[str] | None = None) -> JobConfig:
    """Read and validate a job config; ``overrides`` are ``section.key=value`` strings."""
    raw = apply_overrides(load_yaml(url), overrides or [])
    if "data" not in raw:
        raise ConfigError(f"config '{url}' has no 'data' section (it needs at least data.store)")
    return from_dict(JobConfig, raw)
