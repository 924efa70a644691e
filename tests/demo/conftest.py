"""Small slides of every variant, written once per test session (the full-size cohort is too slow for tests)."""

import pytest

from wsidistill.demo import plan_cohort, write_slide

TEST_W, TEST_H = 1280, 1024


@pytest.fixture(scope="session")
def size():
    """Level-0 (width, height) of the session's test slides."""
    return TEST_W, TEST_H


@pytest.fixture(scope="session")
def cohort():
    return plan_cohort(6, seed=11)


@pytest.fixture(scope="session")
def written(tmp_path_factory, cohort):
    """variant -> paths returned by write_slide, for the first slide of the cohort."""
    out = {}
    for variant in ("svs40", "svs20", "nometa", "tiff"):
        folder = tmp_path_factory.mktemp(variant)
        out[variant] = write_slide(cohort[0], folder, width=TEST_W, height=TEST_H, variant=variant, label_mask=True)
    return out
