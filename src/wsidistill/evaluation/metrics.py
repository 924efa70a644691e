"""Classification metrics and slide-level bootstrap statistics for comparison tables.

Labels are ordinal class indices ``0 .. num_classes - 1`` (for the Gleason task:
NC, G3, G4, G5). Kappa, balanced accuracy, macro-F1 and the confusion matrix are
scikit-learn's, after one shared check of the labels (empty sets and labels
outside the classes raise ValueError); the slide-level bootstraps are here.

Patches from one slide are correlated, so confidence intervals and model
comparisons resample *slides* (groups), not patches: a patch-level bootstrap
would treat thousands of near-duplicate patches as independent evidence and give
intervals that are far too narrow.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as sklearn_metrics

Metric = Callable[[np.ndarray, np.ndarray, int], float]


def _labels(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return both label vectors as 1-d integer arrays."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("metrics are undefined on an empty set of labels")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    return y_true, y_pred


@contextmanager
def _quiet():
    """scikit-learn's warnings about the cases documented here (absent classes, a single label, 0/0), silenced:
    a bootstrap meets them hundreds of times."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of samples with true class ``i`` predicted as class ``j`` (scikit-learn's).

    Shape is always ``(num_classes, num_classes)``, so classes absent from a test
    split still have a row and column and matrices from different runs align.
    """
    y_true, y_pred = _labels(y_true, y_pred, num_classes)
    with _quiet():
        return sklearn_metrics.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def per_class_recall(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Recall (sensitivity) ``C[k, k] / sum_j C[k, j]`` for every class ``k``.

    A class with no true samples has no recall; it is NaN rather than 0 so that it
    cannot silently drag down an average.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    recall = np.full(num_classes, np.nan)
    present = support > 0
    recall[present] = np.diag(cm)[present] / support[present]
    return recall


def balanced_accuracy(y_true, y_pred, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y_true``: scikit-learn's ``balanced_accuracy_score``.

    Brodersen et al., 2010: robust to the class imbalance between benign and
    high-grade tissue.  A class predicted but never true has no recall and is
    left out (scikit-learn's warning about it is silenced).
    """
    y_true, y_pred = _labels(y_true, y_pred, num_classes)
    with _quiet():
        return float(sklearn_metrics.balanced_accuracy_score(y_true, y_pred))


def quadratic_kappa(y_true, y_pred, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights, the standard agreement score for Gleason grading.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with observed confusion matrix ``O``,
    expected matrix under independence ``E = outer(row totals, column totals) / n``
    and weights ``W[i, j] = (i - j)**2`` (Cohen, 1968), so a G3-vs-G5 error costs
    four times a G3-vs-G4 error: scikit-learn's ``cohen_kappa_score`` with
    ``weights="quadratic"`` and ``labels`` every class index ``0 .. num_classes - 1``,
    so distances hold even when a class is absent from the data.

    Degenerate case: the expected disagreement ``sum(W * E)`` is 0 only when truth
    and prediction are the same single class, i.e. agreement is perfect; we return
    1.0 there, where the formula (and scikit-learn) give NaN.
    """
    y_true, y_pred = _labels(y_true, y_pred, num_classes)
    with _quiet():
        kappa = float(sklearn_metrics.cohen_kappa_score(y_true, y_pred, labels=np.arange(num_classes),
                                                        weights="quadratic"))
    return 1.0 if np.isnan(kappa) else kappa


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred``: scikit-learn's macro F1.

    Per class ``F1 = 2 TP / (2 TP + FP + FN)``. Averaging over the union of true
    and predicted classes (``f1_score(average="macro")`` without ``labels``): a
    class that is predicted but never true scores 0 and so penalises the model,
    and a class that is neither true nor predicted is left out because its F1 is
    undefined (``zero_division=0`` for the 0/0 precision or recall of the others).
    """
    y_true, y_pred = _labels(y_true, y_pred, num_classes)
    with _quiet():
        return float(sklearn_metrics.f1_score(y_true, y_pred, average="macro", zero_division=0))


def summarise(y_true, y_pred, num_classes: int) -> dict:
    """All metrics of one evaluation as a JSON-serialisable dict.

    Keys: ``n``, ``balanced_accuracy``, ``quadratic_kappa``, ``macro_f1``,
    ``per_class_recall`` (list; ``None`` for classes absent from ``y_true``, because
    strict JSON has no NaN) and ``confusion_matrix`` (nested list, rows = truth).
    """
    recall = per_class_recall(y_true, y_pred, num_classes)
    return {
        "n": int(np.asarray(y_true).size),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, num_classes),
        "quadratic_kappa": quadratic_kappa(y_true, y_pred, num_classes),
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "confusion_matrix": confusion_matrix(y_true, y_pred, num_classes).tolist(),
    }


def _slide_resamples(groups, n_samples: int, n_boot: int, seed: int):
    """Yield patch indices of ``n_boot`` resamples of whole slides drawn with replacement."""
    groups = np.asarray(groups).ravel()
    if groups.size != n_samples:
        raise ValueError(f"groups has {groups.size} entries but there are {n_samples} labels")
    _, slide_of_patch = np.unique(groups, return_inverse=True)
    order = np.argsort(slide_of_patch, kind="stable")
    patches_by_slide = np.split(order, np.cumsum(np.bincount(slide_of_patch))[:-1])
    n_slides = len(patches_by_slide)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        drawn = rng.integers(0, n_slides, size=n_slides)
        yield np.concatenate([patches_by_slide[s] for s in drawn])


@dataclass(frozen=True, eq=False)
class SlideBootstrap:
    """Slide-level (cluster) percentile bootstrap of ``metric`` on one test set.

    ``y_true`` (N,) class indices, ``groups`` (N,) the slide id of each patch, ``metric(y_true, y_pred,
    num_classes)`` (e.g. :func:`quadratic_kappa`). Each of ``n_boot`` replicates draws as many slides as
    there are in ``groups``, with replacement, and pools their patches; ``seed`` fixes the draws, so
    every model scored by one ``SlideBootstrap`` sees the same resampled slides. Intervals are the
    ``alpha/2`` and ``1 - alpha/2`` percentiles of the replicates (Efron & Tibshirani, 1993, ch. 13;
    cluster bootstrap: Field & Welsh, 2007). ValueError when ``groups`` and the labels differ in length.
    """

    y_true: Sequence[int] | np.ndarray
    groups: Sequence | np.ndarray
    metric: Metric
    num_classes: int
    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0

    def _replicates(self, statistic: Callable[[np.ndarray], float], n_samples: int) -> np.ndarray:
        """``statistic(patch indices)`` on each replicate, as an ``(n_boot,)`` array."""
        return np.array([statistic(i) for i in _slide_resamples(self.groups, n_samples, self.n_boot, self.seed)])

    def _percentiles(self, replicates: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(replicates, [100 * self.alpha / 2, 100 * (1 - self.alpha / 2)])
        return float(low), float(high)

    def interval(self, y_pred) -> tuple[float, float]:
        """Percentile bootstrap ``(1 - alpha)`` confidence interval ``(low, high)`` of ``metric`` over slides."""
        y_true, y_pred = _labels(self.y_true, y_pred, self.num_classes)
        return self._percentiles(
            self._replicates(lambda i: self.metric(y_true[i], y_pred[i], self.num_classes), y_true.size)
        )

    def compare(self, pred_a, pred_b, margin: float | None = None) -> dict:
        """Compare two models on the same test slides: is ``metric(a) - metric(b)`` non-zero?

        Both models are scored on the *same* resampled slides in each replicate, so the
        slide-to-slide difficulty shared by both cancels out of the difference.
        Returns ``delta`` (on the full test set), the percentile ``(1 - alpha)`` interval
        ``low``/``high`` of the bootstrap differences, a two-sided ``p_value`` and
        ``significant`` (the interval excludes 0).

        ``p_value = min(1, 2 * min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (n_boot + 1))``:
        twice the smaller tail of the bootstrap distribution beyond 0, with the +1
        correction so that a finite number of replicates never reports ``p = 0``
        (Davison & Hinkley, 1997, sec. 4.4).

        With ``margin`` (a non-inferiority test: is ``a`` at most ``margin`` worse than ``b``?), also
        ``p_noninferior = (#{d* <= -margin} + 1) / (n_boot + 1)``, the one-sided p-value of the null
        ``metric(a) - metric(b) <= -margin``.
        """
        metric, num_classes = self.metric, self.num_classes
        y_true, pred_a = _labels(self.y_true, pred_a, num_classes)
        _, pred_b = _labels(y_true, pred_b, num_classes)
        delta = metric(y_true, pred_a, num_classes) - metric(y_true, pred_b, num_classes)
        deltas = self._replicates(
            lambda i: metric(y_true[i], pred_a[i], num_classes) - metric(y_true[i], pred_b[i], num_classes),
            y_true.size,
        )
        low, high = self._percentiles(deltas)
        smaller_tail = min(np.sum(deltas <= 0), np.sum(deltas >= 0)) + 1
        result = {
            "delta": float(delta),
            "low": low,
            "high": high,
            "p_value": float(min(1.0, 2 * smaller_tail / (self.n_boot + 1))),
            "significant": bool(low > 0 or high < 0),
        }
        if margin is not None:
            result["p_noninferior"] = float((np.sum(deltas <= -margin) + 1) / (self.n_boot + 1))
        return result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) over repeated runs (e.g. seeds or folds).

    A single run has no spread to estimate; its std is reported as 0.0 rather than
    NaN so that tables still render.
    """
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """Table cell such as ``"0.812 ± 0.014"``."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
