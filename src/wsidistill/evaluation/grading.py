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
* ``min_pattern_fraction`` (default 0: the rules as written) is the share of the
  tumour a pattern other than the primary must cover to count as secondary or
  tertiary, whatever its grade (a lower grade still needs 5%). A model's stray
  higher-grade patches would otherwise lift every score; the value is chosen per
  model on the validation slides, from :data:`MIN_PATTERN_FRACTIONS`, by
  :func:`choose_min_pattern_fraction`, never on the test slides.

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
MIN_PATTERN_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
"""The fixed grid :func:`choose_min_pattern_fraction` picks the secondary/tertiary minimum area from."""


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
    min_pattern_fraction: float = 0.0,
) -> SlideGrade:
    """Grade a biopsy from the area (or patch count) of each class on the slide.

    ``class_areas`` maps class name to area, or is a vector aligned with
    ``class_names``. ``min_tumour_fraction`` is the tumour share of the tissue
    below which the slide is called benign: a few false-positive patches should
    not turn a benign biopsy into cancer. ``min_pattern_fraction`` is the tumour
    share below which a non-primary pattern is ignored (see the module notes).
    The defaults 0.0 apply the ISUP rules as written (any tumour counts); set
    them per experiment from validation data.
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
        and tumour_areas[p] / tumour >= min_pattern_fraction
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
    min_pattern_fraction: float = 0.0,
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
    return grade_slide(counts, class_names, min_tumour_fraction=min_tumour_fraction,
                       min_pattern_fraction=min_pattern_fraction)


def grade_group_agreement(
    predicted: Sequence,
    truth: Sequence[int],
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    *,
    min_pattern_fraction: float = 0.0,
) -> float:
    """Share of slides whose grade group from ``predicted`` patch classes (one label vector per
    slide, -1 not counted) equals ``truth`` (the annotation's grade group per slide); NaN without slides."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted slides but {len(truth)} reference grade groups")
    if not len(truth):
        return float("nan")
    groups = [grade_from_patch_labels(labels, class_names, min_pattern_fraction=min_pattern_fraction).grade_group
              for labels in predicted]
    return float(np.mean(np.asarray(groups) == np.asarray(truth)))


def choose_min_pattern_fraction(
    predicted: Sequence,
    truth: Sequence[int],
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    grid: Sequence[float] = MIN_PATTERN_FRACTIONS,
) -> tuple[float, dict[float, float]]:
    """The ``min_pattern_fraction`` of ``grid`` with the highest grade-group agreement on these slides.

    Pass the VALIDATION slides only: ``predicted`` a model's patch classes per slide, ``truth`` the
    annotation's grade group per slide. Ties go to the smallest value (closest to the ISUP rules
    as written); without slides the choice is ``grid``'s smallest. Returns the value and the
    agreement at each grid value.
    """
    if not len(grid):
        raise ValueError("the min_pattern_fraction grid is empty")
    grid = sorted(float(v) for v in grid)
    agreement = {v: grade_group_agreement(predicted, truth, class_names, min_pattern_fraction=v) for v in grid}
    if not len(truth):
        return grid[0], agreement
    best = max(agreement.values())
    return next(v for v in grid if agreement[v] == best), agreement
