"""Stain augmentation for H&E patches.

Slides differ in stain intensity far more than in geometry, so a model that
sees one scanner's or one lab's colours overfits them.  HED jitter (Tellez et
al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a
reference to train distilled stain-invariant convolutional networks", IEEE TMI
2018) perturbs each stain's concentration: RGB -> optical density -> H, E, D
concentrations via Ruifrok & Johnston's stain matrix, then c' = a*c + b with
a ~ U(1-s, 1+s), b ~ U(-s, s) per sample and stain, and back.
"""

from __future__ import annotations

import numpy as np
import torch

#: Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB) in optical density.
RUIFROK_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def hed_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None, *,
               positions: np.ndarray | None = None, batch: int | None = None) -> torch.Tensor:
    """Randomly rescale and shift each stain's concentration in NCHW RGB images in [0, 1].

    ``positions`` of a ``batch`` of samples (one rank's share of a global batch under data-parallel
    training): draw for the whole batch, apply the draws at ``positions`` to ``images``; the generator
    advances exactly as for the whole batch.
    """
    if strength <= 0:
        return images
    stains = torch.nn.functional.normalize(RUIFROK_HED, dim=1).to(images)
    to_concentration = torch.linalg.inv(stains)
    batch = images.shape[0] if batch is None else batch
    scale = 1 + (torch.rand(batch, 3, generator=generator) * 2 - 1).to(images) * strength
    shift = (torch.rand(batch, 3, generator=generator) * 2 - 1).to(images) * strength
    if positions is not None:
        scale, shift = scale[torch.from_numpy(positions)], shift[torch.from_numpy(positions)]
    density = -torch.log(images.clamp_min(1e-3)).permute(0, 2, 3, 1)  # N, H, W, RGB
    concentration = density @ to_concentration
    concentration = concentration * scale[:, None, None, :] + shift[:, None, None, :]
    rgb = torch.exp(-(concentration @ stains)).clamp(0, 1)
    return rgb.permute(0, 3, 1, 2).contiguous()
