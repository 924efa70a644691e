import dataclasses

import numpy as np

from wsidistill.demo import DEFAULT_PARAMS
from wsidistill.demo.figure import PATCH, magnification_series, typical_patch
from wsidistill.demo.render import render_slide


def test_magnification_series_is_area_downsampling_of_one_field_of_view():
    patch = np.random.default_rng(0).integers(0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
    series = magnification_series(patch)
    assert [s.shape for s in series] == [patch.shape] * 4
    assert np.array_equal(series[0], patch)
    at5x = series[3].astype(float)
    assert np.array_equal(at5x[::8, ::8].repeat(8, 0).repeat(8, 1), at5x)  # 16 x 16 px shown as 8 x 8 blocks
    assert abs(at5x[:8, :8, 0].mean() - patch[:8, :8, 0].mean()) < 1  # block = mean of its 8 x 8 pixels


def test_typical_patch_lies_in_one_grade_and_its_own_architecture():
    params = dataclasses.replace(DEFAULT_PARAMS, architecture_overlap=0.0, fold_prob=0, pen_prob=0, blur_prob=0)
    rgb, labels, scene = render_slide(4, 1536, 1024, params)
    grades = {r.grade for r in scene.regions}
    found = 0
    for grade in grades:
        at = typical_patch(labels, scene, grade)
        if at is None:
            continue
        found += 1
        y, x = at
        window = labels[y : y + PATCH, x : x + PATCH]
        assert set(np.unique(window)) <= {1, grade + 2} and (window == grade + 2).any()
    assert found >= 1
