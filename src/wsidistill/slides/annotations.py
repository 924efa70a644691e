"""Region annotations and patch labels: QuPath GeoJSON, PANDA label masks, user tissue masks.

QuPath exports GeoJSON FeatureCollections whose features carry
``properties.classification.name``; config maps those names to the pipeline's
classes.  PANDA-style label masks are pyramidal TIFFs whose pixel values are
classes (Radboud: 0 background, 1 stroma, 2 benign epithelium, 3-5 Gleason
3-5); config maps values to classes, ``None`` ignoring a value.  Either way a
patch's class fractions are the share of its area given to each class, and its
label is the class with the largest share, kept only when that share is at
least ``min_label_fraction``; other patches get -1 (kept for heatmaps,
excluded from training).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import shapely
import tifffile
from shapely.geometry import box, shape
from shapely.ops import unary_union

from .geojson import AnnotationError, check_annotation_classes, classification_name
from .geojson import features as _features
from .reader import TiffPyramid

__all__ = ["AnnotationError", "check_annotation_classes", "classification_name"]

UNLABELLED = -1

#: PANDA Radboud mask values -> classes: stroma and benign epithelium are both non-cancerous.
RADBOUD_CLASSES = {0: None, 1: "NC", 2: "NC", 3: "G3", 4: "G4", 5: "G5"}

#: Mask pixels per cell side used for class fractions: 256 samples per patch, read at the coarsest level that has them.
MASK_PIXELS_PER_CELL = 16

#: Relative difference in aspect ratio tolerated between a mask and its slide (scanners crop edges by a few pixels).
ASPECT_TOLERANCE = 0.02

#: Level-0 pixels of mask read at once when labelling patches: memory stays bounded on any slide.
MASK_BAND_PIXELS = 4 << 20


def read_geojson(
    path: str | Path,
    class_map: Mapping[str, str],
    classes: Sequence[str],
    slide_dimensions: tuple[int, int] | None = None,
) -> dict[str, shapely.Geometry]:
    """Union of annotated regions per class, clipped to the slide.

    Raises AnnotationError naming the file and any classification absent from
    ``class_map``; clipping a region that leaves the slide is a warning.
    """
    path = Path(path)
    features = _features(path)
    unknown = sorted({classification_name(f) or "<unnamed>" for f in features} - set(class_map))
    if unknown:
        raise AnnotationError(
            f"{path}: annotation classes {unknown} are not in config `annotation_classes` "
            f"(known: {sorted(class_map)}). Add them to the mapping or remove those annotations."
        )
    regions: dict[str, list] = {c: [] for c in classes}
    for feature in features:
        target = class_map[classification_name(feature)]
        if target not in regions:
            raise AnnotationError(f"{path}: `annotation_classes` maps to {target!r}, which is not in `classes`")
        geometry = shape(feature["geometry"])
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        regions[target].append(geometry)
    merged = {c: unary_union(g) if g else shapely.Polygon() for c, g in regions.items()}
    if slide_dimensions is not None:
        bounds = box(0, 0, *slide_dimensions)
        outside = [c for c, g in merged.items() if not g.is_empty and not bounds.contains(g)]
        if outside:
            warnings.warn(f"{path}: annotations of {outside} extend beyond the slide and were clipped", stacklevel=2)
            merged = {c: g.intersection(bounds) for c, g in merged.items()}
    return merged


def class_fractions(regions: Mapping[str, shapely.Geometry], coords: np.ndarray, cell: int) -> np.ndarray:
    """(N, C) fraction of each level-0 cell covered by each class's region."""
    fractions = np.zeros((len(coords), len(regions)), dtype=np.float64)
    cells = shapely.box(coords[:, 0], coords[:, 1], coords[:, 0] + cell, coords[:, 1] + cell)
    for column, geometry in enumerate(regions.values()):
        if geometry.is_empty:
            continue
        hits = np.flatnonzero(shapely.intersects(cells, geometry))
        if hits.size:
            fractions[hits, column] = shapely.area(shapely.intersection(cells[hits], geometry)) / cell**2
    return fractions


def majority_labels(fractions: np.ndarray, min_label_fraction: float) -> np.ndarray:
    """Class with the largest area per patch, or -1 below ``min_label_fraction``."""
    if fractions.shape[0] == 0:
        return np.zeros(0, dtype=np.int8)
    best = fractions.argmax(axis=1)
    covered = fractions[np.arange(len(best)), best]
    return np.where(covered >= min_label_fraction, best, UNLABELLED).astype(np.int8)


def _mask_scale(path: Path, mask_size: tuple[int, int], slide_dimensions: tuple[int, int]) -> float:
    """Slide level-0 pixels per mask pixel; the mask must cover the slide with the same aspect."""
    (mask_w, mask_h), (slide_w, slide_h) = mask_size, slide_dimensions
    if abs((mask_w / mask_h) / (slide_w / slide_h) - 1) > ASPECT_TOLERANCE:
        raise AnnotationError(
            f"{path}: the mask is {mask_w}x{mask_h} px but the slide is {slide_w}x{slide_h}: a mask must cover the "
            "whole slide, at any scale. Export it from the slide's full extent."
        )
    return slide_w / mask_w


def _open_mask(path: Path) -> TiffPyramid:
    if not path.exists():
        raise AnnotationError(f"{path}: mask file not found. Check the sample sheet or the command line.")
    try:
        return TiffPyramid(path)
    except ValueError as err:
        raise AnnotationError(str(err)) from err


def label_mask_fractions(
    path: str | Path,
    value_classes: Mapping[int, str | None],
    classes: Sequence[str],
    coords: np.ndarray,
    cell: int,
    slide_dimensions: tuple[int, int],
) -> np.ndarray:
    """(N, C) share of each level-0 cell whose mask value maps to each class.

    Read at the coarsest mask level that still gives ``MASK_PIXELS_PER_CELL``
    pixels per cell side, in bands of cell rows, so memory does not grow with
    the slide.  Values mapped to None (background) and unmapped values count
    for no class; unmapped ones are reported in a warning.
    """
    path = Path(path)
    lut = np.full(256, len(classes), np.int64)  # the extra bin: no class
    for value, name in value_classes.items():
        if name is None:
            continue
        if name not in classes:
            raise AnnotationError(f"{path}: label mask value {value} maps to {name!r}, which is not in `classes` "
                                  f"{list(classes)}. Fix `label_mask_classes`.")
        lut[int(value)] = list(classes).index(name)
    fractions = np.zeros((len(coords), len(classes)))
    if not len(coords):
        return fractions
    unmapped = set()
    with _open_mask(path) as mask:
        scale = _mask_scale(path, mask.dimensions, slide_dimensions)
        downsamples = [scale * mask.dimensions[0] / level.width for level in mask.levels]
        fine_enough = [i for i, d in enumerate(downsamples) if cell / d >= MASK_PIXELS_PER_CELL]
        level_index = fine_enough[-1] if fine_enough else 0
        level, downsample = mask.levels[level_index], downsamples[level_index]
        side = max(1, min(MASK_PIXELS_PER_CELL, round(cell / downsample)))  # mask px per cell side after resampling
        cell_xy = coords // cell
        column0, columns = cell_xy[:, 0].min(), cell_xy[:, 0].max() - cell_xy[:, 0].min() + 1
        rows_per_band = max(1, int(MASK_BAND_PIXELS // (columns * cell * cell / downsample**2)))
        for band_row in range(cell_xy[:, 1].min(), cell_xy[:, 1].max() + 1, rows_per_band):
            in_band = np.flatnonzero((cell_xy[:, 1] >= band_row) & (cell_xy[:, 1] < band_row + rows_per_band))
            if not in_band.size:
                continue
            x0, y0 = column0 * cell / downsample, band_row * cell / downsample
            width = round((column0 + columns) * cell / downsample) - round(x0)
            height = round((band_row + rows_per_band) * cell / downsample) - round(y0)
            values = level.read(round(x0), round(y0), width, height)[..., 0]
            values = cv2.resize(values, (columns * side, rows_per_band * side), interpolation=cv2.INTER_NEAREST)
            bins = lut[values]
            if (bins == len(classes)).any():
                unmapped.update(np.unique(values[bins == len(classes)]).tolist())
            band_rows = np.arange(rows_per_band * side, dtype=np.int32)[:, None] // side
            cell_index = band_rows * columns + np.arange(columns * side, dtype=np.int32) // side
            counts = np.bincount((cell_index * (len(classes) + 1) + bins).ravel(),
                                 minlength=rows_per_band * columns * (len(classes) + 1))
            counts = counts.reshape(rows_per_band * columns, len(classes) + 1)[:, : len(classes)]
            rows, cols = cell_xy[in_band, 1] - band_row, cell_xy[in_band, 0] - column0
            fractions[in_band] = counts[rows * columns + cols] / side**2
    unmapped -= {int(v) for v in value_classes}
    if unmapped:
        warnings.warn(f"{path}: label mask values {sorted(unmapped)} are not in `label_mask_classes` and were "
                      "ignored", stacklevel=2)
    return fractions


def read_tissue_mask(
    path: str | Path, slide_dimensions: tuple[int, int], *, min_side: int = 1024
) -> tuple[np.ndarray, float]:
    """A user's tissue mask (nonzero = tissue) and its level-0 downsample.

    PNG/JPEG are read whole; a pyramidal TIFF at its coarsest level with at
    least ``min_side`` pixels on the long side, so a full-resolution mask does
    not have to fit in memory.
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: tissue mask not found. Check the --tissue-mask path.")
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            with _open_mask(path) as pyramid:
                big_enough = [lv for lv in pyramid.levels if max(lv.width, lv.height) >= min_side]
                level = big_enough[-1] if big_enough else pyramid.levels[0]
                image = level.read(0, 0, level.width, level.height)[..., 0]
        except AnnotationError:
            try:  # a small untiled TIFF
                image = np.asarray(tifffile.imread(path))
            except (tifffile.TiffFileError, OSError, ValueError) as err:
                raise AnnotationError(f"{path}: not a readable tissue mask ({err})") from err
    else:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise AnnotationError(f"{path}: not a readable tissue mask image (PNG, JPEG or TIFF, nonzero = tissue)")
    mask = (image.reshape(image.shape[0], image.shape[1], -1)[..., :3] > 0).any(axis=-1)
    return mask, _mask_scale(path, (mask.shape[1], mask.shape[0]), slide_dimensions)
