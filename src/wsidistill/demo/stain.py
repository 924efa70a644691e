"""Beer-Lambert H&E stain model.

Tissue is rendered as per-pixel stain concentrations (optical density units, log10) that are turned
into RGB through stain OD vectors: I = I0 * 10^-(c_H*v_H + c_E*v_E + ...). Slide-to-slide colour
variation then comes from perturbing the vectors and the staining strength, as happens between labs,
batches and scanners, instead of from ad-hoc RGB jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Reference H&E OD vectors of Macenko et al. (2009), the usual defaults of stain normalisation tools;
# Ruifrok & Johnston's (2001) eosin vector renders stroma too magenta for a realistic look.
HAEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062])
EOSIN = np.array([0.2159, 0.8012, 0.5581])
# Marker inks absorb the complement of their colour: green ink absorbs red and blue, blue ink red and green.
INKS = {"green": np.array([0.78, 0.22, 0.58]), "blue": np.array([0.72, 0.58, 0.12]), "black": np.array([0.58, 0.58, 0.57])}
DUST = np.array([0.55, 0.58, 0.60])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class StainModel:
    """One slide's staining: stain vectors, staining strengths and the brightness of the glass."""

    haematoxylin: np.ndarray
    eosin: np.ndarray
    h_strength: float
    e_strength: float
    background: np.ndarray  # I0 per RGB channel: the unstained glass as the scanner sees it

    @classmethod
    def sample(cls, rng: np.random.Generator, vector_jitter: float, strength_jitter: float) -> StainModel:
        """Draw a slide's stain: vectors tilted by ~vector_jitter, strengths log-normal around 1."""
        h = _unit(np.clip(HAEMATOXYLIN + rng.normal(0, vector_jitter, 3), 0.05, None))
        e = _unit(np.clip(EOSIN + rng.normal(0, vector_jitter, 3), 0.05, None))
        hs, es = np.exp(rng.normal(0, strength_jitter, 2))
        bg = rng.uniform(236, 250) + rng.normal(0, 2.0, 3)
        return cls(h, e, float(hs), float(es), np.clip(bg, 225, 254))

    def to_rgb(self, h: np.ndarray, e: np.ndarray, extra_od: np.ndarray | None, grain: np.ndarray) -> np.ndarray:
        """Beer-Lambert transmission I0 * 10^-OD of the stain concentrations plus any extra optical
        density (ink, dust; (..., 3) or None), with sensor grain in grey levels, as uint8 RGB."""
        vh = (self.h_strength * self.haematoxylin).astype(np.float32)
        ve = (self.e_strength * self.eosin).astype(np.float32)
        rgb = np.empty(h.shape + (3,), np.float32)
        offset = grain + np.float32(0.5)  # +0.5: the uint8 cast below then rounds
        for c in range(3):
            od = h * vh[c] + e * ve[c]
            if extra_od is not None:
                od += extra_od[..., c]
            np.exp(od * np.float32(-np.log(10)), out=od)
            od *= np.float32(self.background[c])
            od += offset
            rgb[..., c] = od
        return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
