"""Per-slide Gleason heatmaps on the slide thumbnail.

Predictions live on the patch grid (one cell per patch, level-0 geometry in
the store's attributes); cells with no tissue patch stay transparent so the
thumbnail shows through.  Colours come from ``report.palette`` so every
figure uses the same class colours.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .io import save_figure  # noqa: E402
from .patches.dataset import open_store  # noqa: E402
from .report.palette import class_colors, class_rgb  # noqa: E402


def grid_image(values: np.ndarray, coords: np.ndarray, cell: int, grid: dict, fill=np.nan) -> np.ndarray:
    """Scatter per-patch ``values`` (N, ...) onto the (rows, columns, ...) grid."""
    image = np.full((grid["rows"], grid["columns"], *values.shape[1:]), fill, dtype=np.float32)
    if len(coords):
        image[coords[:, 1] // cell, coords[:, 0] // cell] = values
    return image


def class_overlay(classes_per_patch: np.ndarray, coords: np.ndarray, cell: int, grid: dict, classes, alpha=0.55):
    """RGBA grid image: class colour where a patch has a class, transparent elsewhere."""
    rgb = class_rgb(classes)
    rgba = np.zeros((grid["rows"], grid["columns"], 4), np.float32)
    known = classes_per_patch >= 0
    if known.any():
        rows, columns = coords[known, 1] // cell, coords[known, 0] // cell
        rgba[rows, columns, :3] = rgb[classes_per_patch[known]]
        rgba[rows, columns, 3] = alpha
    return rgba


def _show_overlay(axis, thumbnail, overlay, cell, grid, downsample, title):
    axis.imshow(thumbnail)
    extent = (0, grid["columns"] * cell / downsample, grid["rows"] * cell / downsample, 0)
    axis.imshow(overlay, extent=extent, interpolation="nearest")
    axis.set_xlim(0, thumbnail.shape[1])
    axis.set_ylim(thumbnail.shape[0], 0)
    axis.set_title(title, fontsize=9)
    axis.axis("off")


def legend_handles(classes):
    return [Patch(facecolor=c, edgecolor="black", label=n) for n, c in zip(classes, class_colors(classes))]


def slide_heatmap(store_path: str | Path, predictions_path: str | Path, out_png: str | Path, *, title: str) -> None:
    """Predicted-class map of one model on one slide, next to the annotation."""
    store = open_store(store_path)
    slide_id = store.attrs["slide_id"]
    group = zarr.open_group(str(predictions_path), mode="r")[slide_id]
    classes = store.attrs["classes"]
    cell, grid = store.attrs["cell_level0"], store.attrs["grid"]
    thumbnail, downsample = store["thumbnail"][:], store.attrs["thumbnail_downsample"]
    coords = store["coords"][:]
    probabilities = group["probabilities"][:]
    predicted = probabilities.argmax(1) if len(probabilities) else np.zeros(0, int)
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.2 * thumbnail.shape[0] / thumbnail.shape[1] + 0.8))
    _show_overlay(axes[0], thumbnail, class_overlay(store["labels"][:].astype(int), coords, cell, grid, classes),
                  cell, grid, downsample, "annotation (patch labels)")
    _show_overlay(axes[1], thumbnail, class_overlay(predicted, coords, cell, grid, classes),
                  cell, grid, downsample, f"prediction: {title}")
    figure.legend(handles=legend_handles(classes), loc="lower center", ncol=len(classes), frameon=False)
    figure.suptitle(slide_id)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(figure, out_png, dpi=110)
