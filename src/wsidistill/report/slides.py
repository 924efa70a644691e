"""Slide-level grading: Gleason score and ISUP grade group per test slide and model.

The predicted grade comes from the model's class map over every tissue patch;
the reference grade is derived the same way from the annotation's patch
labels (the ISUP rules as written), so the two differ only by the model's
errors. The minimum area of a secondary or tertiary pattern
(``min_pattern_fraction``, :mod:`wsidistill.evaluation.grading`) is chosen per
model on the VALIDATION slides (:func:`choose_min_pattern_fraction`) and then
applied unchanged to the test slides: the test split takes no part in it.
A slide without any labelled patch (no annotations) has no reference grade: a
test slide's row is kept, with the predicted grade, ``reference`` "unlabelled"
and empty true fields, and left out of the summary row; a validation slide
without labels takes no part in the choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from ..evaluation.grading import (
    MIN_PATTERN_FRACTIONS,
    choose_min_pattern_fraction,
    grade_from_patch_labels,
    grade_group_agreement,
)
from ..evaluation.metrics import quadratic_kappa
from ..evaluation.splits import UNLABELLED
from ..io import write_text
from ..patches.store import LABELS, PROBABILITIES, open_store, read_attributes

GRADE_GROUPS = 6  # 0 (benign) .. 5

#: Per slide: (class names, the annotation's patch labels, the model's predicted patch classes).
Slides = dict[str, tuple[list[str], np.ndarray, np.ndarray]]


def _grade_fields(prefix: str, grade) -> dict:
    return {f"{prefix}_primary": grade.primary, f"{prefix}_secondary": grade.secondary,
            f"{prefix}_score": grade.score, f"{prefix}_grade_group": grade.grade_group}


def _reference_fields(labels: np.ndarray, classes: list[str]) -> dict:
    """The reference grade from the patch labels, or ``reference`` "unlabelled" and no grade without any."""
    if not (labels >= 0).any():
        return {"reference": UNLABELLED,
                **{f"true_{key}": None for key in ("primary", "secondary", "score", "grade_group")}}
    return {"reference": "patch labels", **_grade_fields("true", grade_from_patch_labels(labels, classes))}


def model_grades(model: str, test: Slides, validation: Slides | None,
                 grid: tuple[float, ...] = MIN_PATTERN_FRACTIONS) -> list[dict]:
    """One row per test slide of ``model`` and a summary row (``slide_id`` "ALL").

    ``min_pattern_fraction`` is chosen on ``validation`` (None: 0, the ISUP rules as written) and
    written on every row. The summary holds the grade-group agreement (accuracy) and quadratic
    kappa against the annotation on the test slides, the validation agreement at the chosen value,
    and the test agreement under the rules as written (``grade_group_accuracy_isup``) for comparison.
    """
    if validation:
        validation = {slide: value for slide, value in validation.items() if (value[1] >= 0).any()}
    if validation:
        classes = next(iter(validation.values()))[0]
        val_truth = [grade_from_patch_labels(labels, classes).grade_group for _, labels, _ in validation.values()]
        chosen, agreement = choose_min_pattern_fraction([p for *_, p in validation.values()], val_truth, classes, grid)
        val_agreement = agreement[chosen]
    else:
        chosen, val_agreement = 0.0, float("nan")
    rows = []
    for slide_id, (classes, labels, predicted) in test.items():
        rows.append({"model": model, "slide_id": slide_id, "min_pattern_fraction": chosen,
                     **_reference_fields(labels, classes),
                     **_grade_fields("predicted", grade_from_patch_labels(predicted, classes,
                                                                          min_pattern_fraction=chosen))})
    labelled = [row for row in rows if row["reference"] != UNLABELLED]
    truth = np.array([row["true_grade_group"] for row in labelled], dtype=int)
    predicted = np.array([row["predicted_grade_group"] for row in labelled], dtype=int)
    labelled_predictions = [p for _, labels, p in test.values() if (labels >= 0).any()]
    classes = next(iter(test.values()))[0] if test else None
    left_out = len(rows) - len(labelled)
    rows.append({
        "model": model, "slide_id": "ALL", "min_pattern_fraction": chosen,
        "reference": f"labelled slides: {len(labelled)}" + (f", {UNLABELLED} left out: {left_out}" if left_out else ""),
        "min_pattern_fraction_source": "validation" if validation else "ISUP as written (no validation predictions)",
        "validation_slides": len(validation or {}), "validation_grade_group_accuracy": val_agreement,
        "grade_group_accuracy": float((truth == predicted).mean()) if len(truth) else float("nan"),
        "grade_group_kappa": quadratic_kappa(truth, predicted, GRADE_GROUPS) if len(truth) else float("nan"),
        "grade_group_accuracy_isup": grade_group_agreement(labelled_predictions, truth, classes)
        if len(truth) else float("nan"),
    })
    return rows


def _references(stores: list[str | Path]) -> dict[str, tuple[list[str], np.ndarray]]:
    references = {}
    for store_path in stores:
        store = open_store(store_path)
        attributes = read_attributes(store)
        references[attributes.slide_id] = (attributes.classes, store[LABELS][:])
    return references


def _with_predictions(path: str | Path, references: dict) -> Slides:
    root = zarr.open_group(str(path), mode="r")
    slides = {}
    for slide_id, (classes, labels) in references.items():
        probabilities = root[slide_id][PROBABILITIES][:]
        slides[slide_id] = (classes, labels, probabilities.argmax(1) if len(probabilities) else np.zeros(0, int))
    return slides


def slide_grades(predictions: dict[str, str | Path], stores: list[str | Path],
                 val_predictions: dict[str, str | Path] | None = None, val_stores: list[str | Path] = ()) -> pd.DataFrame:
    """One row per (model, test slide), then one summary row per model (:func:`model_grades`).

    ``val_predictions``: each model's predictions on the validation stores ``val_stores``, from
    which its ``min_pattern_fraction`` is chosen; ValueError naming the models if some lack them.
    """
    if val_predictions is not None and set(val_predictions) != set(predictions):
        raise ValueError(f"validation predictions for {sorted(val_predictions)} but test predictions for "
                         f"{sorted(predictions)}: give both for the same models")
    references, val_references = _references(stores), _references(list(val_stores))
    rows = []
    for model, path in predictions.items():
        validation = _with_predictions(val_predictions[model], val_references) if val_predictions else None
        rows += model_grades(model, _with_predictions(path, references), validation)
    frame = pd.DataFrame(rows)
    return pd.concat([frame[frame.slide_id != "ALL"], frame[frame.slide_id == "ALL"]], ignore_index=True)


def slides_markdown(frame: pd.DataFrame) -> str:
    """Per model: the validation-chosen minimum pattern area and grade-group agreement with the annotation."""
    summary = frame[frame.slide_id == "ALL"]
    table = pd.DataFrame({
        "model": summary.model,
        "min_pattern_fraction": summary.min_pattern_fraction.map(lambda v: f"{v:.0%}"),
        "validation_agreement": summary.validation_grade_group_accuracy.map(_fraction),
        "test_agreement": summary.grade_group_accuracy.map(_fraction),
        "test_agreement_isup": summary.grade_group_accuracy_isup.map(_fraction),
        "test_kappa": summary.grade_group_kappa.map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
    })
    slides = len(frame[(frame.slide_id != "ALL")].slide_id.unique())
    lines = ["# Slide grades", "",
             f"ISUP grade group of each of {slides} test slides against the annotation's. `min_pattern_fraction`: the "
             "share of the tumour a secondary or tertiary pattern must cover to count, chosen per model on the "
             "validation slides (highest grade-group agreement, ties to the smallest); `test_agreement_isup`: the "
             "agreement under the ISUP rules as written (any amount of a higher grade counts).", "",
             table.to_markdown(index=False, colalign=("left", *["right"] * 5), disable_numparse=True)]
    return "\n".join(lines) + "\n"


def _fraction(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.0%}"


def write_slide_grades(predictions: dict[str, str | Path], stores: list[str | Path], out_csv,
                       val_predictions: dict[str, str | Path] | None = None, val_stores: list[str | Path] = (),
                       out_md=None) -> pd.DataFrame:
    frame = slide_grades(predictions, stores, val_predictions, val_stores)
    write_text(out_csv, frame.to_csv(index=False))
    if out_md is not None:
        write_text(out_md, slides_markdown(frame))
    return frame
