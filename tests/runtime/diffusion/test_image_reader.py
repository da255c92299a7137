"""Images read from the store a batch at a time (``diffusion.images_in_memory: false``): the same
rows as in memory, only the chunks a batch needs, a bounded cache, training unchanged, and a
corrupt chunk named at the batch that reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from strata.errors import ConfigError, StoreError
from strata.models.diffusion.config import DiffusionModelConfig, NoiseConfig
from strata.runtime.config import CheckpointConfig, DataConfig, MetricsConfig
from strata.runtime.diffusion.config import DiffusionTrainConfig
from strata.runtime.diffusion.image_data import load_image_data
from strata.runtime.diffusion.trainer import train_diffusion
from strata.storage import layout
from strata.storage.ingest.images import image_meta
from strata.storage.store import DatasetWriter

CHUNK_ROWS = 16
ROW_BYTES = 1 * 8 * 8 * 4


def _store(url: str, count: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random 1x8x8 images in chunks of 16 rows, with labels."""
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (count, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, count)
    with DatasetWriter(url, "chunked", num_nodes=count) as writer:
        writer.write(layout.IMAGES, images, chunk_rows=CHUNK_ROWS)
        writer.write(layout.IMAGE_LABEL, labels)
        writer.commit(**image_meta(count, (1, 8, 8), labels, layout="nchw", dtype=np.float32, value_range=(-1.0, 1.0)))
    return images, labels


def test_rows_are_the_in_memory_rows_and_only_their_chunks_are_read(tmp_path: Path) -> None:
    url = str(tmp_path / "images")
    images, labels = _store(url)
    data = load_image_data(url, in_memory=False, cache_bytes=4 * CHUNK_ROWS * ROW_BYTES)
    assert len(data.images) == 200 and data.images.shape == torch.Size([200, 1, 8, 8])
    assert data.labels.tolist() == labels.tolist() and data.num_classes == 4

    index = torch.tensor([37, 3, 199, 37, 0, 18])  # unsorted, repeated, first and last rows
    np.testing.assert_array_equal(data.images[index].numpy(), images[index.numpy()])
    assert data.images.chunks_read == 4  # chunks 2, 0, 12 and 1: never the whole set
    data.images[torch.tensor([5, 20])]
    assert data.images.chunks_read == 4  # both chunks still cached

    # Four chunks fit: touching five more evicts the oldest, which is then read again.
    data.images[torch.arange(5) * CHUNK_ROWS + 3 * CHUNK_ROWS]
    assert data.images.chunks_read == 9
    data.images[torch.tensor([0])]
    assert data.images.chunks_read == 10

    uncached = load_image_data(url, in_memory=False, cache_bytes=0).images
    uncached[torch.tensor([1, 2])]
    uncached[torch.tensor([3])]
    assert uncached.chunks_read == 2

    with pytest.raises(IndexError, match=r"image ids must be in \[0, 200\), got 0..200"):
        data.images[torch.tensor([0, 200])]


def _train(store: str, run_dir: str, in_memory: bool) -> dict[str, torch.Tensor]:
    model = DiffusionModelConfig(arch="dit", image_size=8, channels=1, num_classes=4, hidden=16, depth=1, heads=2, patch_size=4)
    cfg = DiffusionTrainConfig(
        steps=3, batch_size=24, lr=1e-2, warmup_steps=0, log_every=0, sample_per_class=1, sample_steps=1,
        images_in_memory=in_memory, image_cache_mb=0,
    )
    train_diffusion(
        DataConfig(store=store), model, NoiseConfig(timesteps=50), cfg, CheckpointConfig(), MetricsConfig(),
        run_dir=run_dir, progress=False,
    )
    from strata.runtime.diffusion.model_loading import load_ema_model

    return load_ema_model(str(Path(run_dir) / "checkpoints")).model.state_dict()


def test_training_from_the_store_ends_with_the_weights_of_training_in_memory(tmp_path: Path) -> None:
    url = str(tmp_path / "images")
    _store(url)
    from_memory = _train(url, str(tmp_path / "memory"), True)
    from_store = _train(url, str(tmp_path / "store"), False)
    for name, value in from_memory.items():
        torch.testing.assert_close(from_store[name], value, rtol=0, atol=0, msg=name)


def test_a_corrupt_chunk_is_named_by_the_batch_that_reads_it(tmp_path: Path) -> None:
    url = str(tmp_path / "images")
    images, _ = _store(url)
    chunks = sorted(p for p in (tmp_path / "images" / "images" / "data").rglob("*") if p.is_file() and p.name != "zarr.json")
    victim = chunks[-1]
    victim.write_bytes(victim.read_bytes()[:7])
    data = load_image_data(url, in_memory=False)  # opening reads no image chunk
    np.testing.assert_array_equal(data.images[torch.tensor([0, 1])].numpy(), images[:2])
    with pytest.raises(StoreError, match=r"array 'images/data' chunk \d+ \(rows \d+\.\.\d+, file images/data/c/[\d/]+\) cannot be decoded"):
        data.images[torch.arange(200)]
    with pytest.raises(StoreError, match="cannot be decoded"):
        load_image_data(url)  # in memory: refused at load


def test_images_in_memory_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="image_cache_mb must be >= 0"):
        DiffusionTrainConfig(image_cache_mb=-1)
    with pytest.raises(ConfigError, match="experts cluster the whole set in memory"):
        DiffusionTrainConfig(executor="experts", images_in_memory=False)
