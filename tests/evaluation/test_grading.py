import numpy as np
import pytest

from wsidistill.evaluation.grading import (
    SlideGrade,
    choose_min_pattern_fraction,
    gleason_score,
    grade_from_patch_labels,
    grade_group,
    grade_slide,
)

# Rules: ISUP 2014 consensus for needle biopsies (Epstein et al., Am J Surg Pathol
# 2016;40:244-252), adopted by WHO 2016. Areas are (NC, G3, G4, G5); the percentages
# in the comments are shares of the TUMOUR area, which is what the rules refer to.
# Columns: areas, expected (primary, secondary, score, grade group).
ISUP_BIOPSY_CASES = {
    # Single pattern: secondary = primary.
    "pure 3 -> 3+3": ((50, 50, 0, 0), (3, 3, 6, 1)),
    "pure 4 -> 4+4": ((50, 0, 50, 0), (4, 4, 8, 4)),
    "pure 5 -> 5+5": ((50, 0, 0, 50), (5, 5, 10, 5)),
    "pure 3, no benign tissue -> 3+3": ((0, 10, 0, 0), (3, 3, 6, 1)),
    # Two patterns: primary = most extensive, secondary = the other.
    "3 (70%) with 4 (30%) -> 3+4": ((40, 42, 18, 0), (3, 4, 7, 2)),
    "4 (70%) with 3 (30%) -> 4+3": ((40, 18, 42, 0), (4, 3, 7, 3)),
    "4 (60%) with 5 (40%) -> 4+5": ((0, 0, 60, 40), (4, 5, 9, 5)),
    "5 (60%) with 4 (40%) -> 5+4": ((0, 0, 40, 60), (5, 4, 9, 5)),
    "3 (60%) with 5 (40%) -> 3+5": ((0, 60, 0, 40), (3, 5, 8, 4)),
    "5 (60%) with 3 (40%) -> 5+3": ((0, 40, 0, 60), (5, 3, 8, 4)),
    # Higher-grade pattern counts in any amount.
    "3 (97%) with 4 (3%) -> 3+4": ((0, 97, 3, 0), (3, 4, 7, 2)),
    "4 (99%) with 5 (1%) -> 4+5": ((0, 0, 99, 1), (4, 5, 9, 5)),
    # Lower-grade pattern under 5% of tumour is ignored; at 5% it counts.
    "4 (97%) with 3 (3%) -> 4+4": ((50, 3, 97, 0), (4, 4, 8, 4)),
    "4 (95%) with 3 (5%) -> 4+3": ((50, 5, 95, 0), (4, 3, 7, 3)),
    "5 (98%) with 4 (2%) -> 5+5": ((0, 0, 2, 98), (5, 5, 10, 5)),
    # Three patterns in a biopsy: primary + highest grade.
    "3 (60%), 4 (38%), 5 (2%) -> 3+5": ((0, 60, 38, 2), (3, 5, 8, 4)),
    "4 (60%), 3 (38%), 5 (2%) -> 4+5": ((0, 38, 60, 2), (4, 5, 9, 5)),
    "4 (96%), 3 (3%), 5 (1%) -> 4+5": ((0, 3, 96, 1), (4, 5, 9, 5)),
    # Convention (module docstring): primary 5 -> highest remaining pattern that counts.
    "5 (54%), 3 (40%), 4 (6%) -> 5+4": ((0, 40, 6, 54), (5, 4, 9, 5)),
    "5 (54%), 3 (44%), 4 (2%) -> 5+3": ((0, 44, 2, 54), (5, 3, 8, 4)),
    # Convention: a tie for primary goes to the higher grade.
    "3 (50%) = 4 (50%) -> 4+3": ((0, 50, 50, 0), (4, 3, 7, 3)),
}


@pytest.mark.parametrize(
    "areas, expected", ISUP_BIOPSY_CASES.values(), ids=ISUP_BIOPSY_CASES.keys()
)
def test_isup_biopsy_rules(areas, expected):
    grade = grade_slide(areas)
    assert (grade.primary, grade.secondary, grade.score, grade.grade_group) == expected
    assert grade.tumour_fraction == pytest.approx(sum(areas[1:]) / sum(areas))


def test_benign_slide_has_no_score_and_grade_group_0():
    assert grade_slide((100, 0, 0, 0)) == SlideGrade(None, None, None, 0, 0.0)


def test_min_tumour_fraction_treats_sparse_tumour_as_noise():
    areas = (99, 0, 1, 0)  # 1% of tissue called G4
    assert grade_slide(areas).grade_group == 4
    benign = grade_slide(areas, min_tumour_fraction=0.02)
    assert benign == SlideGrade(None, None, None, 0, pytest.approx(0.01))
    assert grade_slide(areas, min_tumour_fraction=0.01).score == 8  # threshold is inclusive


@pytest.mark.parametrize(
    "primary, secondary, score, group",
    [
        (3, 3, 6, 1),
        (3, 4, 7, 2),
        (4, 3, 7, 3),
        (4, 4, 8, 4),
        (3, 5, 8, 4),
        (5, 3, 8, 4),
        (4, 5, 9, 5),
        (5, 4, 9, 5),
        (5, 5, 10, 5),
    ],
)
def test_score_and_grade_group_table(primary, secondary, score, group):
    # ISUP grade groups (Epstein et al. 2016, Table 1).
    assert gleason_score(primary, secondary) == score
    assert grade_group(primary, secondary) == group


@pytest.mark.parametrize("primary, secondary", [(2, 3), (3, 6), (0, 0)])
def test_invalid_patterns_rejected(primary, secondary):
    with pytest.raises(ValueError, match="patterns"):
        grade_group(primary, secondary)


def test_mapping_input_with_config_class_names():
    names = ("benign", "gleason3", "gleason4", "gleason5")
    grade = grade_slide({"benign": 10.0, "gleason3": 6.0, "gleason4": 4.0}, names)
    assert (grade.primary, grade.secondary, grade.grade_group) == (3, 4, 2)
    assert grade.tumour_fraction == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown"):
        grade_slide({"NC": 1.0, "G6": 1.0})


@pytest.mark.parametrize(
    "areas, message",
    [
        ((0, 0, 0, 0), "no tissue"),
        ((1, -1, 0, 0), "non-negative"),
        ((1, np.nan, 0, 0), "finite"),
        ((1, 2, 3), "3 areas"),
    ],
)
def test_invalid_areas_rejected(areas, message):
    with pytest.raises(ValueError, match=message):
        grade_slide(areas)


def test_grade_from_patch_labels_counts_patches_and_ignores_background():
    # 2-d patch map: -1 = background; tumour = 6 G3 + 2 G4 patches of 10 tissue patches.
    labels = np.array(
        [
            [-1, 0, 0, -1],
            [1, 1, 1, 2],
            [1, 1, 1, 2],
            [-1, -1, -1, -1],
        ]
    )
    grade = grade_from_patch_labels(labels)
    assert (grade.primary, grade.secondary, grade.score, grade.grade_group) == (3, 4, 7, 2)
    assert grade.tumour_fraction == pytest.approx(0.8)
    assert grade_from_patch_labels(labels, min_tumour_fraction=0.9).grade_group == 0


def test_grade_from_patch_labels_rejects_bad_labels():
    with pytest.raises(ValueError, match="-1 or in 0..3"):
        grade_from_patch_labels([0, 1, 4])
    with pytest.raises(ValueError, match="no tissue"):
        grade_from_patch_labels([-1, -1])


def labels(nc=0, g3=0, g4=0, g5=0):
    """A slide's patch classes: so many NC, G3, G4 and G5 patches."""
    return np.repeat([0, 1, 2, 3], [nc, g3, g4, g5])


def test_min_pattern_fraction_drops_stray_higher_grade_patches():
    stray = labels(nc=50, g3=97, g4=3)  # 3% pattern 4: counts under the ISUP rules as written
    assert grade_from_patch_labels(stray).grade_group == 2
    assert grade_from_patch_labels(stray, min_pattern_fraction=0.05).grade_group == 1
    assert grade_from_patch_labels(labels(g3=90, g4=10), min_pattern_fraction=0.05).grade_group == 2  # 10% stays
    assert grade_from_patch_labels(labels(g4=97, g3=3), min_pattern_fraction=0.01).grade_group == 4  # lower: 5% still


def test_choice_maximises_validation_agreement_ties_to_smallest():
    # Slide 1 (annotated 3+3) carries 4% stray pattern 4; slide 2 (annotated 3+4) has 12% pattern 4.
    predicted, truth = [labels(g3=96, g4=4), labels(g3=88, g4=12)], [1, 2]
    chosen, agreement = choose_min_pattern_fraction(predicted, truth, grid=(0.0, 0.02, 0.05, 0.1, 0.2))
    assert agreement == {0.0: 0.5, 0.02: 0.5, 0.05: 1.0, 0.1: 1.0, 0.2: 0.5}
    assert chosen == 0.05  # 0.05 and 0.1 tie: the smaller
    assert choose_min_pattern_fraction([labels(g3=10)], [1])[0] == 0.0  # every value agrees: the rules as written
    assert choose_min_pattern_fraction([], [])[0] == 0.0
