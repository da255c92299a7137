"""Diffusion models (DiT, DDPM U-Net) as ordered layers, noise schedules and samplers."""

from strata.models.diffusion.config import (
    DiffusionModelConfig,
    NoiseConfig,
    build_diffusion,
)
from strata.models.diffusion.layered import LayeredDiffusion, run_layers
from strata.models.diffusion.sampling import ddim_sample, ddpm_sample, guided_prediction
from strata.models.diffusion.schedule import NoiseSchedule

__all__ = [
    "DiffusionModelConfig",
    "LayeredDiffusion",
    "NoiseConfig",
    "NoiseSchedule",
    "build_diffusion",
    "ddim_sample",
    "ddpm_sample",
    "guided_prediction",
    "run_layers",
]
