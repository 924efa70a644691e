"""Coordinate-hashed noise.

Every value is a pure function of (key, integer coordinates), so a row strip rendered on its own
gets exactly the pixels it would get inside the whole slide: strips need no shared random state.
"""

from __future__ import annotations

import cv2
import numpy as np

_GOLDEN = np.uint32(0x9E3779B1)


def _mix(h: np.ndarray) -> np.ndarray:
    """lowbias32 finaliser (C. Wellons): avalanches all input bits into all output bits."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def hash_u32(key: int, *coords) -> np.ndarray:
    """Hash integer coordinate arrays (broadcast together) with a key into uint32."""
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point of the hash
        h = _mix(np.asarray(key & 0xFFFFFFFF, dtype=np.uint32))
        for c in coords:
            c = np.asarray(c).astype(np.int64).astype(np.uint32)
            h = _mix(h ^ (c * _GOLDEN + np.uint32(0x632BE5AB)))
    return h


def uniform(key: int, *coords) -> np.ndarray:
    """Uniform float32 in [0, 1) per coordinate tuple."""
    return (hash_u32(key, *coords) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _axis(start: float, n: int, step: float, scale: float, cell: float):
    """Lattice interval (relative index) and smoothstep weight of n samples along one axis, and the
    lattice node ids they need. Sample k is output pixel position start + k*step, i.e. scene
    coordinate (start + k*step + 0.5)*scale."""
    u = (start + 0.5 + np.arange(n) * step) * scale / cell
    i = np.floor(u).astype(np.int64)
    f = (u - i).astype(np.float32)
    lo = int(i.min())
    return i - lo, f * f * (3 - 2 * f), np.arange(lo, int(i.max()) + 2)


def value_noise(key: int, y0: float, ny: int, x0: float, nx: int, step: float, scale: float, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with feature size `cell` (scene px) on an ny x nx grid of output pixel
    positions (y0 + i*step, x0 + j*step); `scale` is scene px per output pixel, so the texture stays
    attached to the tissue at any MPP. Separable interpolation of hashed lattice values."""
    iy, fy, ly = _axis(y0, ny, step, scale, cell)
    ix, fx, lx = _axis(x0, nx, step, scale, cell)
    lattice = uniform(key, ly[:, None], lx[None, :])
    rows = lattice[iy] * (1 - fy)[:, None] + lattice[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def fbm(key: int, row0: int, n_rows: int, width: int, scale: float, cell: float, octaves: int) -> np.ndarray:
    """Fractal value noise (octaves halve in size and weight), about [0, 1], on output rows
    row0..row0+n_rows of a slide `width` px wide.

    Evaluated on a coarse grid every 8 px (anchored to absolute coordinates, so strips agree) and
    bilinearly upsampled: the texture is smooth at that scale and this is 64x cheaper.
    """
    step = 8
    if row0 % step:
        raise ValueError("strips must start on a multiple of 8 rows")
    ny, nx = -(-n_rows // step) + 1, -(-width // step) + 1
    # coarse sample k sits at the output position cv2.resize maps it to: pixel centre step*k + step/2
    total = np.zeros((ny, nx), np.float32)
    norm = 0.0
    for o in range(octaves):
        amp = 0.5**o
        total += amp * value_noise(key + 7919 * o, row0 + (step - 1) / 2, ny, (step - 1) / 2, nx, step, scale, cell / 2**o)
        norm += amp
    fine = cv2.resize(total / norm, (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)
    return fine[:n_rows, :width]


def pixel_noise(key: int, y0: int, ny: int, x0: int, nx: int) -> np.ndarray:
    """White noise in [0, 1) per output pixel of the block [y0:y0+ny, x0:x0+nx]."""
    return uniform(key, np.arange(y0, y0 + ny)[:, None], np.arange(x0, x0 + nx)[None, :])
