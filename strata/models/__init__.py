"""Models as ordered lists of layers, so executors can cut them into stages."""

from strata.models.config import ModelConfig, build_gnn
from strata.models.gnn import LayeredModel, run_layers

__all__ = ["LayeredModel", "ModelConfig", "build_gnn", "run_layers"]
