"""QuPath GeoJSON classifications, read without the imaging stack.

The sample-sheet check (``snakemake -n``) reads annotation class names with these; reading the
regions themselves (shapely, rasterising) is :mod:`wsidistill.slides.annotations`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import InputError


class AnnotationError(InputError, ValueError):
    """Annotations (GeoJSON, label or tissue mask) that cannot be read or mapped onto the configured classes."""


def classification_name(feature: dict) -> str | None:
    props = feature.get("properties") or {}
    classification = props.get("classification") or {}
    return classification.get("name") or props.get("name")


def features(path: Path) -> list:
    """The features of a GeoJSON FeatureCollection (or a bare list of features); AnnotationError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not readable GeoJSON ({err})") from err
    features = data.get("features", []) if isinstance(data, dict) and data.get("type") == "FeatureCollection" else data
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection or a list of features")
    return features


def check_annotation_classes(paths: Sequence[str | Path], class_map: Mapping[str, str]) -> None:
    """Fail before any job when a GeoJSON uses a classification missing from ``class_map``, naming every file."""
    problems = []
    for path in paths:
        unknown = sorted({classification_name(f) or "<unnamed>" for f in features(Path(path))} - set(class_map))
        if unknown:
            problems.append(f"{path}: {unknown}")
    if problems:
        raise AnnotationError(
            f"annotation classes not in config `annotation_classes` (known: {sorted(class_map)}): "
            + "; ".join(problems) + ". Add them to the mapping or remove those annotations."
        )
