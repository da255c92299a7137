"""The diffusion model and noise sections of a job config, and the function that builds a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from strata.errors import ConfigError
from strata.models.diffusion.dit import dit_layers
from strata.models.diffusion.layered import LayeredDiffusion
from strata.models.diffusion.unet import unet_layers

ARCHS = ("dit", "unet")
SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


@dataclass
class DiffusionModelConfig:
    """Which denoiser to train and its shape. Images are square, image_size x image_size."""

    arch: str = "dit"
    """'dit' (diffusion transformer) or 'unet' (DDPM U-Net)."""
    image_size: int = 8
    """Height and width of the images in pixels."""
    channels: int = 1
    """Image channels (1 for digits, 3 for RGB)."""
    num_classes: int = 10
    """Number of classes for conditioning; 0 = unconditional. Label num_classes means "no class"."""
    hidden: int = 128
    """dit: token width. unet: channels of the first level (levels have hidden * channel_mults[i])."""
    depth: int = 4
    """dit: number of transformer blocks.
    unet: residual blocks per resolution level on the way down (depth + 1 on the way up)."""
    heads: int = 4
    """Attention heads (dit blocks; unet self-attention at the lowest resolution)."""
    patch_size: int = 2
    """dit: side of the square patches that become tokens."""
    mlp_ratio: float = 4.0
    """dit: width of the block MLP relative to hidden."""
    dropout: float = 0.0
    """Dropout inside blocks (dit: after attention and in the MLP; unet: inside residual blocks)."""
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])
    """unet: one entry per resolution level, highest first; each halves the resolution after the first."""
    attention: bool = True
    """unet: self-attention after the residual blocks at the lowest resolution and in the middle."""
    norm_groups: int = 8
    """unet: GroupNorm groups; hidden must be divisible by it."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, got '{self.arch}'")
        for key in ("image_size", "channels", "hidden", "depth", "heads", "patch_size", "norm_groups"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be 0 (unconditional) or more, got {self.num_classes}")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads}); change hidden or heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.arch == "dit":
            if self.image_size % self.patch_size:
                raise ConfigError(
                    f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size}) for arch=dit"
                )
            if self.mlp_ratio <= 0:
                raise ConfigError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        else:
            if not self.channel_mults or any(m < 1 for m in self.channel_mults):
                raise ConfigError(f"channel_mults must be a non-empty list of positive integers, got {self.channel_mults}")
            factor = 2 ** (len(self.channel_mults) - 1)
            if self.image_size % factor:
                raise ConfigError(
                    f"image_size ({self.image_size}) must be divisible by {factor} for {len(self.channel_mults)} "
                    f"U-Net levels (channel_mults {self.channel_mults}); use fewer levels or another size"
                )
            if self.hidden % self.norm_groups:
                raise ConfigError(
                    f"hidden ({self.hidden}) must be divisible by norm_groups ({self.norm_groups}) for arch=unet"
                )


@dataclass
class NoiseConfig:
    """The forward (noising) process and what the model predicts."""

    schedule: str = "cosine"
    """'linear' (DDPM betas 1e-4..0.02, rescaled to the number of steps) or 'cosine' (improved DDPM)."""
    timesteps: int = 1000
    """Number of diffusion steps T; timesteps are integers in [0, T)."""
    prediction: str = "eps"
    """'eps' (the model predicts the noise) or 'v' (v = sqrt(abar) eps - sqrt(1 - abar) x0)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.timesteps < 2:
            raise ConfigError(f"timesteps must be at least 2, got {self.timesteps}")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {', '.join(PREDICTIONS)}, got '{self.prediction}'")


def build_diffusion(cfg: DiffusionModelConfig) -> LayeredDiffusion:
    """The denoiser of ``cfg``: a LayeredDiffusion whose layers an executor may cut into stages."""
    if cfg.arch == "dit":
        layers = dit_layers(
            channels=cfg.channels,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden=cfg.hidden,
            depth=cfg.depth,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout,
            num_classes=cfg.num_classes,
        )
    else:
        layers = unet_layers(
            channels=cfg.channels,
            hidden=cfg.hidden,
            channel_mults=list(cfg.channel_mults),
            depth=cfg.depth,
            heads=cfg.heads,
            attention=cfg.attention,
            groups=cfg.norm_groups,
            dropout=cfg.dropout,
            num_classes=cfg.num_classes,
        )
    return LayeredDiffusion(layers, num_classes=cfg.num_classes, image_shape=(cfg.channels, cfg.image_size, cfg.image_size))
