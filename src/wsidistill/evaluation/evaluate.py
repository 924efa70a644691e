"""Whole-slide inference and test metrics for one trained model.

Every tissue patch of every test slide is classified, labelled or not, in
streamed batches, so the heatmaps cover the whole slide; metrics use the
labelled patches only.  A test slide without any labelled patch (no
annotations) is predicted like the others and left out of the metrics; the
metrics JSON lists it under ``unlabelled_slides``.  Per-slide predictions are
kept so statistics can be bootstrapped over slides.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from tqdm import tqdm

from ..device import InferenceSettings
from ..io import atomic_path, save_figure, write_json, write_text
from ..models.checkpoint import load_model
from ..patches import store as patch_store
from ..patches.store import open_store
from .inference import infer_store
from .metrics import SlideBootstrap, balanced_accuracy, quadratic_kappa, summarise
from .splits import absent_classes, class_counts, split_warnings


def confidence_intervals(truth: np.ndarray, predicted: np.ndarray, slides: np.ndarray, num_classes: int,
                         n_boot: int = 1000) -> dict:
    """95% bootstrap intervals over test slides (whole slides resampled) of kappa and balanced accuracy."""
    if truth.size == 0:
        return {"quadratic_kappa": None, "balanced_accuracy": None}
    return {name: list(SlideBootstrap(truth, slides, metric, num_classes, n_boot=n_boot, seed=0).interval(predicted))
            for name, metric in (("quadratic_kappa", quadratic_kappa), ("balanced_accuracy", balanced_accuracy))}


def _no_labels_summary(num_classes: int) -> dict:
    """:func:`summarise`'s keys when no test patch is labelled: no metric (``None``), an all-zero confusion matrix."""
    return {"n": 0, "balanced_accuracy": None, "quadratic_kappa": None, "macro_f1": None,
            "per_class_recall": [None] * num_classes, "confusion_matrix": np.zeros((num_classes,) * 2, int).tolist()}


def write_confusion_matrix(matrix, classes: list[str], title: str, out_csv: str | Path | None = None,
                           out_png: str | Path | None = None) -> None:
    """Counts as CSV (rows: true class, columns: predicted) and/or a PNG coloured by row share (recall)."""
    counts = np.asarray(matrix, dtype=int)
    if out_csv is not None:
        write_text(out_csv, pd.DataFrame(counts, index=pd.Index(classes, name="true"), columns=classes).to_csv())
    if out_png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(3.8, 3.4))
    axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        axis.text(column, row, f"{count}\n{share[row, column]:.0%}", ha="center", va="center", fontsize=8,
                  color="white" if share[row, column] > 0.6 else "black")
    ticks = range(len(classes))
    axis.set_xticks(ticks, classes)
    axis.set_yticks(ticks, classes)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    save_figure(figure, out_png, dpi=120)


def evaluate_model(
    model_path: str | Path,
    test_stores: list[str],
    out_predictions: str | Path,
    out_metrics: str | Path,
    out_confusion_csv: str | Path | None = None,
    out_confusion_png: str | Path | None = None,
    settings: InferenceSettings = InferenceSettings(),
) -> dict:
    """Write per-slide probability maps (Zarr), metrics (JSON) and, when asked, the confusion matrix.

    ``settings``: batch size, device, precision, threads and progress bars (:class:`InferenceSettings`).
    """
    runtime = settings.runtime()
    batch_size, progress = settings.batch_size, settings.progress
    model, meta = load_model(model_path, runtime)
    magnification = meta.input_magnification
    classes = meta.classes
    truth, predicted, groups, unlabelled = [], [], [], []
    timing = {"patches": 0, "seconds": 0.0}
    with atomic_path(out_predictions) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for store_path in tqdm(test_stores, desc=f"infer {Path(model_path).parent}", disable=not progress):
            store = open_store(store_path)
            attributes = patch_store.read_attributes(store)
            slide_id = attributes.slide_id
            probabilities, seconds = infer_store(model, meta, store_path, batch_size, runtime)
            labels = store[patch_store.LABELS][:]
            group = root.create_group(slide_id)
            group.create_array(patch_store.PROBABILITIES, data=probabilities.astype(np.float32))
            group.create_array(patch_store.COORDS, data=store[patch_store.COORDS][:])
            group.create_array(patch_store.LABELS, data=labels)
            group.attrs.update({"store": str(store_path), **attributes.geometry(), "seconds": seconds})
            timing["patches"] += len(probabilities)
            timing["seconds"] += seconds
            labelled = labels >= 0
            group.attrs["labelled"] = bool(labelled.any())
            if not labelled.any():
                unlabelled.append(slide_id)
            truth.append(labels[labelled])
            predicted.append(probabilities[labelled].argmax(1) if len(probabilities) else np.zeros(0, int))
            groups.append(np.full(int(labelled.sum()), slide_id))
        root.attrs.update({"model": str(model_path), "classes": classes, "magnification": magnification, **timing})
    truth, predicted, groups = (np.concatenate(x) if x else np.zeros(0) for x in (truth, predicted, groups))
    truth, predicted = truth.astype(int), predicted.astype(int)
    absent = {"train": absent_classes(classes, meta.train_patches_per_class)} if meta.train_patches_per_class else {}
    absent["test"] = absent_classes(classes, class_counts(truth, classes)) if truth.size else []
    notes = split_warnings(absent, unlabelled)
    for line in notes:
        warnings.warn(f"{model_path}: {line}", stacklevel=2)
    metrics = {
        "model": str(model_path),
        "method": meta.method,
        "magnification": meta.magnification,
        "seed": meta.seed,
        "classes": classes,
        "test_patches": int(len(truth)),
        "test_slides": len(test_stores),
        "unlabelled_slides": unlabelled,
        "absent_classes": absent,
        "warnings": notes,
        "best_epoch": meta.best_epoch,
        "val_kappa": meta.val_kappa,
        "inference": {**timing, "device": str(runtime.device), "precision": runtime.precision,
                      "patches_per_second": timing["patches"] / timing["seconds"] if timing["seconds"] else None},
        **(summarise(truth, predicted, len(classes)) if truth.size else _no_labels_summary(len(classes))),
        "ci95": confidence_intervals(truth, predicted, groups.astype(str), len(classes)),
        "per_patch": {"truth": truth.tolist(), "predicted": predicted.tolist(),
                      "slide": groups.astype(str).tolist()},
    }
    write_json(out_metrics, metrics)
    title = f"{Path(model_path).parent.parent.name}, seed {meta.seed}"
    write_confusion_matrix(metrics["confusion_matrix"], classes, title, out_confusion_csv, out_confusion_png)
    return metrics
