"""Sample grids as PNG files, written through fsspec with no imaging library.

A PNG is a signature and three chunks (IHDR, one zlib-compressed IDAT of filtered rows, IEND),
each with its length and CRC; 8-bit greyscale or RGB is all a grid of samples needs.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch
from torch import Tensor

from strata.storage import fs


def grid(images: Tensor, rows: int, *, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile N x C x H x W images in [-1, 1] into one H' x W' x C uint8 array of ``rows`` rows,
    each image enlarged ``scale`` times (nearest neighbour) so 8x8 digits stay visible."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"a grid needs N x C x H x W images with 1 or 3 channels, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = -(-n // rows)
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    h, w = h * scale, w * scale
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        out[top : top + h, left : left + w] = pixels[i].permute(1, 2, 0).numpy()
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    """An H x W x C (C = 1 or 3) uint8 array encoded as PNG."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"PNG needs an H x W x 1 or H x W x 3 uint8 array, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    colour_type = 0 if channels == 1 else 2
    # Each scanline starts with its filter type; 0 = none.
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_grid(url: str, images: Tensor, rows: int, *, scale: int = 1) -> None:
    fs.write_bytes(url, png_bytes(grid(images, rows, scale=scale)))
