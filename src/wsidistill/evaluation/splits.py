"""What a split lacks: classes with no labelled patch and test slides with no label (issue 17, kinds 7 and 8).

A class absent from the training split is learnt by no model (every model then scores recall 0 on it); a
class absent from the test split has no recall, and kappa and balanced accuracy leave it out. Neither stops a
run; both are warned about in the training and evaluation logs and in ``comparison.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: How a slide without any labelled patch is listed wherever the tables list slides.
UNLABELLED = "unlabelled"


def class_counts(labels: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Labelled patches per class name; ``labels`` (N,) class indices, -1 (unlabelled) not counted."""
    labels = np.asarray(labels).ravel()
    counts = np.bincount(labels[labels >= 0].astype(np.int64), minlength=len(classes))
    return {name: int(count) for name, count in zip(classes, counts)}


def absent_classes(classes: Sequence[str], counts: Mapping[str, int]) -> list[str]:
    """The names of ``classes`` with no patch in ``counts`` (a mapping by class name), in class order."""
    return [name for name in classes if not counts.get(name, 0)]


def absent_class_warning(name: str, split: str) -> str:
    """One line naming the class, the split, what it does to the metrics and the choices."""
    effect = ("no model learns it and every model scores recall 0 on it" if split == "train" else
              "its recall is undefined and kappa and balanced accuracy leave it out")
    return (f"class {name!r} has no labelled patch in the {split} split: {effect}; annotate it on {split} slides, "
            f"move slides that show it to the {split} split, or drop it from `classes`")


def split_warnings(absent: Mapping[str, Sequence[str]], unlabelled_slides: Sequence[str] = ()) -> list[str]:
    """The lines of :func:`absent_class_warning` for each split (``absent``: split -> class names), then one
    naming the test slides left out of the metrics for want of labels."""
    lines = [absent_class_warning(name, split) for split, names in absent.items() for name in names]
    if unlabelled_slides:
        lines.append(f"test slides without labelled patches, predicted but left out of the metrics: "
                     f"{', '.join(unlabelled_slides)} ({UNLABELLED})")
    return lines
