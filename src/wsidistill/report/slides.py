"""Slide-level grading: Gleason score and ISUP grade group per test slide and model.

The predicted grade comes from the model's class map over every tissue patch;
the reference grade is derived the same way from the annotation's patch
labels, so the two differ only by the model's errors.  A test slide without any
labelled patch (no annotations) has no reference grade: its row is kept, with
the predicted grade, ``reference`` "unlabelled" and empty true fields, and it is
left out of each model's summary row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from ..evaluation.grading import grade_from_patch_labels
from ..evaluation.metrics import quadratic_kappa
from ..evaluation.splits import UNLABELLED
from ..io import write_text
from ..patches.store import LABELS, PROBABILITIES, open_store, read_attributes

GRADE_GROUPS = 6  # 0 (benign) .. 5


def _grade_fields(prefix: str, grade) -> dict:
    return {f"{prefix}_primary": grade.primary, f"{prefix}_secondary": grade.secondary,
            f"{prefix}_score": grade.score, f"{prefix}_grade_group": grade.grade_group}


def _reference_fields(labels: np.ndarray, classes: list[str]) -> dict:
    """The reference grade from the patch labels, or ``reference`` "unlabelled" and no grade without any."""
    if not (labels >= 0).any():
        return {"reference": UNLABELLED, **{f"true_{k}": None for k in ("primary", "secondary", "score", "grade_group")}}
    return {"reference": "patch labels", **_grade_fields("true", grade_from_patch_labels(labels, classes))}


def slide_grades(predictions: dict[str, str | Path], stores: list[str | Path]) -> pd.DataFrame:
    """One row per (model, slide), then one summary row per model over the labelled slides.

    Columns: ``model``, ``slide_id``, ``reference`` ("patch labels", or "unlabelled" for a slide without
    labels), ``true_*`` and ``predicted_*`` (primary and secondary pattern, Gleason score, grade group); the
    summary rows (``slide_id`` "ALL") add ``grade_group_accuracy`` and ``grade_group_kappa`` over the
    labelled slides (empty when there are none) and their ``reference`` counts the slides left out.
    """
    references = {}
    for store_path in stores:
        store = open_store(store_path)
        attributes = read_attributes(store)
        references[attributes.slide_id] = (attributes.classes, store[LABELS][:])
    rows = []
    for model, path in predictions.items():
        root = zarr.open_group(str(path), mode="r")
        for slide_id, (classes, labels) in references.items():
            probabilities = root[slide_id][PROBABILITIES][:]
            predicted = probabilities.argmax(1) if len(probabilities) else np.zeros(0, int)
            rows.append({"model": model, "slide_id": slide_id, **_reference_fields(labels, classes),
                         **_grade_fields("predicted", grade_from_patch_labels(predicted, classes))})
    frame = pd.DataFrame(rows)
    summaries = []
    for model, group in frame.groupby("model", sort=False):
        labelled = group[group.reference != UNLABELLED]
        truth, predicted = labelled.true_grade_group.to_numpy(int), labelled.predicted_grade_group.to_numpy(int)
        left_out = len(group) - len(labelled)
        summaries.append({"model": model, "slide_id": "ALL",
                          "reference": f"{len(labelled)} labelled slides" + (f", {left_out} {UNLABELLED} left out"
                                                                            if left_out else ""),
                          "grade_group_accuracy": float((truth == predicted).mean()) if len(truth) else None,
                          "grade_group_kappa": quadratic_kappa(truth, predicted, GRADE_GROUPS) if len(truth) else None})
    return pd.concat([frame, pd.DataFrame(summaries)], ignore_index=True)


def write_slide_grades(predictions: dict[str, str | Path], stores: list[str | Path], out_csv) -> pd.DataFrame:
    frame = slide_grades(predictions, stores)
    write_text(out_csv, frame.to_csv(index=False))
    return frame
