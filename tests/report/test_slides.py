"""Slide grades: the grading threshold is chosen on the validation slides, never the test slides."""

import numpy as np
import pandas as pd

from wsidistill.report.slides import model_grades, slides_markdown

CLASSES = ["NC", "G3", "G4", "G5"]


def slide(truth_g4: int, predicted_g4: int):
    """(classes, annotation labels, predicted classes): 100 tumour patches, so many of pattern 4, rest pattern 3."""
    return (CLASSES, np.repeat([1, 2], [100 - truth_g4, truth_g4]), np.repeat([1, 2], [100 - predicted_g4, predicted_g4]))


def summary(rows):
    return next(row for row in rows if row["slide_id"] == "ALL")


def test_the_threshold_comes_from_validation_slides_only():
    validation = {"v1": slide(0, 3), "v2": slide(30, 30)}  # 3% stray pattern 4 on a 3+3 slide: any cut above 3% fits
    test = {"t1": slide(0, 12), "t2": slide(30, 30)}  # 12% stray: only a cut above 12% would fit the test slides
    rows = model_grades("m", test, validation, grid=(0.0, 0.05, 0.2))
    assert {row["min_pattern_fraction"] for row in rows} == {0.05}  # test-tuned would be 0.2
    assert summary(rows)["validation_grade_group_accuracy"] == 1.0
    assert summary(rows)["grade_group_accuracy"] == 0.5  # t1 stays over-called: the test split chose nothing
    # Changing the test slides never changes the choice; changing the validation slides does.
    assert summary(model_grades("m", {"t1": slide(0, 40)}, validation, grid=(0.0, 0.05, 0.2)))[
        "min_pattern_fraction"] == 0.05
    assert summary(model_grades("m", test, {"v1": slide(0, 12)}, grid=(0.0, 0.05, 0.2)))["min_pattern_fraction"] == 0.2


def test_without_validation_the_isup_rules_apply_and_the_table_reports_each_model():
    rows = model_grades("ce_5x", {"t1": slide(0, 12), "t2": slide(30, 30)}, None)
    assert summary(rows)["min_pattern_fraction"] == 0.0
    assert summary(rows)["grade_group_accuracy"] == summary(rows)["grade_group_accuracy_isup"] == 0.5
    table = slides_markdown(pd.DataFrame(rows + model_grades("atplus_5x", {"t1": slide(0, 0)}, {"v": slide(0, 3)})))
    assert "| ce_5x " in table and "| atplus_5x " in table and "2 test slides" in table
