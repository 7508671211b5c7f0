"""Geometric orders of grid tokens: sort keys computed from (row, col) coordinates."""

from __future__ import annotations

import numpy as np


def _bits(yx: np.ndarray) -> int:
    """Bits per axis of the power-of-two square enclosing every coordinate."""
    side = int(yx.max()) + 1 if yx.size else 1
    return max(1, (side - 1).bit_length())


def hilbert_key(yx: np.ndarray) -> np.ndarray:
    """Hilbert-curve index of each (row, col) on the enclosing power-of-two square."""
    y = yx[:, 0].astype(np.int64)
    x = yx[:, 1].astype(np.int64)
    key = np.zeros(yx.shape[0], dtype=np.int64)
    s = 1 << (_bits(yx) - 1)
    while s:
        rx = (x & s) > 0
        ry = (y & s) > 0
        key += s * s * ((3 * rx) ^ ry)
        # Position inside the quadrant, rotated so the sub-curve enters and leaves it at
        # the right corners.
        x &= s - 1
        y &= s - 1
        flip = ~ry & rx
        x = np.where(flip, s - 1 - x, x)
        y = np.where(flip, s - 1 - y, y)
        x, y = np.where(ry, x, y), np.where(ry, y, x)
        s >>= 1
    return key


def morton_key(yx: np.ndarray) -> np.ndarray:
    """Z-order index: row and column bits interleaved (row bit above column bit)."""
    y = yx[:, 0].astype(np.int64)
    x = yx[:, 1].astype(np.int64)
    key = np.zeros(yx.shape[0], dtype=np.int64)
    for i in range(_bits(yx)):
        key |= ((x >> i) & 1) << (2 * i) | ((y >> i) & 1) << (2 * i + 1)
    return key


def tiled_key(yx: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """Tiles of ``tile`` = (rows, cols) aligned at (0, 0), in raster order, raster inside."""
    th, tw = tile
    y = yx[:, 0].astype(np.int64)
    x = yx[:, 1].astype(np.int64)
    tiles_per_row = int(x.max()) // tw + 1 if x.size else 1
    tile_id = (y // th) * tiles_per_row + x // tw
    return (tile_id * th + y % th) * tw + x % tw
