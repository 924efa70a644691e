"""Documentation figure: a slide thumbnail with its annotations and one patch per class at 40x-5x.

Regenerate with `python -m wsidistill.demo.figure docs/demo_cohort.png`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import shapely

from .cohort import DEFAULT_HEIGHT, DEFAULT_WIDTH, plan_cohort
from .params import DEFAULT_PARAMS, GRADE_COLORS, GRADES
from .render import render_slide
from .scene import Scene

PATCH = 128  # level-0 px: the pipeline's default 40x patch (32 um)
MAGNIFICATIONS = (40, 20, 10, 5)


def typical_patch(labels: np.ndarray, scene: Scene, grade: int, size: int = PATCH) -> tuple[int, int] | None:
    """Top-left of a grid patch that shows a grade typically: wholly in tissue of that grade, in a zone
    drawn with that grade's own architecture, away from artefacts, and with a typical (75th
    percentile) epithelium fraction. None when the slide has no such patch."""
    h, w = labels.shape[0] // size * size, labels.shape[1] // size * size
    tiles = labels[:h, :w].reshape(h // size, size, w // size, size).swapaxes(1, 2)
    epithelium = (tiles == grade + 2).mean(axis=(2, 3))
    ok = np.all((tiles == 1) | (tiles == grade + 2), axis=(2, 3)) & (epithelium > 0)
    cy, cx = (np.mgrid[0 : h // size, 0 : w // size] + 0.5) * size
    own = shapely.union_all([area for arch, area in scene.zones if arch == grade]).buffer(-size / 2)
    ok &= shapely.contains_xy(own, cx, cy)
    artefacts = shapely.union_all(scene.folds + [area for area, _, _ in scene.pens])
    if not artefacts.is_empty:
        ok &= shapely.distance(artefacts, shapely.points(cx, cy)) > size
    for bx, by, rx, ry, _, _ in scene.blurs:
        ok &= np.hypot(cx - bx, cy - by) > max(rx, ry) + size
    if not ok.any():
        return None
    target = np.percentile(epithelium[ok], 75)
    score = np.where(ok, -np.abs(epithelium - target), -np.inf)
    ty, tx = np.unravel_index(np.argmax(score), score.shape)
    return int(ty * size), int(tx * size)


def magnification_series(patch: np.ndarray) -> list[np.ndarray]:
    """The same field of view area-downsampled to each magnification, shown at 40x size (nearest)."""
    size = patch.shape[0]
    out = []
    for mag in MAGNIFICATIONS:
        n = size * mag // 40
        small = cv2.resize(patch, (n, n), interpolation=cv2.INTER_AREA) if n < size else patch
        out.append(cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST))
    return out


def cohort_figure(out_png: Path, n_slides: int = 10, seed: int = 0, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> Path:
    """Thumbnail of the first slide of the default cohort with its annotation outlines, and for each
    class a typical patch (from the first slide containing it) at 40x, 20x, 10x and 5x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slides = plan_cohort(n_slides, seed)
    patches: dict[int, tuple[np.ndarray, str]] = {}
    thumb = thumb_scene = None
    for slide in slides:
        rgb, labels, scene = render_slide(slide.seed, width, height, DEFAULT_PARAMS)
        if thumb is None:
            thumb, thumb_scene = rgb, scene
        for grade in {r.grade for r in scene.regions} - set(patches):
            if (at := typical_patch(labels, scene, grade)) is not None:
                y, x = at
                patches[grade] = (rgb[y : y + PATCH, x : x + PATCH].copy(), f"{slide.slide_id} ({x},{y})")
        if len(patches) == len(GRADES):
            break

    fig = plt.figure(figsize=(12, 14), dpi=110)
    grid = fig.add_gridspec(1 + len(GRADES), len(MAGNIFICATIONS), height_ratios=[2.2] + [1] * len(GRADES))
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(cv2.resize(thumb, (width // 4, height // 4), interpolation=cv2.INTER_AREA), extent=(0, width, height, 0))
    for region in thumb_scene.regions:
        for part in getattr(region.polygon, "geoms", [region.polygon]):
            xy = np.asarray(part.exterior.coords)
            ax.plot(xy[:, 0], xy[:, 1], color=np.array(GRADE_COLORS[GRADES[region.grade]]) / 255, lw=1.2)
    handles = [plt.Line2D([], [], color=np.array(GRADE_COLORS[g]) / 255, label=g) for g in GRADES]
    ax.legend(handles=handles, loc="lower right", fontsize=8, ncol=4)
    ax.set_title(f"{slides[0].slide_id}: {width}x{height} px at 0.25 um/px, annotations outlined")
    ax.axis("off")
    for row, grade in enumerate(range(len(GRADES)), start=1):
        if grade not in patches:
            continue
        patch, where = patches[grade]
        for col, (img, mag) in enumerate(zip(magnification_series(patch), MAGNIFICATIONS)):
            a = fig.add_subplot(grid[row, col])
            a.imshow(img)
            a.set_xticks([])
            a.set_yticks([])
            if col == 0:
                a.set_ylabel(f"{GRADES[grade]}\n{where}", fontsize=9)
            if row == 1:
                a.set_title(f"{mag}x ({PATCH * mag // 40} px)", fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


if __name__ == "__main__":
    cohort_figure(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/demo_cohort.png"))
