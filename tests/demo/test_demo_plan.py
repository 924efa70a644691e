import pytest

from wsidistill.demo import plan_cohort
from wsidistill.demo.scene import slide_grades


@pytest.mark.parametrize("n", [3, 6, 10, 25])
def test_splits_are_by_patient_and_cover_all_grades(n):
    slides = plan_cohort(n, seed=3)
    assert [s.slide_id for s in slides] == [f"demo{i:03d}" for i in range(n)]
    split_of_patient = {}
    for s in slides:
        assert split_of_patient.setdefault(s.patient_id, s.split) == s.split  # never two splits per patient
    splits = set(split_of_patient.values())
    assert splits == {"train", "val", "test"}
    for split in splits:
        grades = set().union(*(slide_grades(s.seed) for s in slides if s.split == split))
        assert grades == {0, 1, 2, 3}, split
    assert len({s.seed for s in slides}) == n


def test_split_fractions_follow_60_20_20_by_patient():
    slides = plan_cohort(60, seed=5)
    patients = {s.patient_id: s.split for s in slides}
    share = {k: sum(v == k for v in patients.values()) / len(patients) for k in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.6, abs=0.06)
    assert share["val"] == pytest.approx(0.2, abs=0.04)
    assert share["test"] == pytest.approx(0.2, abs=0.04)
    assert any(sum(s.patient_id == p for s in slides) > 1 for p in patients)  # some patients have several slides


def test_plan_is_pure_and_seed_dependent():
    assert plan_cohort(10, 1) == plan_cohort(10, 1)
    assert plan_cohort(10, 1) != plan_cohort(10, 2)


def test_slides_have_two_to_four_grades_and_all_grades_are_frequent():
    grades = [slide_grades(s) for s in range(400)]
    assert all(2 <= len(g) <= 4 for g in grades)
    for g in range(4):
        assert sum(g in gs for gs in grades) > 0.35 * len(grades)


def test_too_small_cohort_is_rejected():
    with pytest.raises(ValueError):
        plan_cohort(2, 0)


def test_val_and_test_patients_can_be_fixed():
    """The benchmark cohort: 10 test patients, 3 validation patients, the rest train; slides still by patient."""
    slides = plan_cohort(24, seed=19, val_patients=3, test_patients=10)
    patients = {s.patient_id: s.split for s in slides}
    assert [sum(v == k for v in patients.values()) for k in ("val", "test")] == [3, 10]
    assert sum(s.split == "test" for s in slides) >= 10
    assert plan_cohort(12, 0, val_patients=None, test_patients=None) == plan_cohort(12, 0)
    with pytest.raises(ValueError, match="demo.test_patients"):
        plan_cohort(6, seed=1, test_patients=5)
