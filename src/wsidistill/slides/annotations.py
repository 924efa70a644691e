"""Region annotations and patch labels.

QuPath exports GeoJSON FeatureCollections whose features carry
``properties.classification.name``; config maps those names to the pipeline's
classes.  A patch's label is the class with the largest annotated area in it,
kept only when that area is at least ``min_label_fraction`` of the patch;
other patches get -1 (kept for heatmaps, excluded from training).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import box, shape
from shapely.ops import unary_union

UNLABELLED = -1


class AnnotationError(ValueError):
    """Annotations that cannot be mapped onto the configured classes."""


def classification_name(feature: dict) -> str | None:
    props = feature.get("properties") or {}
    classification = props.get("classification") or {}
    return classification.get("name") or props.get("name")


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
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: not readable GeoJSON ({err})") from err
    features = data.get("features", []) if isinstance(data, dict) and data.get("type") == "FeatureCollection" else data
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection or a list of features")
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
