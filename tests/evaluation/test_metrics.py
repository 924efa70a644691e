import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score

from wsidistill.evaluation.metrics import (
    SlideBootstrap,
    balanced_accuracy,
    confusion_matrix,
    format_mean_std,
    macro_f1,
    mean_std,
    per_class_recall,
    quadratic_kappa,
    summarise,
)

K = 4  # NC, G3, G4, G5


def _random_case(seed, n, num_classes=K):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, n)
    # Mostly-correct predictions with ordinal (neighbouring-class) noise, like a real grader.
    noise = rng.choice([-2, -1, 0, 0, 0, 1, 2], size=n)
    y_pred = np.clip(y_true + noise, 0, num_classes - 1)
    return y_true, y_pred


EDGE_CASES = {
    "perfect": ([0, 1, 2, 3, 3, 2], [0, 1, 2, 3, 3, 2]),
    "all wrong, reversed": ([0, 1, 2, 3], [3, 2, 1, 0]),
    "constant prediction": ([0, 1, 2, 3, 1], [1, 1, 1, 1, 1]),
    "one true class": ([2, 2, 2, 2], [2, 1, 3, 2]),
    "middle class absent": ([0, 0, 1, 3, 3], [0, 1, 1, 3, 1]),
    "predicted class never true": ([0, 0, 1, 1], [0, 3, 1, 1]),
    "single sample": ([1], [2]),
}

CASES = [_random_case(seed, n) for seed, n in enumerate([5, 17, 50, 200, 1000])] + [
    (np.array(t), np.array(p)) for t, p in EDGE_CASES.values()
]


@pytest.mark.parametrize("y_true, y_pred", CASES)
def test_metrics_match_scikit_learn(y_true, y_pred):
    labels = list(range(K))
    with warnings.catch_warnings():
        # sklearn warns about classes predicted but absent from y_true, and NaN kappa.
        warnings.simplefilter("ignore")
        expected_bacc = balanced_accuracy_score(y_true, y_pred)
        # labels= keeps the ordinal distances of absent classes; without it sklearn
        # re-indexes the classes present and G3->G5 would become a distance-1 error.
        expected_kappa = cohen_kappa_score(y_true, y_pred, labels=labels, weights="quadratic")
        expected_f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert balanced_accuracy(y_true, y_pred, K) == pytest.approx(expected_bacc)
    assert macro_f1(y_true, y_pred, K) == pytest.approx(expected_f1)
    if np.isnan(expected_kappa):  # degenerate: see test_kappa_degenerate_case
        assert quadratic_kappa(y_true, y_pred, K) == 1.0
    else:
        assert quadratic_kappa(y_true, y_pred, K) == pytest.approx(expected_kappa)


def test_confusion_matrix_counts_truth_by_row():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


def test_quadratic_kappa_hand_computed_3x3():
    # O = [[1,1,0],[0,2,0],[1,0,1]], n = 6; row totals (2,2,2), column totals (2,3,1)
    # E = outer(row, col) / 6 = [[2/3,1,1/3]] * 3 rows; W = (i-j)^2 / 4
    # sum(W*O) = 1/4 + 1 = 5/4;  sum(W*E) = (1/4 + 1/3) + (1/6 + 1/12) + (2/3 + 1/4) = 7/4
    # kappa = 1 - (5/4) / (7/4) = 2/7
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    assert quadratic_kappa(y_true, y_pred, 3) == pytest.approx(2 / 7)


def test_quadratic_kappa_penalises_distant_errors_more():
    y_true = [0, 1, 2, 3] * 5
    near = [0, 1, 2, 2] * 5  # G5 called G4
    far = [0, 1, 2, 1] * 5  # G5 called G3
    assert quadratic_kappa(y_true, near, K) > quadratic_kappa(y_true, far, K)


def test_kappa_degenerate_case():
    # Truth and prediction both a single class: expected disagreement is 0 -> 1.0 by convention.
    assert quadratic_kappa([2, 2, 2], [2, 2, 2], K) == 1.0


def test_per_class_recall_nan_for_absent_classes():
    recall = per_class_recall([0, 0, 2, 2], [0, 1, 2, 2], K)
    np.testing.assert_allclose(recall, [0.5, np.nan, 1.0, np.nan])
    assert balanced_accuracy([0, 0, 2, 2], [0, 1, 2, 2], K) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 1], [0], "y_pred has 1"),
        ([], [], "empty"),
        ([0, 4], [0, 1], "outside"),
        ([0, -1], [0, 1], "outside"),
        ([0.0, 1.0], [0, 1], "integer"),
    ],
)
def test_invalid_labels_rejected(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(y_true), np.array(y_pred), K)


def test_summarise_is_strict_json():
    summary = summarise([0, 0, 2, 2], [0, 1, 2, 2], K)
    assert set(summary) == {
        "n",
        "balanced_accuracy",
        "quadratic_kappa",
        "macro_f1",
        "per_class_recall",
        "confusion_matrix",
    }
    assert summary["per_class_recall"] == [0.5, None, 1.0, None]
    assert summary["n"] == 4
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary


def _clustered_dataset(rng, n_slides=30, patches_per_slide=20):
    """Binary task whose slides differ in difficulty; population balanced accuracy is 0.8.

    Each slide's accuracy is drawn from U(0.6, 1.0) independently of the class, so
    every class has expected recall 0.8.
    """
    slide_accuracy = rng.uniform(0.6, 1.0, n_slides)
    groups = np.repeat(np.arange(n_slides), patches_per_slide)
    y_true = rng.integers(0, 2, groups.size)
    correct = rng.random(groups.size) < slide_accuracy[groups]
    y_pred = np.where(correct, y_true, 1 - y_true)
    return y_true, y_pred, groups


def _balanced_accuracy_from_counts(y_true, y_pred, num_classes):
    """balanced_accuracy by the same arithmetic (recall per present class from the confusion counts, then their
    mean) without scikit-learn's per-call input checks: the coverage study below calls it 40,000 times."""
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    support = counts.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(counts)[present] / support[present]))


def test_bootstrap_ci_covers_true_value_at_nominal_rate():
    rng = np.random.default_rng(123)
    n_datasets = 200
    covered = 0
    for i in range(n_datasets):
        y_true, y_pred, groups = _clustered_dataset(rng)
        bootstrap = SlideBootstrap(y_true, groups, _balanced_accuracy_from_counts, 2, n_boot=200, seed=i)
        low, high = bootstrap.interval(y_pred)
        if i == 0:  # the library metric gives the very same interval
            library = SlideBootstrap(y_true, groups, balanced_accuracy, 2, n_boot=200, seed=i).interval(y_pred)
            assert (low, high) == library
        covered += low <= 0.8 <= high
    assert 0.88 <= covered / n_datasets <= 0.99


def test_bootstrap_ci_brackets_estimate_and_is_reproducible():
    y_true, y_pred, groups = _clustered_dataset(np.random.default_rng(0))
    low, high = SlideBootstrap(y_true, groups, balanced_accuracy, 2, seed=7).interval(y_pred)
    assert low < balanced_accuracy(y_true, y_pred, 2) < high
    assert (low, high) == SlideBootstrap(y_true, groups, balanced_accuracy, 2, seed=7).interval(y_pred)
    narrow = SlideBootstrap(y_true, groups, balanced_accuracy, 2, alpha=0.5, seed=7).interval(y_pred)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_resamples_whole_slides():
    # A single slide: every replicate is that slide, so the interval collapses to the estimate.
    y_true = np.array([0, 1, 1, 0, 1])
    y_pred = np.array([0, 1, 0, 0, 0])
    low, high = SlideBootstrap(y_true, ["s1"] * 5, balanced_accuracy, 2, n_boot=50).interval(y_pred)
    assert low == high == balanced_accuracy(y_true, y_pred, 2)


def test_bootstrap_rejects_misaligned_groups():
    with pytest.raises(ValueError, match="groups"):
        SlideBootstrap([0, 1, 1], [0, 1], balanced_accuracy, 2).interval([0, 1, 0])


def test_paired_bootstrap_identical_predictions_not_significant():
    y_true, y_pred, groups = _clustered_dataset(np.random.default_rng(1))
    result = SlideBootstrap(y_true, groups, quadratic_kappa, 2, n_boot=200).compare(y_pred, y_pred.copy())
    assert result == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0, "significant": False}


def test_paired_bootstrap_detects_clearly_better_model():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(20), 30)
    y_true = rng.integers(0, K, groups.size)
    good = np.where(rng.random(groups.size) < 0.9, y_true, rng.integers(0, K, groups.size))
    poor = np.where(rng.random(groups.size) < 0.5, y_true, rng.integers(0, K, groups.size))
    result = SlideBootstrap(y_true, groups, balanced_accuracy, K, n_boot=500).compare(good, poor)
    assert result["delta"] == pytest.approx(
        balanced_accuracy(y_true, good, K) - balanced_accuracy(y_true, poor, K)
    )
    assert result["significant"]
    assert 0 < result["low"] <= result["delta"] <= result["high"]
    assert result["p_value"] == pytest.approx(2 / 501)  # no replicate at or below 0
    swapped = SlideBootstrap(y_true, groups, balanced_accuracy, K, n_boot=500).compare(poor, good)
    assert swapped["delta"] == pytest.approx(-result["delta"])
    assert swapped["significant"] and swapped["high"] < 0
    # non-inferiority: the null "poor is worse than good by the margin or more" holds for a margin of 0 (every
    # replicate is below 0) and is rejected at the floor p for a margin no replicate reaches
    assert "p_noninferior" not in swapped
    bootstrap = SlideBootstrap(y_true, groups, balanced_accuracy, K, n_boot=500)
    assert bootstrap.compare(poor, good, margin=0.0)["p_noninferior"] == 1.0
    assert bootstrap.compare(poor, good, margin=1.0)["p_noninferior"] == pytest.approx(1 / 501)
    inside = -swapped["delta"]  # a margin at the observed loss: about half the replicates fall at or below it
    assert 0.2 < bootstrap.compare(poor, good, margin=inside)["p_noninferior"] < 0.8


def test_paired_bootstrap_small_difference_not_significant():
    # Two models that differ on one patch out of 600 cannot be told apart.
    y_true, y_pred, groups = _clustered_dataset(np.random.default_rng(3))
    other = y_pred.copy()
    other[0] = 1 - other[0]
    result = SlideBootstrap(y_true, groups, balanced_accuracy, 2, n_boot=300).compare(y_pred, other)
    assert not result["significant"]
    assert result["low"] <= 0 <= result["high"]
    assert result["p_value"] > 0.05


def test_mean_std_uses_sample_std():
    mean, std = mean_std([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    assert std == pytest.approx(0.02)  # ddof=1; population std would be 0.0163
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_format_mean_std():
    assert format_mean_std(0.8123, 0.0141) == "0.812 ± 0.014"
    assert format_mean_std(81.23, 1.4, digits=1) == "81.2 ± 1.4"
