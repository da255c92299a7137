"""The model section of a job config, and the function that builds a model from it."""

from __future__ import annotations

from dataclasses import dataclass

from strata.errors import ConfigError

GNN_NAMES = ("gcn", "sage", "gat", "gcnii")


@dataclass
class ModelConfig:
    """Which GNN to train and its shape."""

    name: str = "sage"
    """One of gcn, sage, gat, gcnii."""
    hidden: int = 128
    """Hidden width (per head for gat)."""
    num_layers: int = 2
    """Number of graph layers (message-passing steps)."""
    dropout: float = 0.5
    """Dropout on each layer's input."""
    heads: int = 8
    """Attention heads of hidden gat layers."""
    out_heads: int = 1
    """Attention heads of the last gat layer (averaged)."""
    attn_dropout: float = 0.6
    """Dropout on gat attention coefficients."""
    alpha: float = 0.1
    """gcnii: weight of the initial residual."""
    lambda_: float = 0.5
    """gcnii: strength of the identity mapping, beta_l = log(lambda/l + 1)."""

    def __post_init__(self) -> None:
        if self.name not in GNN_NAMES:
            raise ConfigError(f"model.name must be one of {', '.join(GNN_NAMES)}, got '{self.name}'")
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be at least 1, got {self.hidden}")
        if self.num_layers < 1:
            raise ConfigError(f"model.num_layers must be at least 1, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"model.attn_dropout must be in [0, 1), got {self.attn_dropout}")
        if self.heads < 1 or self.out_heads < 1:
            raise ConfigError("model.heads and model.out_heads must be at least 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"model.alpha must be in [0, 1], got {self.alpha}")
        if self.lambda_ <= 0:
            raise ConfigError(f"model.lambda_ must be positive, got {self.lambda_}")


