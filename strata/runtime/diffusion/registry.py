"""Diffusion engines by name.

Each engine module under :mod:`strata.runtime.diffusion` has a ``build(ctx)``; this table is
the only place that names them, so a new engine is one file and one line here. Modules load
only when their engine is built: DeepSpeed is never imported by a run that does not use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strata.runtime.diffusion.config import DiffusionTrainConfig
    from strata.runtime.diffusion.engines import DiffusionEngine, EngineContext

ENGINES: dict[str, str] = {
    "ddp": "engines",
    "deepspeed": "deepspeed_engine",
    "pipeline": "block_pipeline",
}
"""Engine name -> module under strata.runtime.diffusion."""


def engine_name(cfg: DiffusionTrainConfig) -> str:
    """The engine a diffusion config asks for: the pipeline's own, or diffusion.engine."""
    return "pipeline" if cfg.executor == "pipeline" else cfg.engine


def build_engine(ctx: EngineContext) -> DiffusionEngine:
    """The engine ``ctx.cfg`` names, built by its module's ``build``."""
    module = importlib.import_module(f"strata.runtime.diffusion.{ENGINES[engine_name(ctx.cfg)]}")
    return module.build(ctx)
