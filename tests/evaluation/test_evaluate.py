import numpy as np
import pandas as pd
from PIL import Image

from wsidistill.evaluation.evaluate import confidence_intervals, write_confusion_matrix
from wsidistill.evaluation.metrics import balanced_accuracy, confusion_matrix, quadratic_kappa

CLASSES = ["NC", "G3", "G4", "G5"]


def test_confusion_matrix_is_written_as_counts_with_true_classes_as_rows(tmp_path):
    truth = np.array([0, 0, 1, 2, 3, 3, 3])
    predicted = np.array([0, 1, 1, 2, 3, 2, 2])
    matrix = confusion_matrix(truth, predicted, 4)
    write_confusion_matrix(matrix.tolist(), CLASSES, "atplus_5x, seed 0", tmp_path / "c.csv", tmp_path / "c.png")
    frame = pd.read_csv(tmp_path / "c.csv", index_col="true")
    assert list(frame.index) == list(frame.columns) == CLASSES
    assert frame.loc["G5", "G4"] == 2 and frame.loc["NC", "G3"] == 1 and frame.to_numpy().sum() == len(truth)
    assert Image.open(tmp_path / "c.png").size[0] > 200


def test_confidence_intervals_resample_whole_slides():
    truth = np.array([0, 1, 2, 3] * 6)
    slides = np.repeat(["a", "b", "c"], 8)
    perfect = confidence_intervals(truth, truth, slides, 4, n_boot=50)
    assert perfect == {"quadratic_kappa": [1.0, 1.0], "balanced_accuracy": [1.0, 1.0]}

    predicted = truth.copy()
    predicted[:8] = (predicted[:8] + 1) % 4  # every error on slide a
    intervals = confidence_intervals(truth, predicted, slides, 4, n_boot=400)
    for name, metric in (("quadratic_kappa", quadratic_kappa), ("balanced_accuracy", balanced_accuracy)):
        low, high = intervals[name]
        assert low < metric(truth, predicted, 4) < high
        assert high == 1.0  # a resample without slide a is perfect
    assert confidence_intervals(truth[:0], truth[:0], slides[:0], 4) == {"quadratic_kappa": None,
                                                                        "balanced_accuracy": None}
