"""Slide-level Gleason score and ISUP grade group from a predicted patch-class map.

Rules for needle biopsies, ISUP 2014 consensus (Epstein et al., Am J Surg Pathol
2016;40:244-252) as adopted by the WHO 2016 classification:

* primary pattern = the most extensive pattern among 3, 4 and 5;
* a pattern of HIGHER grade than the primary counts as secondary in any amount,
  and with three patterns the score is primary + highest (3 + 4 + minor 5 -> 3+5);
* a pattern of LOWER grade than the primary counts only if it occupies at least
  5% of the tumour (4 with <5% 3 -> 4+4);
* with a single pattern the secondary equals the primary (pure 3 -> 3+3).

Both secondary rules reduce to one: the secondary is the highest grade among the
other patterns that count, or the primary when none counts.

Conventions where the rules are silent:

* Ties in area for the primary go to the higher grade (conservative: never
  under-grade on a tie), e.g. equal 3 and 4 -> 4+3.
* Primary 5 with lower patterns 3 and 4 both >= 5% -> 5+4 ("primary + highest"
  applied to the remaining patterns), even when 3 is more extensive than 4.
* A benign slide (no tumour, or tumour below ``min_tumour_fraction`` of the
  tissue) has no patterns and no score (``None``) and grade group 0, the encoding
  used by the PANDA challenge for negative biopsies.

Class order is ordinal and fixed: ``class_names[0]`` is non-cancerous tissue and
``class_names[1:]`` are Gleason patterns 3, 4 and 5. The names themselves come
from the config; only their order carries meaning here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_CLASS_NAMES = ("NC", "G3", "G4", "G5")
PATTERNS = (3, 4, 5)
LOWER_GRADE_MIN_FRACTION = 0.05
"""A lower-grade pattern below this fraction of the tumour area is ignored (ISUP 2014)."""


@dataclass(frozen=True)
class SlideGrade:
    """Slide-level grade; patterns and score are ``None`` and grade group 0 for benign slides."""

    primary: int | None
    secondary: int | None
    score: int | None
    grade_group: int
    tumour_fraction: float


def _check_patterns(primary: int, secondary: int) -> None:
    for pattern in (primary, secondary):
        if pattern not in PATTERNS:
            raise ValueError(f"Gleason patterns must be one of {PATTERNS}, got {pattern}")


def gleason_score(primary: int, secondary: int) -> int:
    """Gleason score = primary + secondary pattern (6..10 under contemporary grading)."""
    _check_patterns(primary, secondary)
    return primary + secondary


def grade_group(primary: int, secondary: int) -> int:
    """ISUP grade group: 1 = 3+3, 2 = 3+4, 3 = 4+3, 4 = score 8, 5 = score 9-10.

    The score alone does not determine the group: 3+4 and 4+3 are both 7 but
    differ in prognosis, which is why the grade groups exist (Epstein et al. 2016).
    """
    score = gleason_score(primary, secondary)
    if score <= 6:
        return 1
    if score == 7:
        return 2 if primary == 3 else 3
    if score == 8:
        return 4
    return 5


def _areas_vector(class_areas, class_names: Sequence[str]) -> np.ndarray:
    """Per-class areas as a float vector aligned with ``class_names``."""
    if len(class_names) != 1 + len(PATTERNS):
        raise ValueError(
            f"class_names must be the non-cancerous class then patterns {PATTERNS}, got {class_names}"
        )
    if isinstance(class_areas, Mapping):
        unknown = set(class_areas) - set(class_names)
        if unknown:
            raise ValueError(f"unknown classes {sorted(unknown)}; expected {list(class_names)}")
        areas = np.array([float(class_areas.get(name, 0.0)) for name in class_names])
    else:
        areas = np.asarray(class_areas, dtype=float).ravel()
        if areas.size != len(class_names):
            raise ValueError(f"got {areas.size} areas for {len(class_names)} classes")
    if not np.all(np.isfinite(areas)) or np.any(areas < 0):
        raise ValueError(f"class areas must be finite and non-negative, got {areas}")
    if areas.sum() == 0:
        raise ValueError("no tissue: every class area is 0")
    return areas


def grade_slide(
    class_areas: Mapping[str, float] | Sequence[float] | np.ndarray,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    *,
    min_tumour_fraction: float = 0.0,
) -> SlideGrade:
    """Grade a biopsy from the area (or patch count) of each class on the slide.

    ``class_areas`` maps class name to area, or is a vector aligned with
    ``class_names``. ``min_tumour_fraction`` is the tumour share of the tissue
    below which the slide is called benign: a few false-positive patches should
    not turn a benign biopsy into cancer. The default 0.0 applies the ISUP rules
    as written (any tumour counts); set it per experiment from validation data.
    """
    areas = _areas_vector(class_areas, class_names)
    tumour_areas = dict(zip(PATTERNS, areas[1:]))
    tumour = float(sum(tumour_areas.values()))
    tumour_fraction = tumour / float(areas.sum())
    if tumour == 0 or tumour_fraction < min_tumour_fraction:
        return SlideGrade(None, None, None, 0, tumour_fraction)

    primary = max(PATTERNS, key=lambda p: (tumour_areas[p], p))
    counted = [
        p
        for p in PATTERNS
        if p != primary
        and tumour_areas[p] > 0
        and (p > primary or tumour_areas[p] / tumour >= LOWER_GRADE_MIN_FRACTION)
    ]
    secondary = max(counted, default=primary)
    return SlideGrade(
        primary=primary,
        secondary=secondary,
        score=gleason_score(primary, secondary),
        grade_group=grade_group(primary, secondary),
        tumour_fraction=tumour_fraction,
    )


def grade_from_patch_labels(
    labels,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    *,
    min_tumour_fraction: float = 0.0,
) -> SlideGrade:
    """Grade a biopsy from predicted patch classes, using the patch count as area.

    ``labels`` is a vector or 2-d map of class indices; -1 marks patches without
    tissue or without a prediction and is not counted.
    """
    labels = np.asarray(labels).ravel()
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    tissue = labels[labels != -1].astype(np.int64)
    if tissue.size and (tissue.min() < 0 or tissue.max() >= len(class_names)):
        raise ValueError(f"labels must be -1 or in 0..{len(class_names) - 1}")
    counts = np.bincount(tissue, minlength=len(class_names))
    return grade_slide(counts, class_names, min_tumour_fraction=min_tumour_fraction)
