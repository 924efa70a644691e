import numpy as np
import pandas as pd
import torch

from wsidistill.report.attention import _spike_markdown, map_correlation, spike_share


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


def test_spike_share_of_maps_with_a_known_fixed_peak():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(10, 4, 4, generator=generator) * 0.5
    maps[:7, 1, 2] = 1.0  # 7 of 10 peak in cell (1, 2)
    maps[7:, 3, 0] = 1.0  # the others elsewhere
    maps[9] = 0.0  # a flat map has no peak
    assert spike_share(maps) == (0.7, (1, 2))
    assert spike_share(torch.zeros(3, 2, 2)) == (0.0, None)
    assert np.isnan(spike_share(torch.zeros(0, 2, 2))[0])


def test_scattered_peaks_give_a_share_near_chance():
    maps = torch.eye(16).view(16, 4, 4).repeat(4, 1, 1)  # each cell peaks 4 times out of 64
    share, _ = spike_share(maps)
    assert share == 1 / 16


def test_spike_table_lists_each_model_with_its_share_and_chance():
    frame = pd.DataFrame({"model": ["teacher", "atplus_5x"], "magnification": [40.0, 5.0], "grid": ["4x4", "2x2"],
                          "patches": [10, 10], "spike_share": [0.3, 1.0], "modal_cell": ["(1, 1)", "(0, 1)"],
                          "teacher_spike_share": [0.3, 0.5]})
    table = _spike_markdown(frame)
    assert "| atplus_5x " in table and "100.0%" in table and "25.0%" in table and "6.2%" in table and "50.0%" in table
