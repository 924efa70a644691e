"""The dihedral group D4 (flips and 90-degree rotations) acting on the last two axes."""

from __future__ import annotations

import torch
from torch import Tensor


def d4_transform(x: Tensor, k: int) -> Tensor:
    """Apply D4 element ``k`` (0..7) to ``(..., H, W)``: rotate by ``k % 4`` quarter turns
    (``torch.rot90`` on the last two axes), then, for ``k >= 4``, flip the last axis."""
    if not 0 <= k < 8:
        raise ValueError(f"D4 element must be in 0..7, got {k}")
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x
