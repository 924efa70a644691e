"""Region annotations and patch labels: QuPath GeoJSON, PANDA label masks, user tissue masks.

QuPath GeoJSON (:func:`read_annotations`) is read in every form QuPath and other tools write: a
FeatureCollection, a single Feature or a list of features; classifications as
``{"name": ...}``, as QuPath >= 0.4's derived ``{"names": ["Gleason 3",
"Positive"]}`` (joined as QuPath displays it, ``"Gleason 3: Positive"``), as a
plain string, or missing (then ``properties.name``, else ``"<unnamed>"``);
Polygon, MultiPolygon and the polygons of a GeometryCollection, holes kept.
Config ``annotation_classes`` maps names to the pipeline's classes, ``null``
ignoring a name.  Features without a usable polygon (no geometry, points and
lines, geometry ``shapely.make_valid`` cannot turn into an area) are skipped
with one warning that counts them.

Where annotations of different classes overlap, an overlap rule
(:data:`OVERLAP_RULES`, config ``extraction.annotation_overlap``) gives the
shared area to one of them or leaves it undecided; the default, ``innermost``,
gives it to the annotation drawn inside the other, as QuPath's hierarchy reads
a Gleason 4 nest drawn inside a Benign region.

PANDA-style label masks are rasters whose pixel values are classes (Radboud: 0
background, 1 stroma, 2 benign epithelium, 3-5 Gleason 3-5; Karolinska: 0
background, 1 benign tissue, 2 cancer); config ``label_mask_classes`` maps values
to classes, ``None`` ignoring a value.  Either way a patch's class fractions are
the share of its area given to each class, and its label is the class with the
largest share, kept only when that share is at least ``min_label_fraction`` and
larger than the patch's undecided share; other patches get -1 (kept for
heatmaps, excluded from training).

A label mask's *context* values (config ``label_mask_context``, default 1:
Radboud stroma, Karolinska benign tissue) are tissue around the glands, graded as
a pathologist grades: by its glands (:func:`context_labels`).  Tumour glands sit
in stroma, so counting stroma as a vote would call most tumour patches benign.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import box, shape

from .geojson import (
    UNNAMED,
    AnnotationError,
    check_annotation_classes,
    class_names,
    classification_name,
    feature_label,
    read_features,
    unknown_classes,
)
from .mask_values import KAROLINSKA_CONTEXT, RADBOUD_CLASSES, RADBOUD_CONTEXT, check_label_mask_context  # noqa: F401
from .reader import RasterLevel, TiffPyramid

__all__ = ["UNNAMED", "AnnotationError", "check_annotation_classes", "classification_name"]

UNLABELLED = -1


#: Shares below this are float rounding (a mask sample is at least 1/256 of a patch).
FRACTION_EPS = 1e-6

#: Mask pixels per cell side used for class fractions: 256 samples per patch, read at the coarsest level that has them.
MASK_PIXELS_PER_CELL = 16

#: Relative difference in aspect ratio tolerated between a mask and its slide (scanners crop edges by a few pixels).
ASPECT_TOLERANCE = 0.02

#: Level-0 pixels of mask read at once when labelling patches: memory stays bounded on any slide.
MASK_BAND_PIXELS = 4 << 20

#: Rules for the area shared by annotations of different classes (config ``extraction.annotation_overlap``):
#: innermost - the annotation lying inside the other wins (QuPath's hierarchy); partial overlaps are undecided;
#: smallest_area - the smaller annotation wins any overlap; equal areas are undecided;
#: highest_class - the class later in `classes` (the higher grade) wins;
#: undecided - every overlap of different classes is undecided.
OVERLAP_RULES = ("innermost", "smallest_area", "highest_class", "undecided")

#: An annotation lies inside another when at least this share of its area does (hand-drawn edges wobble).
CONTAINED_FRACTION = 0.98

#: Overlaps smaller than this (level-0 px^2) are shared edges, not overlaps.
MIN_OVERLAP_AREA = 1.0


def _polygonal(geometry) -> shapely.Geometry | None:
    """A feature's geometry as a valid (Multi)Polygon with area, or None when it has none."""
    if not isinstance(geometry, dict):
        return None
    try:
        geom = shape(geometry)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        if geom.geom_type == "GeometryCollection":  # make_valid and some exporters mix polygons with lines
            geom = shapely.union_all([g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")])
        valid = geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_empty and geom.area > 0 \
            and np.isfinite(geom.bounds).all()
    except Exception:  # noqa: BLE001 - shapely's shape() raises a different type for each malformed form
        return None
    return geom if valid else None


@dataclass
class Annotations:
    """Annotated regions after the overlap rule.

    ``regions``: class -> its area (disjoint across classes); ``undecided``: area
    the rule could not give to one class; ``overlaps``: "A/B" (classes in
    `classes` order) -> the area where annotations of A and B overlap, and
    ``overlap_pairs`` the number of overlapping annotation pairs.  Level-0 px.
    """

    regions: dict[str, shapely.Geometry]
    undecided: shapely.Geometry = field(default_factory=shapely.Polygon)
    overlaps: dict[str, shapely.Geometry] = field(default_factory=dict)
    overlap_pairs: dict[str, int] = field(default_factory=dict)
    skipped: int = 0


def _winner(rule: str, i: int, j: int, classes: list, areas: list, shared: float) -> int | None:
    """Which of annotations i and j (of different classes) gets their shared area under ``rule``; None: undecided."""
    if rule == "innermost":
        i_inside, j_inside = shared >= CONTAINED_FRACTION * areas[i], shared >= CONTAINED_FRACTION * areas[j]
        return i if i_inside and not j_inside else j if j_inside and not i_inside else None
    if rule == "smallest_area":
        if abs(areas[i] - areas[j]) <= 1e-6 * max(areas[i], areas[j]):
            return None
        return i if areas[i] < areas[j] else j
    if rule == "highest_class":
        return i if classes[i] > classes[j] else j
    return None


def _resolve_overlaps(geoms: list, class_index: list, names: Sequence[str], rule: str) -> Annotations:
    areas = [g.area for g in geoms]
    cut: list[list] = [[] for _ in geoms]  # areas each annotation loses to others or to undecided
    undecided, overlaps, pairs = [], {}, {}
    tree = shapely.STRtree(geoms)
    left, right = tree.query(np.asarray(geoms, dtype=object), predicate="intersects")  # object dtype: none may be empty
    for i, j in zip(left.tolist(), right.tolist()):
        if i >= j or class_index[i] == class_index[j]:
            continue
        shared = shapely.intersection(geoms[i], geoms[j])
        if shared.area < MIN_OVERLAP_AREA:
            continue
        low, high = sorted((class_index[i], class_index[j]))
        key = f"{names[low]}/{names[high]}"
        overlaps.setdefault(key, []).append(shared)
        pairs[key] = pairs.get(key, 0) + 1
        winner = _winner(rule, i, j, class_index, areas, shared.area)
        if winner is None:
            undecided.append(shared)
            cut[i].append(shared)
            cut[j].append(shared)
        else:
            cut[j if winner == i else i].append(shared)
    regions: dict[str, list] = {c: [] for c in names}
    for geom, index, lost in zip(geoms, class_index, cut):
        regions[names[index]].append(geom.difference(shapely.union_all(lost)) if lost else geom)
    return Annotations(
        regions={c: shapely.union_all(g) if g else shapely.Polygon() for c, g in regions.items()},
        undecided=shapely.union_all(undecided) if undecided else shapely.Polygon(),
        overlaps={k: shapely.union_all(v) for k, v in overlaps.items()},
        overlap_pairs=pairs,
    )


def read_annotations(
    path: str | Path,
    class_map: Mapping[str, str | None],
    classes: Sequence[str],
    slide_dimensions: tuple[int, int] | None = None,
    *,
    overlap: str = "innermost",
) -> Annotations:
    """Annotated regions per class, after the ``overlap`` rule, clipped to the slide (level-0 px).

    Raises AnnotationError, one line naming the file (and the features), for an
    unreadable file, a classification absent from ``class_map`` or of no known
    form, or a mapping onto a name not in ``classes``.  Features of classes
    mapped to None are ignored; unusable features are skipped with one warning
    counting them; clipping a region that leaves the slide is a warning.
    """
    path = Path(path)
    if overlap not in OVERLAP_RULES:
        raise AnnotationError(f"unknown annotation overlap rule {overlap!r}: choose one of {', '.join(OVERLAP_RULES)} "
                              "(`extraction.annotation_overlap`)")
    features = read_features(path)
    names = class_names(path, features)
    unknown = unknown_classes(path, names, features, class_map)
    if unknown:
        raise AnnotationError(f"{unknown}: not in config `annotation_classes` (known: {sorted(class_map)}). "
                              "Add them to the mapping (null ignores a class) or remove those annotations.")
    targets = {class_map[n] for n in names if n is not None} - {None} - set(classes)
    if targets:
        raise AnnotationError(f"{path}: `annotation_classes` maps to {sorted(targets)}, which are not in `classes` "
                              f"{list(classes)}")
    geoms, class_index, skipped = [], [], []
    for index, (name, feature) in enumerate(zip(names, features)):
        if name is not None and class_map[name] is None:
            continue
        geom = _polygonal(feature.get("geometry")) if name is not None else None
        if geom is None:
            skipped.append(feature_label(index, feature))
            continue
        geoms.append(geom)
        class_index.append(list(classes).index(class_map[name]))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} feature(s) without a usable polygon (no geometry, points or "
                      f"lines, or a shape that cannot be repaired): {', '.join(skipped[:5])}"
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
    result = _resolve_overlaps(geoms, class_index, list(classes), overlap)
    result.skipped = len(skipped)
    if slide_dimensions is not None:
        bounds = box(0, 0, *slide_dimensions)
        outside = [c for c, g in result.regions.items() if not g.is_empty and not bounds.contains(g)]
        if outside:
            warnings.warn(f"{path}: annotations of {outside} extend beyond the slide and were clipped", stacklevel=2)
            result.regions = {c: g.intersection(bounds) for c, g in result.regions.items()}
            result.undecided = result.undecided.intersection(bounds)
    return result


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


def majority_labels(fractions: np.ndarray, min_label_fraction: float, undecided: np.ndarray | None = None
                    ) -> np.ndarray:
    """(N,) int8: the class with the largest area per patch, or -1 below ``min_label_fraction``.

    ``undecided`` (N,) is each patch's share the overlap rule left undecided:
    a patch where it is at least the best class's share gets -1.
    """
    if fractions.shape[0] == 0:
        return np.zeros(0, dtype=np.int8)
    best = fractions.argmax(axis=1)
    covered = fractions[np.arange(len(best)), best]
    labelled = covered >= min_label_fraction
    if undecided is not None:
        labelled &= ~((undecided > 0) & (undecided >= covered))
    return np.where(labelled, best, UNLABELLED).astype(np.int8)


def _mask_scale(path: Path, mask_size: tuple[int, int], slide_dimensions: tuple[int, int]) -> float:
    """Slide level-0 pixels per mask pixel; the mask must cover the slide with the same aspect."""
    (mask_w, mask_h), (slide_w, slide_h) = mask_size, slide_dimensions
    if abs((mask_w / mask_h) / (slide_w / slide_h) - 1) > ASPECT_TOLERANCE:
        raise AnnotationError(
            f"{path}: the mask is {mask_w}x{mask_h} px but the slide is {slide_w}x{slide_h}: a mask must cover the "
            "whole slide, at any scale. Export it from the slide's full extent."
        )
    return slide_w / mask_w


class _ImageMask:
    """A PNG/JPEG/BMP mask read whole, with :class:`TiffPyramid`'s interface (one level)."""

    def __init__(self, path: Path, image: np.ndarray):
        self.levels = [RasterLevel(path, image, 0)]
        self.dimensions = (self.levels[0].width, self.levels[0].height)

    def __enter__(self) -> _ImageMask:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _open_mask(path: Path) -> TiffPyramid | _ImageMask:
    """A mask raster of any layout: a tiled or stripped TIFF (every level), or an image file OpenCV reads."""
    if not path.exists():
        raise AnnotationError(f"{path}: mask file not found. Check the sample sheet or the command line.")
    with open(path, "rb") as head:
        is_tiff = head.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    if is_tiff:
        try:
            return TiffPyramid(path)
        except ValueError as err:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # 1-bit CCITT masks: libtiff decodes them, 0/255
            if image is None or image.dtype != np.uint8:
                raise AnnotationError(str(err)) from err
    else:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8:
        raise AnnotationError(f"{path}: not a readable 8-bit mask (TIFF, PNG or another image OpenCV reads, one "
                              "value per pixel). Re-export it as an 8-bit image.")
    if image.ndim == 3:
        image = image[..., ::-1] if image.shape[2] == 3 else image[..., [2, 1, 0, 3]]  # BGR(A) -> RGB(A): red first
    return _ImageMask(path, image)


def label_mask_fractions(
    path: str | Path,
    value_classes: Mapping[int, str | None],
    classes: Sequence[str],
    coords: np.ndarray,
    cell: int,
    slide_dimensions: tuple[int, int],
    context: Collection[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) share of each level-0 cell whose mask value maps to each class, and (N, C) the part of it
    from the ``context`` values (zeros when there are none): the inputs of :func:`context_labels`.

    The mask is any raster :func:`_open_mask` reads (tiled or stripped TIFF,
    PNG) covering the whole slide at any scale (PANDA: the value in red).
    Read at the coarsest mask level that still gives ``MASK_PIXELS_PER_CELL``
    pixels per cell side, in bands of cell rows, so memory does not grow with
    the slide.  Values mapped to None (background) and unmapped values count
    for no class; unmapped ones are reported in a warning.
    """
    path = Path(path)
    lut = np.full(256, len(classes), np.int64)  # the extra bin: no class
    context = {int(v) for v in context}
    for value, name in value_classes.items():
        if name is None:
            continue
        if name not in classes:
            raise AnnotationError(f"{path}: label mask value {value} maps to {name!r}, which is not in `classes` "
                                  f"{list(classes)}. Fix `label_mask_classes`.")
        lut[int(value)] = list(classes).index(name) + (len(classes) + 1 if int(value) in context else 0)
    check_label_mask_context(value_classes, context, path)
    bins_total = 2 * len(classes) + 1  # epithelium classes, no class, context classes
    fractions = np.zeros((len(coords), bins_total))
    if not len(coords):
        return fractions[:, : len(classes)], fractions[:, : len(classes)]
    unmapped = set()
    with _open_mask(path) as mask:
        scale = _mask_scale(path, mask.dimensions, slide_dimensions)
        downsamples = [scale * mask.dimensions[0] / level.width for level in mask.levels]
        fine_enough = [i for i, d in enumerate(downsamples) if cell / d >= MASK_PIXELS_PER_CELL]
        level_index = fine_enough[-1] if fine_enough else 0
        level, downsample = mask.levels[level_index], downsamples[level_index]
        side = max(1, min(MASK_PIXELS_PER_CELL, round(cell / downsample)))  # mask px per cell side after resampling
        if cell / downsample < MASK_PIXELS_PER_CELL:
            warnings.warn(f"{path}: the mask holds {cell / downsample:g} px per patch side (1/{downsample:g} of the "
                          f"slide), under {MASK_PIXELS_PER_CELL}: thin glands are lost and labels near "
                          "`min_label_fraction` / `min_epithelium_fraction` are coarse. Export the mask at a finer "
                          "scale", stacklevel=2)
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
            counts = np.bincount((cell_index * bins_total + bins).ravel(),
                                 minlength=rows_per_band * columns * bins_total)
            counts = counts.reshape(rows_per_band * columns, bins_total)
            rows, cols = cell_xy[in_band, 1] - band_row, cell_xy[in_band, 0] - column0
            fractions[in_band] = counts[rows * columns + cols] / side**2
    unmapped -= {int(v) for v in value_classes}
    if unmapped:
        warnings.warn(f"{path}: label mask values {sorted(unmapped)} are not in `label_mask_classes` and were "
                      "ignored", stacklevel=2)
    glands, in_context = fractions[:, : len(classes)], fractions[:, len(classes) + 1:]
    return glands + in_context, in_context


def unlabelled_gland_classes(fractions: np.ndarray, context: np.ndarray, labels: np.ndarray,
                             classes: Sequence[str]) -> dict[str, int]:
    """Class -> the number of patches holding its epithelium, for each class whose epithelium (``fractions``
    minus ``context``, (N, C)) lies in some patch while no patch has its label (``labels`` (N,)): a tumour
    focus too small for ``min_epithelium_fraction``, or out-voted, that the slide's labels would not show."""
    shown = (np.asarray(fractions, np.float64) - np.asarray(context, np.float64)) > FRACTION_EPS
    return {name: int(shown[:, k].sum()) for k, name in enumerate(classes)
            if shown[:, k].any() and not (labels == k).any()}


def context_labels(fractions: np.ndarray, context: np.ndarray, min_label_fraction: float,
                   min_epithelium_fraction: float) -> np.ndarray:
    """(N,) int8 labels of label-mask patches, graded by their glands rather than by their stroma.

    ``fractions`` (N, C): each class's share of the patch area; ``context`` (N, C): the part of it from the
    mask's context values (``label_mask_context``: Radboud stroma, Karolinska benign tissue).  The rest is
    epithelium (glands).  With *tissue* = every labelled pixel of the patch:

    * epithelium at least ``min_epithelium_fraction`` of the tissue: the context is given to the epithelium's
      classes in proportion to their area, so the patch is graded by its glands (a Gleason 4 gland ring in
      stroma is G4), then :func:`majority_labels` applies as to annotations: the winning class, which now
      stands for the whole tissue, must cover ``min_label_fraction`` of the patch;
    * less (or no) epithelium: the context votes as its own class (pure stroma is NC), but a patch holding
      epithelium of any other class (a sliver of a tumour gland at its edge) is undecided, -1: never
      labelled against a gland it shows.

    With no context (``context`` all zero) this is :func:`majority_labels` on ``fractions``.
    """
    fractions, context = np.asarray(fractions, np.float64), np.asarray(context, np.float64)
    epithelium = np.where(fractions - context > FRACTION_EPS, fractions - context, 0.0)
    tissue, glands = fractions.sum(axis=1), epithelium.sum(axis=1)
    graded = (glands > 0) & (glands >= min_epithelium_fraction * tissue)
    share = np.divide(epithelium, glands[:, None], out=np.zeros_like(epithelium), where=glands[:, None] > 0)
    effective = np.where(graded[:, None], share * tissue[:, None], fractions)
    other = np.ones_like(epithelium, dtype=bool)  # classes other than the patch's context class
    other[np.arange(len(other)), context.argmax(axis=1)] = False
    undecided = np.where(~graded & ((epithelium > 0) & other).any(axis=1), 1.0, 0.0)
    return majority_labels(effective, min_label_fraction, undecided)


def read_tissue_mask(
    path: str | Path, slide_dimensions: tuple[int, int], *, min_side: int = 1024
) -> tuple[np.ndarray, float]:
    """A user's tissue mask (nonzero = tissue) and its level-0 downsample.

    Any raster :func:`_open_mask` reads: PNG/JPEG whole; a TIFF (tiled or
    stripped) at its coarsest level with at least ``min_side`` pixels on the
    long side, so a full-resolution pyramidal mask does not have to fit in memory.
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: tissue mask not found. Check the --tissue-mask path.")
    with _open_mask(path) as pyramid:
        big_enough = [lv for lv in pyramid.levels if max(lv.width, lv.height) >= min_side]
        level = big_enough[-1] if big_enough else pyramid.levels[0]
        image = level.read(0, 0, level.width, level.height)
    mask = (image[..., :3] > 0).any(axis=-1) if image.shape[-1] in (3, 4) else image[..., 0] > 0
    if image.shape[-1] in (2, 4):  # an alpha channel: transparent pixels are no tissue, whatever colour they hold
        mask &= image[..., -1] > 0
    return mask, _mask_scale(path, (mask.shape[1], mask.shape[0]), slide_dimensions)
