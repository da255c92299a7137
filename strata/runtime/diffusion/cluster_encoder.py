"""A small image encoder trained on the store itself, without labels, whose features cluster an
expert set by what the images show rather than by their pixels.

The Decentralized Diffusion Models paper clusters on DINOv2 features; nothing is downloaded
here, so the encoder learns in the same job, contrastively (SimCLR, Chen et al. 2020, with
nearest-neighbour positives as in NNCLR, Dwibedi et al. 2021): each image and one of its
``neighbours`` nearest images in pixel space, each randomly augmented (small rotation, scale
and shift, pixel noise), are pulled together and pushed away from every other image of the
batch (the NT-Xent loss). Augmentations alone teach invariance to where the ink is; the
neighbour pairs chain images of one kind together, so the features separate kinds (on digits,
balanced k-means with k = 10 on them puts 0.90 of the images in their cluster's majority class,
against 0.70 with augmented pairs alone, measured while building this).

Seeded and small enough for a CPU (a two-convolution net, a few hundred steps). It is trained
once per set and kept beside the clusters (``encoder.pt``: weights, config and the seed), so
later jobs of the set reuse it; its SHA-256 goes into the set's manifest.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strata.errors import StrataError


@dataclass(frozen=True)
class EncoderConfig:
    """How the clustering encoder is trained (from the experts section)."""

    steps: int = 400
    batch_size: int = 256
    neighbours: int = 5
    """Positives are drawn among each image's this many nearest images (pixel distance); 0 =
    two views of the image itself (plain SimCLR)."""
    dim: int = 32
    """Width of the features that are clustered."""
    hidden: int = 32
    """Channels of the convolutions."""
    lr: float = 3e-3
    temperature: float = 0.2
    seed: int = 0


class ContrastiveEncoder(nn.Module):
    """(N, C, H, W) images -> (N, dim) features; ``project`` adds SimCLR's projection head,
    used only in training (the features before it cluster better)."""

    def __init__(self, channels: int, cfg: EncoderConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.body = nn.Sequential(
            nn.Conv2d(channels, h, 3, padding=1), nn.SiLU(),
            nn.Conv2d(h, 2 * h, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * h, 2 * h, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * h, cfg.dim),
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def project(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """A random view of each image: rotation within +-15 degrees, scale 0.85-1.15, shift within
    an eighth of the side, then Gaussian pixel noise (std 0.1); values stay in [-1, 1]."""
    n = len(x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(15)
    scale = 0.85 + 0.3 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.25
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Background is -1: sample x + 1 with zero padding, then shift back.
    view = F.grid_sample(x + 1.0, grid, align_corners=False, padding_mode="zeros") - 1.0
    return (view + 0.1 * torch.randn(x.shape, generator=generator)).clamp(-1.0, 1.0)


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """SimCLR's loss: each of the 2N views must pick its partner among the other 2N - 1."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(a)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, partner)


def nearest_neighbours(images: Tensor, m: int, chunk: int = 1024) -> Tensor:
    """(N, m) indices of each image's m nearest other images in pixel space; O(N^2) time,
    O(chunk x N) memory."""
    flat = images.flatten(1)
    m = min(m, len(flat) - 1)
    out = []
    for start in range(0, len(flat), chunk):
        d = torch.cdist(flat[start : start + chunk], flat)  # (chunk, N)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")
        out.append(d.topk(m, largest=False).indices)
    return torch.cat(out)


def train_encoder(images: Tensor, cfg: EncoderConfig, *, progress: bool = False) -> ContrastiveEncoder:
    """An encoder trained on ``images`` (N, C, H, W) in [-1, 1] alone, on one CPU thread: the
    net is tiny, so more threads only spin, and one thread makes the result the same bit for bit
    in every job whatever its thread settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_encoder(images.cpu(), cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train_encoder(images: Tensor, cfg: EncoderConfig, progress: bool) -> ContrastiveEncoder:
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = ContrastiveEncoder(images.shape[1], cfg)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr)
    batch = min(cfg.batch_size, len(images))
    neighbours = nearest_neighbours(images, cfg.neighbours) if cfg.neighbours and len(images) > 1 else None
    encoder.train()
    for _ in tqdm(range(cfg.steps), desc="cluster encoder", disable=not progress, leave=False):
        rows = torch.randperm(len(images), generator=generator)[:batch]
        partners = rows
        if neighbours is not None:
            partners = neighbours[rows, torch.randint(0, neighbours.shape[1], (batch,), generator=generator)]
        a, b = augment(images[rows], generator), augment(images[partners], generator)
        loss = nt_xent(encoder.project(a), encoder.project(b), cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return encoder.eval()


@torch.no_grad()
def encoder_features(encoder: ContrastiveEncoder, images: Tensor, batch_size: int = 1024) -> np.ndarray:
    """(N, dim) float32 unit-length features of ``images``."""
    out = [F.normalize(encoder(images[i : i + batch_size]), dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def encoder_bytes(encoder: ContrastiveEncoder, cfg: EncoderConfig, channels: int) -> bytes:
    """The file kept beside the clusters: weights, config and input channels."""
    buffer = io.BytesIO()
    torch.save({"config": asdict(cfg), "channels": channels, "weights": encoder.state_dict()}, buffer)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_encoder(data: bytes, where: str) -> tuple[ContrastiveEncoder, EncoderConfig]:
    """The encoder of a file written by :func:`encoder_bytes`."""
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        cfg = EncoderConfig(**saved["config"])
        encoder = ContrastiveEncoder(int(saved["channels"]), cfg)
        encoder.load_state_dict(saved["weights"])
    except (KeyError, TypeError, RuntimeError, ValueError, EOFError) as exc:
        raise StrataError(
            f"the clustering encoder '{where}' cannot be read ({exc}); delete the set's clusters and encoder to cluster again"
        ) from exc
    return encoder.eval(), cfg
