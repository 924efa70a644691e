"""Student inputs derived from Teacher patches."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def student_input_from(
    teacher_images: Tensor, mode: Literal["native", "upsampled"] = "native", factor: float = 1
) -> Tensor:
    """Simulate a lower magnification of ``(B, 3, H, W)`` Teacher patches.

    ``"native"``: ``factor x factor`` average pooling, ``(B, 3, H/factor, W/factor)``: the patch as a
    scanner at ``1/factor`` magnification would see it. ``"upsampled"``: the same, then bilinear
    upsampling (``align_corners=True``) back to ``(H, W)``, as the AT+ reference code does
    (del Amor et al., EUSIPCO 2023), so the Student keeps the Teacher's architecture and grid.
    """
    if mode not in ("native", "upsampled"):
        raise ValueError(f"mode must be 'native' or 'upsampled', got {mode!r}")
    if factor != int(factor) or factor < 1:
        raise ValueError(f"factor must be a whole number >= 1 (Teacher / Student magnification), got {factor}")
    factor = int(factor)  # magnifications arrive as floats: 40 / 10 = 4.0
    low = F.avg_pool2d(teacher_images, factor) if factor > 1 else teacher_images
    if mode == "native":
        return low
    return F.interpolate(low, size=teacher_images.shape[-2:], mode="bilinear", align_corners=True)
