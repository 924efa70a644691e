"""QuPath GeoJSON classifications, read without the imaging stack.

The sample-sheet check (``snakemake -n``) reads annotation class names with these; reading the
regions themselves (shapely, rasterising) is :mod:`wsidistill.slides.annotations`. Every form
QuPath and other tools write is read: ``classification: {"name": ...}``, QuPath >= 0.4's derived
classes ``{"names": [...]}`` (joined as QuPath displays them, "Gleason 3: Positive"), a plain
string, or no classification (``properties.name``, else :data:`UNNAMED`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import InputError

#: Name given to features without a classification; map it in `annotation_classes` like any other.
UNNAMED = "<unnamed>"


class AnnotationError(InputError, ValueError):
    """Annotations (GeoJSON, label or tissue mask) that cannot be read or mapped onto the configured classes."""


def feature_label(index: int, feature) -> str:
    ident = feature.get("id") if isinstance(feature, dict) else None
    return f"feature {index}" + (f" (id {ident})" if isinstance(ident, (str, int)) else "")


def classification_name(feature: dict) -> str | None:
    """The class name of a GeoJSON feature as QuPath displays it, or None when it has none.

    Raises ValueError for a classification of a form no tool writes (a number, a list, a dict without names).
    """
    props = feature.get("properties") if isinstance(feature, dict) else None
    props = props if isinstance(props, dict) else {}
    classification = props.get("classification")
    if classification is None:
        name = props.get("name")
        return name.strip() or None if isinstance(name, str) else None
    if isinstance(classification, str):
        return classification.strip() or None
    if isinstance(classification, dict):
        name, names = classification.get("name"), classification.get("names")
        if isinstance(name, str) and name.strip():
            return name.strip()
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(n.strip() for n in names)  # QuPath's derived classes, e.g. "Gleason 3: Positive"
        if name is None and names is None:
            return None
    raise ValueError(f"classification {json.dumps(classification)[:80]} is neither a name, "
                     '{"name": ...} nor {"names": [...]}')


#: GeoJSON geometry types; a bare geometry (a file or list item without a Feature around it) is read as an
#: unclassified feature.
GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                            "GeometryCollection"})


def _flatten(items: list, path: Path, depth: int = 0) -> list:
    """Features of a list whose items may be FeatureCollections (merged exports) or bare geometries."""
    features = []
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "FeatureCollection":
            nested = item.get("features")
            if not isinstance(nested, list):
                raise AnnotationError(f"{path}: a FeatureCollection without a list of features")
            if depth > 8:
                raise AnnotationError(f"{path}: FeatureCollections nested more than 8 deep")
            features.extend(_flatten(nested, path, depth + 1))
        elif kind in GEOMETRY_TYPES:
            features.append({"type": "Feature", "geometry": item, "properties": {}})
        else:
            features.append(item)
    return features


def read_features(path: Path) -> list:
    """The file's features: a FeatureCollection's (nested collections flattened), a single Feature, a bare
    geometry (an unclassified feature), or a list of any of these."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # some Windows tools write a byte-order mark
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise AnnotationError(f"{path}: not readable GeoJSON ({err})") from err
    if isinstance(data, dict) and data.get("type") in GEOMETRY_TYPES | {"Feature", "FeatureCollection"}:
        data = [data]
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection, a Feature or a list of features "
                              "(as QuPath exports them)")
    return _flatten(data, path)


def class_names(path: Path, features: list) -> list[str | None]:
    """Each feature's class name (UNNAMED when it has none), None for an item that is not a feature at all."""
    names = []
    for index, feature in enumerate(features):
        if not isinstance(feature, dict):
            names.append(None)
            continue
        try:
            names.append(classification_name(feature) or UNNAMED)
        except ValueError as err:
            raise AnnotationError(f"{path}: {feature_label(index, feature)}: {err}. Fix or remove it.") from None
    return names


def unknown_classes(path: Path, names: list, features: list, class_map: Mapping) -> str | None:
    unknown: dict[str, list[str]] = {}
    for index, (name, feature) in enumerate(zip(names, features)):
        if name is not None and name not in class_map:
            unknown.setdefault(name, []).append(feature_label(index, feature))
    if not unknown:
        return None
    where = "; ".join(f"{name!r} in {', '.join(labels[:3])}{' and %d more' % (len(labels) - 3) if len(labels) > 3 else ''}"
                      for name, labels in sorted(unknown.items()))
    return f"{path}: {sorted(unknown)} ({where})"


def check_annotation_classes(paths: Sequence[str | Path], class_map: Mapping[str, str | None]) -> None:
    """Fail before any job when a GeoJSON is unreadable or uses a classification missing from ``class_map``.

    One AnnotationError names every file at fault (and, for unknown classes, the features); nothing else is raised.
    """
    problems = []
    for path in paths:
        path = Path(path)
        try:
            features = read_features(path)
            problem = unknown_classes(path, class_names(path, features), features, class_map)
        except AnnotationError as err:
            problem = str(err)
        if problem:
            problems.append(problem)
    if problems:
        raise AnnotationError(
            f"annotation classes not in config `annotation_classes` (known: {sorted(class_map)}), or unreadable "
            "annotations: " + "; ".join(problem.rstrip(".") for problem in problems) + ". Add the classes to the mapping (null ignores a class) or "
            "remove those annotations."
        )
