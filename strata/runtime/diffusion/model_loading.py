"""What a sampler reads from disk: one diffusion model's EMA weights from its newest complete
checkpoint, or a set of decentralized experts and their router from the set's manifest.

An expert set (written by :mod:`strata.runtime.diffusion.experts`)::

    SET/                          by default RUN_DIR/experts
      manifest.json               the set: written last and atomically (see ExpertSetManifest)
      clusters.npz                cluster id of every image of the store, k-means centres, meta
      expert-000/checkpoints/     expert 0's checkpoints (the diffusion trainer's format,
      expert-000/samples/         strata.storage.checkpoint) and its sample grids
      ...
      router/checkpoints/         the router's checkpoints; each shard's 'meta' says the
                                  number of clusters it was trained for

Paths in the manifest are relative to its folder when they lie beneath it (so a set can be
moved as a whole), full URLs otherwise (checkpoint.dir set elsewhere).

A diffusion checkpoint's shard holds ``model``, ``ema`` (its ``shadow`` maps parameter names
to averaged weights) and ``config`` (the diffusion_model and noise sections and the
executor), so a run directory is enough to rebuild the model. A data-parallel checkpoint's
shards are replicas; a pipeline's hold each layer in the shard of the stage that trained it.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from strata.errors import CheckpointError, ConfigError
from strata.models.diffusion.config import (
    DiffusionModelConfig,
    NoiseConfig,
    build_diffusion,
)
from strata.models.diffusion.layered import LayeredDiffusion
from strata.models.diffusion.router import ExpertMixture, Router
from strata.storage import checkpoint, fs

MANIFEST_FORMAT = "strata-expert-set"
MANIFEST_VERSION = 1


@dataclass
class LoadedModel:
    """A denoiser with its EMA weights, and what it was built from."""

    model: LayeredDiffusion
    model_cfg: DiffusionModelConfig
    noise_cfg: NoiseConfig
    step: int
    checkpoint_dir: str


@dataclass
class ExpertSetManifest:
    """The manifest of an expert set: everything needed to sample from it, and to check that
    jobs adding experts to it at different times agree on what the set is."""

    num_experts: int
    """k: experts, one per cluster."""
    image_shape: list[int]
    """(C, H, W) of the images every expert and the router take."""
    num_classes: int
    store: str
    """The image store that was clustered and trained on."""
    store_checksum: str
    """Checksum of the store's images: a set belongs to one data set."""
    clusters: str
    """The cluster file (relative to the manifest's folder, or a URL)."""
    experts: list[str]
    """Checkpoint root of each expert, in cluster order."""
    router: str
    """Checkpoint root of the router."""
    router_num_clusters: int
    """The number of clusters the router is trained to tell apart (must equal num_experts)."""
    router_hidden: int
    router_num_classes: int
    """Classes the router is told (0: it routes on x_t and t alone)."""
    diffusion_model: dict[str, Any]
    noise: dict[str, Any]
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    def identity(self) -> dict[str, Any]:
        """What two jobs training parts of one set must agree on, the model and noise configs
        key by key (``diffusion_model.hidden``), so a refusal names only the keys that differ."""
        keep = ("num_experts", "image_shape", "num_classes", "store_checksum", "clusters", "experts", "router",
                "router_num_clusters", "router_hidden", "router_num_classes")
        out = {key: getattr(self, key) for key in keep}
        for section in ("diffusion_model", "noise"):
            out.update({f"{section}.{key}": value for key, value in getattr(self, section).items()})
        return out


def write_manifest(url: str, manifest: ExpertSetManifest) -> None:
    """Write ``manifest`` to ``url`` atomically: a reader sees the old file or the new one."""
    fs.write_atomically(url, manifest.to_json())


def read_manifest(url: str) -> ExpertSetManifest:
    if not fs.exists(url):
        raise CheckpointError(f"no expert-set manifest at '{url}'; train the set with diffusion.executor=experts")
    try:
        raw = json.loads(fs.read_text(url))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{url}' is not an expert-set manifest (not JSON: {exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"'{url}' is not an expert-set manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
    if raw.get("version") != MANIFEST_VERSION:
        raise CheckpointError(
            f"expert-set manifest '{url}' has version {raw.get('version')}; this strata reads version {MANIFEST_VERSION}"
        )
    try:
        return ExpertSetManifest(**raw)
    except TypeError as exc:
        raise CheckpointError(f"expert-set manifest '{url}' does not have the expected keys: {exc}") from exc


def relative_to(base: str, url: str) -> str:
    """``url`` relative to folder ``base`` when it lies beneath it, else ``url`` unchanged."""
    base, url = base.rstrip("/"), url.rstrip("/")
    return url[len(base) + 1 :] if url.startswith(base + "/") else url


def resolve(base: str, path: str) -> str:
    """The URL of a manifest path: full URLs and absolute paths as they are, others under ``base``."""
    return path if "://" in path or posixpath.isabs(path) else fs.join(base, path)


def model_card(model_cfg: DiffusionModelConfig, noise_cfg: NoiseConfig, executor: str) -> dict[str, Any]:
    """The ``config`` entry of a diffusion checkpoint shard."""
    return {"diffusion_model": asdict(model_cfg), "noise": asdict(noise_cfg), "executor": executor}


def configs_from(card: dict[str, Any], where: str) -> tuple[DiffusionModelConfig, NoiseConfig]:
    try:
        return DiffusionModelConfig(**card["diffusion_model"]), NoiseConfig(**card["noise"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{where} does not describe a diffusion model strata can build: {exc}") from exc


def load_ema_model(
    root: str,
    *,
    model_cfg: DiffusionModelConfig | None = None,
    noise_cfg: NoiseConfig | None = None,
    device: str = "cpu",
) -> LoadedModel:
    """The EMA weights of the newest complete checkpoint under ``root``, in eval mode.

    The configs come from the checkpoint; ``model_cfg``/``noise_cfg`` are for checkpoints
    that do not record theirs (and must then be given)."""
    step = checkpoint.latest_step(root)
    if step is None:
        raise CheckpointError(f"no complete checkpoint under '{root}'; train first, or point at a run directory that has one")
    marker = checkpoint.read_marker(root, step)
    shards = [checkpoint.read_shard(root, step, 0)]
    if "ema" not in shards[0]:
        raise CheckpointError(not_a_diffusion_checkpoint(root, step, shards[0]))
    card = shards[0].get("config")
    if card is not None:
        model_cfg, noise_cfg = configs_from(card, f"checkpoint step {step} under '{root}'")
    elif model_cfg is None or noise_cfg is None:
        raise CheckpointError(
            f"checkpoint step {step} under '{root}' does not record which model it holds; pass the job config (--config)"
        )
    model = build_diffusion(model_cfg)
    owner = [0] * len(model.layers)
    if card is not None and card.get("executor") == "pipeline" and marker["world_size"] > 1:
        # Each stage trained (and averaged) only its own layers: take each layer from its stage.
        from strata.partitioners.stages import split_stages
        from strata.runtime.diffusion.block_pipeline import parameter_costs

        ranges = split_stages(parameter_costs(model.layers), marker["world_size"])
        owner = [stage for stage, span in enumerate(ranges) for _ in span]
        shards += [checkpoint.read_shard(root, step, r) for r in range(1, marker["world_size"])]
    weights: dict[str, torch.Tensor] = {}
    for name in model.state_dict():
        shard = shards[owner[int(name.split(".")[1])]] if name.startswith("layers.") else shards[0]
        source = shard["ema"]["shadow"] if name in shard["ema"]["shadow"] else shard["model"]
        if name not in source:
            raise CheckpointError(f"checkpoint step {step} under '{root}' has no weight '{name}' for its model config")
        weights[name] = source[name]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint step {step} under '{root}' does not fit its model config: {exc}") from exc
    return LoadedModel(model.to(device).eval(), model_cfg, noise_cfg, step, root)


def not_a_diffusion_checkpoint(root: str, step: int, shard: dict[str, Any]) -> str:
    """Why a checkpoint without EMA weights cannot be sampled from: most often it is a GNN's."""
    sampled = "'strata sample' draws images from diffusion runs (task: diffusion) and expert sets"
    if "best_model" in shard or "job" in shard:
        return (
            f"checkpoint step {step} under '{root}' is from a node-classification (GNN) run, not a diffusion model: "
            f"{sampled}. A GNN run's accuracy is printed by 'strata train' and logged in its metrics.jsonl"
        )
    return f"checkpoint step {step} under '{root}' holds no diffusion model (no EMA weights): {sampled}"


def load_router(root: str, *, device: str = "cpu") -> tuple[Router, int]:
    """The router of the newest complete checkpoint under ``root`` and its step."""
    step = checkpoint.latest_step(root)
    if step is None:
        raise CheckpointError(
            f"the router has no complete checkpoint under '{root}'; train it (experts.train_router=only runs just that)"
        )
    shard = checkpoint.read_shard(root, step, 0)
    meta = shard.get("meta", {})
    try:
        router = Router(
            image_shape=tuple(meta["image_shape"]), num_clusters=int(meta["num_clusters"]), hidden=int(meta["hidden"]),
            num_classes=int(meta.get("num_classes", 0)),
        )
        router.load_state_dict(shard["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"router checkpoint step {step} under '{root}' cannot be loaded: {exc}") from exc
    return router.to(device).eval(), step


@dataclass
class ExpertSet:
    """A loaded expert set."""

    experts: list[LoadedModel]
    router: Router
    manifest: ExpertSetManifest
    url: str

    def mixture(self, mode: str = "top1") -> ExpertMixture:
        return ExpertMixture([e.model for e in self.experts], self.router, mode=mode)


def load_expert_set(url: str, *, image_shape: tuple[int, ...] | None = None, device: str = "cpu") -> ExpertSet:
    """The experts (EMA weights) and router of the set whose manifest is at ``url``.

    Refused, before any weights load, when the router was trained for another number of
    clusters than the set has experts, or the set is for images of another shape than
    ``image_shape``; and when an expert has no complete checkpoint."""
    manifest = read_manifest(url)
    base = posixpath.dirname(url.rstrip("/"))
    k = manifest.num_experts
    if len(manifest.experts) != k:
        raise CheckpointError(f"expert-set manifest '{url}' says {k} experts but lists {len(manifest.experts)} checkpoints")
    if manifest.router_num_clusters != k:
        raise CheckpointError(_wrong_k(url, manifest.router_num_clusters, k))
    if image_shape is not None and tuple(image_shape) != tuple(manifest.image_shape):
        raise CheckpointError(
            f"expert set '{url}' is for images of shape {tuple(manifest.image_shape)} but these are {tuple(image_shape)}; "
            "use a set trained on this store"
        )
    roots = [resolve(base, path) for path in manifest.experts]
    missing = [i for i, root in enumerate(roots) if checkpoint.latest_step(root) is None]
    if missing:
        raise CheckpointError(
            f"expert set '{url}': expert(s) {', '.join(map(str, missing))} of {k} have no complete checkpoint "
            f"(first: '{roots[missing[0]]}'); train each with experts.expert=<i>, or all with experts.expert=-1"
        )
    router, _ = load_router(resolve(base, manifest.router), device=device)
    if router.num_clusters != k:
        raise CheckpointError(_wrong_k(url, router.num_clusters, k))
    if router.num_classes not in (0, manifest.num_classes):
        raise CheckpointError(
            f"expert set '{url}': its router was trained on {router.num_classes} classes, the experts on {manifest.num_classes}"
        )
    if tuple(router.image_shape) != tuple(manifest.image_shape):
        raise CheckpointError(
            f"expert set '{url}': its router takes images of shape {router.image_shape}, its experts {tuple(manifest.image_shape)}"
        )
    model_cfg, noise_cfg = configs_from({"diffusion_model": manifest.diffusion_model, "noise": manifest.noise}, f"manifest '{url}'")
    experts = [load_ema_model(root, model_cfg=model_cfg, noise_cfg=noise_cfg, device=device) for root in roots]
    for i, expert in enumerate(experts):
        if tuple(expert.model.image_shape) != tuple(manifest.image_shape) or asdict(expert.noise_cfg) != manifest.noise:
            raise CheckpointError(
                f"expert set '{url}': expert {i} ('{roots[i]}') was trained with another model or noise config than the "
                "manifest records; retrain it into this set"
            )
    return ExpertSet(experts, router, manifest, url)


def _wrong_k(url: str, router_k: int, k: int) -> str:
    return (
        f"expert set '{url}' has {k} experts but its router was trained for {router_k} clusters; "
        f"train a router for this set's {k} clusters (experts.train_router=only with experts.num_experts={k})"
    )

