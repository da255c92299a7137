"""Drawing class-conditional samples from a trained model or an expert set, writing them as a
PNG grid and measuring them: what `strata sample` does once its arguments are parsed.

A source is found from one path (:func:`find_source`): a run directory of a single model
(its ``checkpoints/``), a checkpoint root itself, an expert set's manifest, its folder, or a
run directory holding ``experts/manifest.json``. Samples always come from the EMA weights.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from strata.errors import ConfigError, StrataError
from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
from strata.models.diffusion.router import ExpertMixture
from strata.models.diffusion.sampling import Denoiser, ddim_sample, ddpm_sample
from strata.models.diffusion.schedule import NoiseSchedule
from strata.runtime.diffusion.expert_mixture import (
    GUIDANCE_ROUTINGS,
    MIXTURES,
    RoutedMixture,
)
from strata.runtime.diffusion.image_grid import write_grid
from strata.runtime.diffusion.model_loading import load_ema_model, load_expert_set
from strata.storage import checkpoint, fs

SAMPLERS = ("ddim", "ddpm")


@dataclass
class SampleConfig:
    """What to draw and how."""

    num_per_class: int = 8
    """Samples per class (one grid row each); for an unconditional model, samples in all."""
    guidance: float = 2.0
    """Classifier-free guidance scale (1 = none)."""
    steps: int = 50
    """DDIM steps (ddpm always takes every timestep)."""
    sampler: str = "ddim"
    """'ddim' (deterministic given the seed) or 'ddpm' (ancestral, all T steps)."""
    mixture: str = "top1"
    """Expert sets: 'top1' (each sample to the expert the router ranks first), 'top2' (the two it
    ranks highest, by their renormalised probabilities) or 'weighted' (all, by the router's
    probabilities); see :mod:`strata.runtime.diffusion.expert_mixture`."""
    guidance_routing: str = "per_pass"
    """Expert sets with guidance: 'per_pass' (the unconditional pass routed on its own) or
    'per_expert' (both passes of a sample go to the experts chosen for its class)."""
    seed: int = 0
    """Seed of the initial noise (and of DDPM's noise)."""

    def __post_init__(self) -> None:
        if self.num_per_class < 1 or self.steps < 1:
            raise ConfigError(f"num_per_class and steps must be at least 1, got {self.num_per_class} and {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got '{self.sampler}'")
        if self.mixture not in MIXTURES:
            raise ConfigError(f"mixture must be one of {', '.join(MIXTURES)}, got '{self.mixture}'")
        if self.guidance_routing not in GUIDANCE_ROUTINGS:
            raise ConfigError(f"guidance_routing must be one of {', '.join(GUIDANCE_ROUTINGS)}, got '{self.guidance_routing}'")
        if self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance}")


@dataclass
class Source:
    """A loaded denoiser (one model or a mixture of experts) and how it was found."""

    kind: str
    """'model' or 'experts'."""
    path: str
    """The checkpoint root or the manifest."""
    denoiser: Denoiser
    schedule: NoiseSchedule
    num_classes: int
    image_shape: tuple[int, int, int]
    step: int = -1
    """Checkpoint step of a single model (-1 for an expert set)."""


@dataclass
class SampleResult:
    source: str
    kind: str
    out: str
    """Where the PNG grid went."""
    num_samples: int
    seconds: float
    sampler: str
    steps: int
    guidance: float
    mixture: str = ""
    step: int = -1
    expert_share: list[float] = field(default_factory=list)
    """Expert sets: the share of denoiser evaluations each expert got (top1: samples routed
    to it; weighted: its mean router weight)."""
    match_rate: float | None = None
    """With a quality store: share of samples classified as the class they were asked for."""
    fid: float | None = None
    """With a quality store: Frechet distance in the reference classifier's features."""
    quality_store: str = ""


def find_source(path: str) -> tuple[str, str]:
    """('manifest', URL) or ('model', checkpoint root) for a path given on the command line."""
    path = path.rstrip("/") or "/"
    if fs.exists(path) and not fs.isdir(path):
        return "manifest", path
    candidates = []
    if fs.exists(fs.join(path, "manifest.json")):
        candidates.append(("manifest", fs.join(path, "manifest.json")))
    if fs.exists(fs.join(path, "experts", "manifest.json")):
        candidates.append(("manifest", fs.join(path, "experts", "manifest.json")))
    if checkpoint.complete_steps(path):
        candidates.append(("model", path))
    if fs.isdir(fs.join(path, "checkpoints")):
        candidates.append(("model", fs.join(path, "checkpoints")))
    if len(candidates) > 1:
        found = ", ".join(f"'{url}'" for _, url in candidates)
        raise StrataError(f"'{path}' holds more than one thing to sample from ({found}); name one of them")
    if not candidates:
        raise StrataError(
            f"'{path}' is not a run directory with checkpoints/, a checkpoint folder, nor an expert set "
            "(manifest.json); train with 'strata train' first"
        )
    return candidates[0]


def open_source(
    path: str, *, mixture: str = "top1", device: str = "cpu", image_shape: tuple[int, int, int] | None = None,
    model_cfg: DiffusionModelConfig | None = None, noise_cfg: NoiseConfig | None = None, guidance_routing: str = "per_pass",
) -> Source:
    """Load what ``path`` names; ``image_shape`` (of a quality store, say) must match it.
    ``model_cfg``/``noise_cfg`` serve checkpoints that do not record their configs."""
    kind, url = find_source(path)
    if kind == "manifest":
        experts = load_expert_set(url, image_shape=image_shape, device=device)
        denoiser = RoutedMixture([e.model for e in experts.experts], experts.router, mode=mixture,
                                 guidance_routing=guidance_routing).to(device)
        schedule = NoiseSchedule(experts.experts[0].noise_cfg).to(device)
        return Source("experts", url, denoiser, schedule, experts.manifest.num_classes, tuple(experts.manifest.image_shape))
    loaded = load_ema_model(url, model_cfg=model_cfg, noise_cfg=noise_cfg, device=device)
    shape = tuple(loaded.model.image_shape)
    if image_shape is not None and tuple(image_shape) != shape:
        raise StrataError(f"the model under '{url}' makes images of shape {shape} but these are {tuple(image_shape)}")
    schedule = NoiseSchedule(loaded.noise_cfg).to(device)
    return Source("model", url, loaded.model, schedule, loaded.model_cfg.num_classes, shape, loaded.step)


def draw(source: Source, cfg: SampleConfig, *, progress: bool = False) -> tuple[Tensor, Tensor | None]:
    """(images (N, C, H, W) in [-1, 1], requested labels or None): ``num_per_class`` per
    class, class by class."""
    classes = max(source.num_classes, 1)
    y = torch.arange(classes).repeat_interleave(cfg.num_per_class) if source.num_classes else None
    generator = torch.Generator().manual_seed(cfg.seed)
    guidance = cfg.guidance if source.num_classes else 1.0
    n = classes * cfg.num_per_class
    if cfg.sampler == "ddim":
        images = ddim_sample(
            source.denoiser, source.schedule, n, steps=min(cfg.steps, source.schedule.timesteps), y=y,
            guidance_scale=guidance, generator=generator, progress=progress,
        )
    else:
        images = ddpm_sample(source.denoiser, source.schedule, n, y=y, guidance_scale=guidance, generator=generator, progress=progress)
    return images.cpu(), y


def default_out(source: Source, cfg: SampleConfig) -> str:
    """Beside what was sampled: RUN/samples/ for a model, the set's samples/ for experts."""
    if source.kind == "experts":
        return fs.join(posixpath.dirname(source.path), "samples", f"mixture-{cfg.mixture}-{cfg.sampler}.png")
    return fs.join(posixpath.dirname(source.path.rstrip("/")), "samples", f"sample-{source.step:08d}-{cfg.sampler}.png")


def sample(
    path: str, cfg: SampleConfig, *, out: str = "", quality_store: str = "", device: str = "cpu", progress: bool = False,
    model_cfg: DiffusionModelConfig | None = None, noise_cfg: NoiseConfig | None = None,
) -> SampleResult:
    """Load ``path``, draw, write the grid to ``out`` and, given ``quality_store``, measure the
    samples against that store's reference classifier."""
    reference = None
    if quality_store:
        from strata.runtime.diffusion.image_data import load_image_data

        reference = load_image_data(quality_store)
    shape = reference.image_shape if reference is not None else None
    source = open_source(path, mixture=cfg.mixture, device=device, image_shape=shape, model_cfg=model_cfg, noise_cfg=noise_cfg,
                         guidance_routing=cfg.guidance_routing)
    started = time.perf_counter()
    images, y = draw(source, cfg, progress=progress)
    seconds = time.perf_counter() - started
    out = out or default_out(source, cfg)
    write_grid(out, images, rows=max(source.num_classes, 1), scale=max(1, 64 // images.shape[-1]))
    result = SampleResult(
        source=source.path, kind=source.kind, out=out, num_samples=len(images), seconds=seconds, sampler=cfg.sampler,
        steps=cfg.steps if cfg.sampler == "ddim" else source.schedule.timesteps, guidance=cfg.guidance if y is not None else 1.0,
        step=source.step,
    )
    if isinstance(source.denoiser, ExpertMixture):
        routed = source.denoiser.routed
        result.mixture = cfg.mixture
        result.expert_share = (routed / routed.sum().clamp(min=1e-12)).tolist()
    if reference is not None:
        if y is None:
            raise StrataError("a quality report compares samples with the classes they were asked for; this model is unconditional")
        if source.num_classes != reference.num_classes:
            raise StrataError(
                f"the samples are of {source.num_classes} classes but store '{quality_store}' has {reference.num_classes}"
            )
        from strata.runtime.diffusion.quality import (
            quality_report,
            reference_classifier,
        )

        report = quality_report(reference_classifier(quality_store, progress=progress), images, y, reference.images)
        result.match_rate, result.fid, result.quality_store = report.match_rate, report.fid, quality_store
    return result
