"""How large the demo cohort's grade cues are at each magnification, measured on rendered tissue.

Run `python -m wsidistill.demo.cues` to print the measured table of docs/demo_cohort.md ("Cue modes").
A lumen is measured by its *half-contrast diameter*: after area downsampling (40x -> 20/10/5x, as the
pipeline's extraction does), the pixels at least halfway in grey from the epithelium to the lumen at 40x
form a blob; its equivalent diameter 2 sqrt(area / pi) is the lumen's visible size (0 when the lumen has
blurred into its epithelium). The epithelium tint is the epithelium's mean grey-level difference to benign
epithelium of the same glands at 5x.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from .params import LEVEL0_MPP, GeneratorParams, cue_params
from .render import render_strip
from .scene import Region, single_grade_scene

MAGNIFICATIONS = (40, 20, 10, 5)
SURVIVES_PX = 1.5  # a cue "survives" at a magnification when it is at least this many px across there
# (architecture, G4 kind) -> name; G4 kinds are forced through g4_mix so that each is measured on its own
LUMEN_CUES = {
    (0, None): "benign lumen (star-shaped)",
    (1, None): "Gleason 3 lumen",
    (2, (1.0, 0.0, 0.0)): "cribriform lumen (G4)",
    (2, (0.0, 1.0, 0.0)): "fused-gland lumen (G4)",
}


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32).mean(axis=2)


def lumen_diameters(rgb: np.ndarray, labels: np.ndarray, lumens: list[np.ndarray], factor: int) -> np.ndarray:
    """Half-contrast diameter (px at the reduced magnification) of each lumen after `factor`x area downsampling.

    rgb: (H, W, 3) uint8 at 40x; labels: (H, W) Radboud labels (>= 2 epithelium, lumens included);
    lumens: lumen polygons in 40x px. Returns one diameter per lumen, 0 where the lumen is not brighter than
    the half-contrast threshold at its centre (lost). Lumens sharing one blob share its area equally.
    """
    grey = _grey(rgb)
    inside = np.zeros(labels.shape, np.uint8)
    for poly in lumens:
        cv2.fillPoly(inside, [np.round(poly).astype(np.int32)], 1)
    epi = (labels >= 2) & (inside == 0)
    threshold = (np.median(grey[cv2.erode(inside, np.ones((3, 3), np.uint8)) > 0]) + np.median(grey[epi])) / 2
    h, w = labels.shape[0] // factor, labels.shape[1] // factor
    small = cv2.resize(grey[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)
    _, blobs, stats, _ = cv2.connectedComponentsWithStats((small >= threshold).astype(np.uint8), connectivity=4)
    centres = np.array([poly.mean(axis=0) for poly in lumens]) / factor
    ix = np.clip(centres[:, 0].astype(int), 0, w - 1)
    iy = np.clip(centres[:, 1].astype(int), 0, h - 1)
    blob = blobs[iy, ix]
    shared = np.bincount(blob, minlength=len(stats))
    area = np.where(blob > 0, stats[blob, cv2.CC_STAT_AREA] / shared[blob], 0.0)
    return 2 * np.sqrt(area / np.pi)


def _render(scene, p: GeneratorParams):
    size = int(scene.width)
    return render_strip(scene, p, 0, size, size, size, 1.0)


def measure_lumens(p: GeneratorParams, architecture: int, g4_mix=None, size: int = 512, seed: int = 5) -> dict[int, np.ndarray]:
    """Half-contrast lumen diameters at each magnification (px there) for one architecture drawn with `p`,
    away from the tile border (lumens within 16 px of it are left out)."""
    if g4_mix is not None:
        p = dataclasses.replace(p, g4_mix=g4_mix)
    scene = single_grade_scene(seed, architecture, size, p, architecture=architecture)
    rgb, labels = _render(scene, p)
    lumens = [q for q in scene.lumens if q.min() > 16 and q.max() < size - 16]
    return {m: lumen_diameters(rgb, labels, lumens, 40 // m) for m in MAGNIFICATIONS}


def epithelium_tint(p: GeneratorParams, size: int = 512, seed: int = 3) -> list[float]:
    """Grey-level darkening of the epithelium at 5x, grade by grade against benign, of identical Gleason-3-type
    glands rendered with each grade's cytology (positive = darker than benign)."""
    scene = single_grade_scene(seed, 1, size, p, architecture=1)
    means = []
    for grade in range(4):
        scene.regions = [Region(grade, scene.regions[0].polygon)]
        rgb, labels = _render(scene, p)
        small = cv2.resize(_grey(rgb), (size // 8, size // 8), interpolation=cv2.INTER_AREA)
        epi = cv2.resize((labels >= 2).astype(np.float32), (size // 8, size // 8), interpolation=cv2.INTER_AREA) > 0.9
        means.append(float(small[epi].mean()))
    return [means[0] - m for m in means]


def main() -> None:
    mpp = {m: LEVEL0_MPP * 40 / m for m in MAGNIFICATIONS}
    print("| cue | mode | " + " | ".join(f"{m}x ({mpp[m]:g} um/px)" for m in MAGNIFICATIONS) + " | lost at 5x |")
    print("|---|---|" + "---|" * (len(MAGNIFICATIONS) + 1))
    for (arch, mix), name in LUMEN_CUES.items():
        for mode in ("absent", "degraded"):
            d = measure_lumens(cue_params(mode), arch, mix)
            cells = [f"{np.median(d[m]):.1f} px = {np.median(d[m]) * mpp[m]:.1f} um" for m in MAGNIFICATIONS]
            print(f"| {name} (n={len(d[5])}) | {mode} | " + " | ".join(cells) + f" | {np.mean(d[5] == 0):.0%} |")
    for mode in ("absent", "degraded"):
        tint = epithelium_tint(cue_params(mode))
        print(f"epithelium darkening at 5x against benign, {mode}: " + ", ".join(f"G{g + 2} {t:+.1f}" for g, t in enumerate(tint[1:])))


if __name__ == "__main__":
    main()
