"""How processes talk to each other: the distributed config section."""

from __future__ import annotations

import math
from dataclasses import dataclass

from strata.errors import ConfigError
from strata.runtime.dist.topology import BACKENDS


@dataclass
class DistributedConfig:
    """How processes talk to each other."""

    backend: str = "auto"
    """'auto' (nccl with CUDA devices, gloo otherwise), 'gloo' or 'nccl'."""
    timeout_seconds: float = 600.0
    """How long forming the group and any one collective may wait for the slowest rank."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"distributed.backend must be one of {', '.join(BACKENDS)}, got '{self.backend}'")
        if not (self.timeout_seconds > 0 and math.isfinite(self.timeout_seconds)):
            raise ConfigError(f"distributed.timeout_seconds must be a positive number, got {self.timeout_seconds}")
