import numpy as np
import torch

from wsidistill.report.attention import map_correlation


def test_identical_maps_correlate_perfectly_after_alignment():
    teacher = torch.rand(3, 8, 8)
    student = torch.nn.functional.adaptive_avg_pool2d(teacher[:, None], (4, 4))[:, 0] * 5 + 2
    np.testing.assert_allclose(map_correlation(student, teacher), 1.0, atol=1e-5)


def test_correlation_matches_pearson_by_definition():
    rng = np.random.default_rng(0)
    student, teacher = rng.random((2, 4, 4)), rng.random((2, 4, 4))
    expected = [np.corrcoef(s.ravel(), t.ravel())[0, 1] for s, t in zip(student, teacher)]
    np.testing.assert_allclose(map_correlation(torch.tensor(student), torch.tensor(teacher)), expected, atol=1e-6)


def test_constant_maps_have_no_correlation():
    assert np.isnan(map_correlation(torch.ones(1, 4, 4), torch.rand(1, 4, 4))).all()
