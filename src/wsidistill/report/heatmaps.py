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
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from ..evaluation.splits import UNLABELLED  # noqa: E402
from ..io import atomic_path, save_figure  # noqa: E402
from ..patches import store as patch_store  # noqa: E402
from .palette import class_colors, class_rgb  # noqa: E402


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


def blend_on_tissue(thumbnail: np.ndarray, overlay: np.ndarray, cell: float, downsample: float,
                    max_side: int) -> np.ndarray:
    """The grid ``overlay`` alpha-blended over the grey ``thumbnail``, at ``max_side`` px or a whole reduction of it.

    ``thumbnail`` (h, w, 3) uint8 at ``downsample`` level-0 px per px; ``overlay`` (rows, columns, 4) float RGBA
    in [0, 1], one cell per ``cell`` level-0 px.  Returns (h', w', 3) uint8, h' = ceil(h / f), w' = ceil(w / f)
    for the smallest whole factor f that fits ``max_side``: grey is the mean of R, G and B after a box average
    over f x f px, then ``overlay`` (straight alpha, nearest cell at each pixel's centre) goes over it.  Grey tissue
    underneath keeps the overlay's hues equal to the legend's.

    This is what matplotlib drew from two full-size images per panel (grey thumbnail, then the overlay on top)
    at 20x the cost: 0.54 of the 0.9 s a 5x Student's whole-slide ``predict`` took (``benchmarks/predict.py``).
    """
    factor = max(1, -(-max(thumbnail.shape[:2]) // max(1, int(max_side))))
    reduced = np.asarray(Image.fromarray(np.ascontiguousarray(thumbnail[..., :3])).reduce(factor), np.float32)
    grey = reduced.mean(axis=-1, keepdims=True)
    scale = factor * downsample / cell  # cells per output px
    rows = np.floor((np.arange(grey.shape[0]) + 0.5) * scale).astype(int)
    columns = np.floor((np.arange(grey.shape[1]) + 0.5) * scale).astype(int)
    inside = (rows[:, None] < overlay.shape[0]) & (columns[None, :] < overlay.shape[1])
    cells = overlay[np.minimum(rows, overlay.shape[0] - 1)[:, None], np.minimum(columns, overlay.shape[1] - 1)[None, :]]
    alpha = np.where(inside, cells[..., 3], 0)[..., None]
    return np.rint(grey * (1 - alpha) + 255 * cells[..., :3] * alpha).astype(np.uint8)


def _show_overlay(axis, thumbnail, overlay, cell, grid, downsample, title):
    extent = axis.get_window_extent()  # the panel's size in output pixels (the figure's dpi), before layout
    # twice the panel's pixels: matplotlib's antialiasing then draws it as it drew the full thumbnail
    image = blend_on_tissue(thumbnail, overlay, cell, downsample, 2 * max(extent.width, extent.height))
    axis.imshow(image, extent=(0, thumbnail.shape[1], thumbnail.shape[0], 0))
    axis.set_xlim(0, thumbnail.shape[1])
    axis.set_ylim(thumbnail.shape[0], 0)
    axis.set_title(title, fontsize=9)
    axis.axis("off")


def legend_handles(classes):
    return [Patch(facecolor=c, edgecolor="black", label=n) for n, c in zip(classes, class_colors(classes))]


def _slide_layers(store_path):
    """The layers a heatmap draws from a patch store, or from a ``wsidistill predict`` store (no labels)."""
    store = patch_store.open_store(store_path)
    attributes = patch_store.read_attributes(store)
    return store, {
        "slide_id": attributes.slide_id, "classes": attributes.classes, "cell": attributes.cell_level0,
        "grid": attributes.grid, "thumbnail": store[patch_store.THUMBNAIL][:],
        "downsample": attributes.thumbnail_downsample, "coords": store[patch_store.COORDS][:],
        "labels": store[patch_store.LABELS][:].astype(int) if patch_store.LABELS in store else None,
        "tissue_method": attributes.tissue_method,
    }


def _probabilities(predictions_path, slide_id) -> np.ndarray:
    return zarr.open_group(str(predictions_path), mode="r")[slide_id][patch_store.PROBABILITIES][:]


def _argmax(probabilities: np.ndarray) -> np.ndarray:
    return probabilities.argmax(1) if len(probabilities) else np.zeros(0, int)


def _annotation_title(s: dict, title: str) -> str:
    """The annotation panel's title, saying so when the slide has no labelled patch (an unlabelled test slide)."""
    return title if s["labels"] is not None and (s["labels"] >= 0).any() else f"{title}: {UNLABELLED}"


def _figure_height(thumbnail, width, rows=1):
    return rows * width * thumbnail.shape[0] / thumbnail.shape[1] + 1.0


#: Layout of the per-slide heatmap, in inches: suptitle band, band for each panel title, legend band, side margin and
#: gap between panels.
_TOP_IN, _TITLE_IN, _LEGEND_IN, _SIDE_IN, _GAP_IN = 0.45, 0.3, 0.5, 0.1, 0.12
_HEATMAP_DPI = 100


def _fit_scale(shape: tuple[int, ...], box_in: tuple[float, float, float, float]) -> float:
    """Output px per image px of an image of ``shape`` (h, w, ...) fitted, aspect kept, into ``box_in``."""
    return min(box_in[2] / shape[1], box_in[3] / shape[0]) * _HEATMAP_DPI


def _fitted_panel(image: np.ndarray, box_in: tuple[float, float, float, float], figure_height_in: float):
    """``image`` (h, w, 3) uint8 fitted into ``box_in`` (left, top, width, height in inches from the figure's top
    left), centred, aspect kept, resized to the exact output pixels (box filter when it shrinks, bilinear when it
    grows).  Returns (the fitted image, its top-left output pixel (x, y) from the top left, its title's position
    (x, y) in figure fractions)."""
    left, top, width, height = box_in
    scale = _fit_scale(image.shape, box_in)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    fitted = np.asarray(Image.fromarray(image).resize(
        size, Image.Resampling.BOX if scale <= 1 else Image.Resampling.BILINEAR))
    x0 = round(left * _HEATMAP_DPI + (width * _HEATMAP_DPI - size[0]) / 2)
    y0 = round(top * _HEATMAP_DPI + (height * _HEATMAP_DPI - size[1]) / 2)
    return fitted, (x0, y0), (left + width / 2, 1 - (y0 / _HEATMAP_DPI - 0.06) / figure_height_in)


def _heatmap_figure(s: dict, probabilities: np.ndarray, top: list[tuple[str, np.ndarray]], out_png) -> None:
    """Class maps ``top`` [(title, class per patch)] side by side, then one probability map per class.

    A fixed layout: matplotlib (Agg) draws the texts (titles, legend), then each panel, blended and resized to its
    exact output pixels, is copied into the drawn canvas and the PNG is written by Pillow.  The same figure as
    axes laid out by ``tight_layout`` (the panels have no ticks; only their titles need room), in about 0.05 s
    instead of 0.19 s, where the 5x Student's whole ``predict`` of a 0.5-gigapixel slide takes 0.31 s
    (``benchmarks/predict.py``): matplotlib's image path resamples even a pixel-exact image.
    """
    classes, n = s["classes"], len(s["classes"])
    thumbnail = s["thumbnail"]
    aspect = thumbnail.shape[0] / thumbnail.shape[1]
    width = 2.6 * n
    row_heights = (1.3 * n * aspect, 2.6 * aspect)  # each row as tall as its panels at their width
    height = _TOP_IN + sum(row_heights) + 2 * _TITLE_IN + _LEGEND_IN
    # a Figure without pyplot: not registered globally, so drawing it off the main thread is safe
    figure = Figure(figsize=(width, height), dpi=_HEATMAP_DPI)
    canvas = FigureCanvasAgg(figure)
    column = (width - 2 * _SIDE_IN) / n  # a probability panel's slot; each class map takes n / 2 of them
    panels = []

    def panel(overlay, box_in, title):
        # blended at the whole reduction of the thumbnail nearest the panel's size (at most 4/3 off it for reductions
        # of 2 or more), then resized to it exactly: blending the full thumbnail costs 4x more for a sharper nothing
        reduction = max(1, round(1 / _fit_scale(thumbnail.shape, box_in)))
        image = blend_on_tissue(thumbnail, overlay, s["cell"], s["downsample"], -(-max(thumbnail.shape[:2]) // reduction))
        fitted, corner, (x_in, y_fraction) = _fitted_panel(image, box_in, height)
        panels.append((fitted, corner))
        figure.text(x_in / width, y_fraction, title, ha="center", va="bottom", fontsize=9)

    overlay_args = (s["coords"], s["cell"], s["grid"], classes)
    first = _SIDE_IN + (2 - len(top)) * column * n / 4  # one class map: centred
    for index, (title, classes_per_patch) in enumerate(top):
        box = (first + index * column * n / 2 + _GAP_IN / 2, _TOP_IN + _TITLE_IN, column * n / 2 - _GAP_IN,
               row_heights[0])
        panel(class_overlay(classes_per_patch, *overlay_args), box, title)
    for index, (name, color) in enumerate(zip(classes, class_colors(classes))):
        values = probabilities[:, index] if len(probabilities) else np.zeros(0)
        box = (_SIDE_IN + index * column + _GAP_IN / 2, _TOP_IN + 2 * _TITLE_IN + row_heights[0],
               column - _GAP_IN, row_heights[1])
        panel(probability_overlay(values, s["coords"], s["cell"], s["grid"], color), box, f"P({name})")
    figure.legend(handles=legend_handles(classes), loc="lower center", ncol=n, frameon=False)
    figure.suptitle(s["slide_id"], y=1 - 0.12 / height, va="top")
    canvas.draw()
    rgb = np.array(canvas.buffer_rgba())[..., :3]  # (H, W, 3) on the figure's white
    for fitted, (x0, y0) in panels:
        rgb[y0 : y0 + fitted.shape[0], x0 : x0 + fitted.shape[1]] = fitted[: rgb.shape[0] - y0, : rgb.shape[1] - x0]
    with atomic_path(out_png) as tmp:
        # zlib level 1: 0.013 s less a heatmap than the default 6, for a file 20% larger (111 vs 93 kB)
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)


def slide_heatmap(store_path: str | Path, predictions_path: str | Path, out_png: str | Path, *, title: str) -> None:
    """One model on one slide: annotation, predicted class map and one probability map per class."""
    _, s = _slide_layers(store_path)
    probabilities = _probabilities(predictions_path, s["slide_id"])
    _heatmap_figure(s, probabilities, [(_annotation_title(s, "annotation (patch labels)"), s["labels"]),
                                       (f"prediction: {title}", _argmax(probabilities))], out_png)


def prediction_heatmap(predictions_store: str | Path | dict, out_png: str | Path, *, title: str) -> None:
    """A ``wsidistill predict`` store (no annotation): predicted class map and one probability map per class.

    ``predictions_store``: the store's path, or its layers in memory (a dict with the keys ``slide_id``, ``classes``,
    ``cell``, ``grid``, ``thumbnail``, ``downsample``, ``coords`` and ``probabilities``, as ``predict`` has them
    before it writes the store), which saves reading the store back.
    """
    if isinstance(predictions_store, dict):
        s = predictions_store
        probabilities = s["probabilities"]
    else:
        store, s = _slide_layers(predictions_store)
        probabilities = store[patch_store.PROBABILITIES][:]
    _heatmap_figure(s, probabilities, [(f"prediction: {title}", _argmax(probabilities))], out_png)


def probability_overlay(values, coords, cell, grid, color) -> np.ndarray:
    """RGBA grid image in the class colour with opacity proportional to the probability."""
    import matplotlib.colors as mcolors

    rgba = np.zeros((grid["rows"], grid["columns"], 4), np.float32)
    if len(coords):
        rows, columns = coords[:, 1] // cell, coords[:, 0] // cell
        rgba[rows, columns, :3] = mcolors.to_rgb(color)
        rgba[rows, columns, 3] = 0.9 * np.asarray(values)
    return rgba


def comparison_panel(store_path: str | Path, predictions: dict[str, str | Path], out_png: str | Path) -> None:
    """Side by side: the annotation, then each model's predicted class map, in the same colours."""
    _, s = _slide_layers(store_path)
    overlay_args = (s["coords"], s["cell"], s["grid"], s["classes"])
    panels = [(_annotation_title(s, "annotation"), s["labels"])] + [
        (title, _argmax(_probabilities(path, s["slide_id"]))) for title, path in predictions.items()
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), _figure_height(s["thumbnail"], 3.2)))
    for axis, (title, classes_per_patch) in zip(np.atleast_1d(axes), panels):
        _show_overlay(axis, s["thumbnail"], class_overlay(classes_per_patch, *overlay_args), s["cell"], s["grid"],
                      s["downsample"], title)
    figure.legend(handles=legend_handles(s["classes"]), loc="lower center", ncol=len(s["classes"]), frameon=False)
    figure.suptitle(s["slide_id"])
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(figure, out_png, dpi=100)


def extraction_qc(store_path: str | Path, out_png: str | Path) -> None:
    """Quality control of extraction: thumbnail, tissue-mask outline and kept cells coloured by label."""
    store, s = _slide_layers(store_path)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, _figure_height(s["thumbnail"], 5)))
    left.imshow(s["thumbnail"])
    left.contour(store[patch_store.TISSUE_MASK][:], levels=[0.5], colors="lime", linewidths=0.8)
    left.set_title(f"tissue mask ({s['tissue_method']})", fontsize=9)
    left.axis("off")
    labels = np.where(s["labels"] >= 0, s["labels"], -1)
    overlay = class_overlay(labels, s["coords"], s["cell"], s["grid"], s["classes"])
    unlabelled = s["labels"] < 0
    if unlabelled.any():
        rows, columns = s["coords"][unlabelled, 1] // s["cell"], s["coords"][unlabelled, 0] // s["cell"]
        overlay[rows, columns] = (0.2, 0.4, 1.0, 0.35)
    _show_overlay(right, s["thumbnail"], overlay, s["cell"], s["grid"], s["downsample"],
                  f"{len(s['coords'])} tissue patches (blue: unlabelled)")
    figure.legend(handles=legend_handles(s["classes"]), loc="lower center", ncol=len(s["classes"]), frameon=False)
    figure.suptitle(s["slide_id"])
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(figure, out_png, dpi=100)
