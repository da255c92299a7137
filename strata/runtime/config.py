"""Config sections every job shares: the data set, checkpoints and metrics.

Loading them imports no trainer, no executor, no DGL and no DeepSpeed.
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
"""Values of a job's ``precision`` key."""


@dataclass
class DataConfig:
    """The data set a job trains on."""

    store: str = ""
    """URL of the dataset store (written by `strata ingest`)."""
    normalize_features: bool = False
    """Scale each feature row to sum 1 (the Planetoid convention of the GCN paper)."""

    def __post_init__(self) -> None:
        if not self.store:
            raise ConfigError("data.store is required: the URL of a store written by 'strata ingest'")


@dataclass
class CheckpointConfig:
    """When and where to checkpoint."""

    every_steps: int = 0
    """Write a checkpoint every this many steps; 0 = only at the end."""
    dir: str = ""
    """Checkpoint root (any fsspec URL); empty = checkpoints/ in the run directory."""
    keep: int = 3
    """How many complete checkpoints to keep; 0 = all."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep < 0:
            raise ConfigError("checkpoint.every_steps and checkpoint.keep must be >= 0")


@dataclass
class MetricsConfig:
    """Where metrics go."""

    port: int = 0
    """Base port of the Prometheus endpoint; rank r serves on port + local rank. 0 = off."""
    addr: str = "0.0.0.0"
    """Address the endpoint binds to."""
    pushgateway: str = ""
    """host:port of a Pushgateway that receives a final summary; empty = off."""
    jsonl: str = ""
    """JSON-lines log written by rank 0; empty = metrics.jsonl in the run directory."""
    job: str = "strata"
    """Value of the `job` label."""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"metrics.port must be in 0..65535, got {self.port}")
