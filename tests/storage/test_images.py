"""Image stores: ingest from arrays, files and folders, the digits set, the synthetic generator,
the in-memory reader and the `strata ingest images|digits|synthetic-images` command line."""

from __future__ import annotations

import posixpath
from pathlib import Path

import numpy as np
import pytest
import torch

from strata.errors import IngestError, StoreError
from strata.runtime.diffusion.image_data import load_image_data
from strata.storage import fs, layout
from strata.storage.ingest.images import ingest_digits, ingest_images, write_images
from strata.storage.ingest.synthetic_images import (
    SyntheticImagesConfig,
    write_synthetic_images,
)
from strata.storage.store import ArrayAppender, DatasetStore
from tests.helpers.cli import run_strata
from tests.helpers.graphs import random_graph


def _leftovers(url: str) -> list[str]:
    """What a failed write left: the store itself or a hidden partial sibling."""
    head, name = posixpath.split(url.rstrip("/"))
    return [n for n in fs.listdir(head) if n == name or n.startswith(f".{name}.")]


def _stored(url: str) -> tuple[np.ndarray, np.ndarray | None]:
    data = load_image_data(url)
    return data.images.numpy(), None if data.labels is None else data.labels.numpy()


# -- round trips -------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
_U8_NCHW = _RNG.integers(0, 256, (6, 3, 5, 7), dtype=np.uint8)
_F32_NHW = _RNG.random((6, 5, 7), dtype=np.float32)
_F64_SIGNED = _RNG.uniform(-1, 1, (6, 1, 5, 7))
_F16_NHWC = _RNG.random((6, 5, 7, 4)).astype(np.float16)


@pytest.mark.parametrize(
    "raw, kwargs, expected",
    [
        pytest.param(_U8_NCHW, {}, _U8_NCHW / 127.5 - 1, id="uint8-nchw"),
        pytest.param(np.moveaxis(_U8_NCHW, 1, -1), {}, _U8_NCHW / 127.5 - 1, id="uint8-nhwc"),
        pytest.param(_F32_NHW, {}, _F32_NHW[:, None].astype(np.float64) * 2 - 1, id="float32-nhw"),
        pytest.param(_F64_SIGNED, {"value_range": (-1, 1)}, _F64_SIGNED, id="float64-signed-nchw"),
        pytest.param(_F16_NHWC, {}, np.moveaxis(_F16_NHWC.astype(np.float64), -1, 1) * 2 - 1, id="float16-nhwc"),
    ],
)
def test_layouts_and_dtypes_round_trip(store_root: str, raw: np.ndarray, kwargs: dict, expected: np.ndarray) -> None:
    url = f"{store_root}/img"
    labels = np.arange(len(raw)) % 3
    meta = write_images(raw, url, labels=labels, **kwargs)
    images, got_labels = _stored(url)
    assert images.dtype == np.float32 and images.shape == expected.shape
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert got_labels.tolist() == labels.tolist()
    assert meta.num_classes == 3 and meta.extra["image_shape"] == list(expected.shape[1:])
    assert DatasetStore.open(url).verify() == []


def test_ambiguous_shape_reads_nchw_unless_told(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # (N, 3, 6, 4): both the first and the last axis could hold channels.
    raw = np.random.default_rng(1).integers(0, 256, (2, 3, 6, 4), dtype=np.uint8)
    write_images(raw, str(tmp_path / "auto"))
    assert "could be NCHW or NHWC; reading them as NCHW" in caplog.text
    write_images(raw, str(tmp_path / "hwc"), layout="nhwc")
    assert _stored(str(tmp_path / "auto"))[0].shape == (2, 3, 6, 4)
    hwc, _ = _stored(str(tmp_path / "hwc"))
    assert hwc.shape == (2, 4, 3, 6)
    np.testing.assert_allclose(hwc, np.moveaxis(raw, -1, 1) / 127.5 - 1, atol=1e-6)


def test_explicit_layout_allows_other_channel_counts(tmp_path: Path) -> None:
    raw = np.zeros((2, 2, 5, 5), np.uint8)
    with pytest.raises(IngestError, match="cannot tell the channel axis of images shaped \\(2, 5, 5\\).*layout='nchw'"):
        write_images(raw, str(tmp_path / "a"))
    write_images(raw, str(tmp_path / "b"), layout="nchw")
    assert _stored(str(tmp_path / "b"))[0].shape == (2, 2, 5, 5)


def test_npy_npz_and_separate_labels(store_root: str, tmp_path: Path) -> None:
    raw = np.random.default_rng(2).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0])
    np.save(tmp_path / "imgs.npy", raw)
    np.save(tmp_path / "labels.npy", labels)
    np.savez(tmp_path / "both.npz", x=raw, y=labels)
    expected = np.moveaxis(raw, -1, 1) / 127.5 - 1

    ingest_images(str(tmp_path / "imgs.npy"), f"{store_root}/a", labels=str(tmp_path / "labels.npy"))
    ingest_images(str(tmp_path / "both.npz"), f"{store_root}/b")
    ingest_images(str(tmp_path / "imgs.npy"), f"{store_root}/c")
    for name in "ab":
        images, got = _stored(f"{store_root}/{name}")
        np.testing.assert_allclose(images, expected, atol=1e-6)
        assert got.tolist() == labels.tolist()
    # Sources read through fsspec too (memory:// has no memory map).
    fs.write_bytes(f"{store_root}/in/imgs.npy", (tmp_path / "imgs.npy").read_bytes())
    fs.write_bytes(f"{store_root}/in/both.npz", (tmp_path / "both.npz").read_bytes())
    ingest_images(f"{store_root}/in/imgs.npy", f"{store_root}/d", labels=f"{store_root}/in/both.npz")
    images, got = _stored(f"{store_root}/d")
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert got.tolist() == labels.tolist()
    unlabelled = load_image_data(f"{store_root}/c")
    assert unlabelled.labels is None and unlabelled.num_classes == 0
    assert not DatasetStore.open(f"{store_root}/c").has(layout.IMAGE_LABEL)


def test_folder_of_images_is_read_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (2, 0, 1):  # written out of order
        np.save(folder / f"img{i:03d}.npy", np.full((4, 4), i / 2, np.float32))
    (folder / "notes.txt").write_text("not an image")
    ingest_images(str(folder), str(tmp_path / "s"))
    images, _ = _stored(str(tmp_path / "s"))
    assert images.shape == (3, 1, 4, 4)
    assert images[:, 0, 0, 0].tolist() == [-1.0, 0.0, 1.0]


# -- bad input ---------------------------------------------------------------------------------


def _fail(tmp_path: Path, pattern: str, source, **kwargs) -> None:
    url = str(tmp_path / "out")
    with pytest.raises(IngestError, match=pattern):
        if isinstance(source, (str, Path)):
            ingest_images(str(source), url, **kwargs)
        else:
            write_images(source, url, **kwargs)
    assert _leftovers(url) == []


def test_mixed_shapes_name_the_image_and_both_shapes(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"{i}.npy", np.zeros((8, 9) if i == 2 else (8, 8), np.uint8))
    _fail(tmp_path, r"image 2 \('2.npy'\) has shape \(8, 9\) but image 0 has shape \(8, 8\)", folder)
    _fail(tmp_path, r"image 1 has shape \(3, 4, 4\) but image 0 has shape \(3, 5, 5\)", [np.zeros((3, 5, 5)), np.zeros((3, 4, 4))])


def test_mixed_dtypes_in_a_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((4, 4), np.uint8))
    np.save(folder / "b.npy", np.zeros((4, 4), np.float32))
    _fail(tmp_path, r"image 1 \('b.npy'\) is float32 but image 0 is uint8", folder)


def test_unsupported_dtype_is_named_with_the_accepted_ones(tmp_path: Path) -> None:
    _fail(tmp_path, "dtype int64 are not supported; accepted: uint8, float16, float32, float64", np.zeros((2, 4, 4), np.int64))
    _fail(tmp_path, "dtype bool are not supported", np.zeros((2, 4, 4), bool))


def test_values_outside_the_range_name_min_max_and_range(tmp_path: Path) -> None:
    images = np.zeros((4, 4, 4), np.float32)
    images[3, 0, 0], images[3, 1, 1] = -0.5, 1.0
    _fail(tmp_path, r"image 3 has values in \[-0.5, 1\], outside the declared range \[0, 1\].*value_range=\(-1, 1\)", images)
    images[3] = 0.0
    images[1, 2, 2] = 2.0
    _fail(tmp_path, r"image 1 has values in \[0, 2\], outside the declared range \[-1, 1\]$", images, value_range=(-1, 1))
    _fail(tmp_path, "uint8 images are always 0..255", np.zeros((2, 4, 4), np.uint8), value_range=(-1, 1))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(tmp_path: Path, bad: float) -> None:
    images = np.zeros((3, 4, 4), np.float32)
    images[2, 1, 1] = bad
    _fail(tmp_path, "image 2 holds NaN or infinite values", images)


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    images = np.zeros((4, 4, 4), np.uint8)
    _fail(tmp_path, "3 labels for 4 images", images, labels=np.array([0, 1, 2]))
    _fail(tmp_path, "label 2 is -1; class ids must be >= 0", images, labels=np.array([0, 1, -1, 2]))
    _fail(tmp_path, "label 1 is 1.5, not an integer", images, labels=np.array([0.0, 1.5, 2.0, 3.0]))
    _fail(tmp_path, "labels must be integer class ids, got dtype <U1", images, labels=np.array(list("abcd")))
    np.savez(tmp_path / "both.npz", images=images, labels=np.zeros(4, int))
    np.save(tmp_path / "more.npy", np.zeros(4, int))
    _fail(tmp_path, "holds labels and a labels file", tmp_path / "both.npz", labels=str(tmp_path / "more.npy"))


def test_float_labels_holding_integers_are_accepted(tmp_path: Path) -> None:
    write_images(np.zeros((3, 4, 4), np.uint8), str(tmp_path / "s"), labels=np.array([0.0, 2.0, 1.0]))
    assert _stored(str(tmp_path / "s"))[1].tolist() == [0, 2, 1]


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    _fail(tmp_path, "input '.*nope.npy' does not exist", tmp_path / "nope.npy")
    np.save(tmp_path / "ok.npy", np.zeros((2, 4, 4), np.uint8))
    _fail(tmp_path, "labels file '.*gone.npy' does not exist", tmp_path / "ok.npy", labels=str(tmp_path / "gone.npy"))
    (tmp_path / "empty").mkdir()
    _fail(tmp_path, "no images found", tmp_path / "empty")
    _fail(tmp_path, "no images found", np.zeros((0, 4, 4), np.uint8))
    np.savez(tmp_path / "other.npz", pixels=np.zeros((2, 4, 4)))
    _fail(tmp_path, "has no images \\(looked for images, x, data; found pixels\\)", tmp_path / "other.npz")


def test_failed_overwrite_keeps_the_old_store(tmp_path: Path) -> None:
    url = str(tmp_path / "s")
    write_images(np.zeros((2, 4, 4), np.uint8), url)
    with pytest.raises(IngestError, match="already exists"):
        write_images(np.zeros((2, 4, 4), np.uint8), url)
    bad = np.zeros((2, 4, 4), np.float32)
    bad[1, 0, 0] = np.nan
    with pytest.raises(IngestError, match="NaN"):
        write_images(bad, url, overwrite=True)
    assert _stored(url)[0].shape == (2, 1, 4, 4)
    assert _leftovers(url) == ["s"]


# -- digits and the synthetic generator ----------------------------------------------------------


def test_digits_store(store_root: str) -> None:
    meta = ingest_digits(f"{store_root}/digits")
    data = load_image_data(f"{store_root}/digits")
    assert data.images.shape == (1797, 1, 8, 8) and data.image_shape == (1, 8, 8)
    assert meta.num_classes == data.num_classes == 10
    assert sorted(set(data.labels.tolist())) == list(range(10))
    assert float(data.images.min()) == -1.0 and float(data.images.max()) == 1.0
    # A zero is a ring: its centre is darker (lower) than its left and right strokes.
    zero = data.images[data.labels == 0].mean(0)[0]
    assert zero[3:5, 3:5].mean() < zero[3:5, 1:3].mean() - 0.5


def test_synthetic_images_are_deterministic_and_independent_of_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SyntheticImagesConfig(num_images=700, image_size=12, channels=3, num_classes=4, seed=3)
    write_synthetic_images(cfg, str(tmp_path / "a"))
    blocks: list[int] = []
    original = ArrayAppender.append

    def spy(self: ArrayAppender, block: np.ndarray) -> None:
        if self.key == layout.IMAGES:
            blocks.append(len(block))
        original(self, block)

    monkeypatch.setattr(ArrayAppender, "append", spy)
    meta = write_synthetic_images(cfg, str(tmp_path / "b"), block_images=256)
    monkeypatch.undo()
    write_synthetic_images(SyntheticImagesConfig(num_images=700, image_size=12, channels=3, num_classes=4, seed=4), str(tmp_path / "c"))

    assert blocks == [256, 256, 188]  # written block by block, never whole
    a, b, c = (load_image_data(str(tmp_path / n)) for n in "abc")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (700, 3, 12, 12) and a.num_classes == 4 == meta.num_classes
    assert -1.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    assert DatasetStore.open(str(tmp_path / "b")).meta.arrays == DatasetStore.open(str(tmp_path / "a")).meta.arrays


def test_synthetic_classes_are_distinguishable(tmp_path: Path) -> None:
    cfg = SyntheticImagesConfig(num_images=1200, image_size=16, channels=1, num_classes=6, seed=0)
    write_synthetic_images(cfg, str(tmp_path / "s"))
    data = load_image_data(str(tmp_path / "s"))
    x, y = data.images.reshape(len(data.images), -1), data.labels
    train, test = slice(0, 800), slice(800, None)
    centroids = torch.stack([x[train][y[train] == k].mean(0) for k in range(6)])
    predicted = torch.cdist(x[test], centroids).argmin(1)
    assert float((predicted == y[test]).float().mean()) > 0.85  # even a nearest-centroid rule separates them
    assert torch.bincount(y, minlength=6).min() > 120


def test_synthetic_config_is_validated() -> None:
    with pytest.raises(IngestError, match="synthetic_images.num_images must be at least 1, got 0"):
        SyntheticImagesConfig(num_images=0)
    with pytest.raises(IngestError, match="synthetic_images.image_size must be at least 4"):
        SyntheticImagesConfig(image_size=2)


# -- the reader --------------------------------------------------------------------------------


def test_reader_refuses_graph_incomplete_and_corrupt_stores(tmp_path: Path) -> None:
    from strata.storage.ingest.common import write_graph_data

    write_graph_data(random_graph(20, 40), str(tmp_path / "graph"), "g", symmetrize=True)
    with pytest.raises(StoreError, match="holds no images .* 'strata ingest images'"):
        load_image_data(str(tmp_path / "graph"))
    with pytest.raises(StoreError, match="does not exist"):
        load_image_data(str(tmp_path / "nothing"))

    write_images(np.zeros((3, 4, 4), np.uint8), str(tmp_path / "torn"))
    (tmp_path / "torn" / layout.MARKER).unlink()
    with pytest.raises(StoreError, match="no completion marker"):
        load_image_data(str(tmp_path / "torn"))

    write_images(np.zeros((3, 4, 4), np.uint8), str(tmp_path / "bad"))
    chunk = next(p for p in (tmp_path / "bad" / "images" / "data").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:5])
    with pytest.raises(StoreError, match="cannot be decoded"):
        load_image_data(str(tmp_path / "bad"))


# -- command line ------------------------------------------------------------------------------


def test_cli_images_digits_and_synthetic(tmp_path: Path) -> None:
    raw = np.random.default_rng(5).uniform(-1, 1, (4, 6, 6, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", raw)
    np.save(tmp_path / "y.npy", np.array([1, 0, 1, 2]))
    out = run_strata("ingest", "images", str(tmp_path / "x.npy"), str(tmp_path / "img"),
                     "--labels", str(tmp_path / "y.npy"), "--value-range", "-1,1", "-q")
    assert "4 images of 3x6x6 (C x H x W), 3 classes" in out.stdout
    images, labels = _stored(str(tmp_path / "img"))
    np.testing.assert_allclose(images, np.moveaxis(raw, -1, 1), atol=1e-6)
    assert labels.tolist() == [1, 0, 1, 2]

    run_strata("ingest", "synthetic-images", str(tmp_path / "syn"), "--num", "40", "--size", "8",
               "--channels", "1", "--classes", "5", "--seed", "2", "-q")
    info = run_strata("info", str(tmp_path / "syn"), "--verify").stdout
    assert "40 of 1 x 8 x 8" in info and "classes  5" in info and "verify   ok" in info

    proc = run_strata("ingest", "images", str(tmp_path / "x.npy"), str(tmp_path / "bad"), check=False)
    assert proc.returncode == 2
    assert "outside the declared range [0, 1]" in proc.stderr and "--value-range=-1,1" in proc.stderr
    assert _leftovers(str(tmp_path / "bad")) == []

    help_text = run_strata("ingest", "images", "--help").stdout
    assert "--layout" in help_text and "--value-range" in help_text and "--labels" in help_text


def test_cli_digits_and_graph_formats_still_work(tmp_path: Path) -> None:
    assert "1,797 images of 1x8x8" in run_strata("ingest", "digits", str(tmp_path / "d"), "-q").stdout
    out = run_strata("ingest", "synthetic", "--out", str(tmp_path / "g"), "--nodes", "200", "-q").stdout
    assert "200 nodes" in out
    assert "nodes    200" in run_strata("info", str(tmp_path / "g")).stdout
