"""Whole-slide inference and test metrics for one trained model.

Every tissue patch of every test slide is classified, labelled or not, in
streamed batches, so the heatmaps cover the whole slide; metrics use the
labelled patches only.  Per-slide predictions are kept so statistics can be
bootstrapped over slides.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from .device import Runtime
from .io import atomic_path, write_json
from .metrics import summarise
from .patches.dataset import open_store, to_tensor
from .slides.grid import magnification_name
from .train import load_model, model_view


@torch.no_grad()
def infer_store(model, meta: dict, store_path, batch_size, runtime: Runtime) -> tuple[np.ndarray, float]:
    """Class probabilities for every patch of one store, and the seconds it took."""
    images = open_store(store_path)[magnification_name(meta["input_magnification"])]["images"]
    started = time.perf_counter()
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = model_view(to_tensor(images[start : start + batch_size], runtime.device), meta)
        with runtime.autocast():
            logits = model(batch).logits
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    seconds = time.perf_counter() - started
    return (np.concatenate(out) if out else np.zeros((0, model.classifier.out_features), np.float32)), seconds


def evaluate_model(
    model_path: str | Path,
    test_stores: list[str],
    out_predictions: str | Path,
    out_metrics: str | Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Write per-slide probability maps (Zarr) and metrics (JSON) for one model."""
    torch.set_num_threads(threads)
    runtime = Runtime.create(device, precision)
    model, meta = load_model(model_path, runtime)
    magnification = meta["input_magnification"]
    classes = meta["classes"]
    truth, predicted, groups = [], [], []
    timing = {"patches": 0, "seconds": 0.0}
    with atomic_path(out_predictions) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for store_path in tqdm(test_stores, desc=f"infer {Path(model_path).parent}", disable=not progress):
            store = open_store(store_path)
            slide_id = store.attrs["slide_id"]
            probabilities, seconds = infer_store(model, meta, store_path, batch_size, runtime)
            labels = store["labels"][:]
            group = root.create_group(slide_id)
            group.create_array("probabilities", data=probabilities.astype(np.float32))
            group.create_array("coords", data=store["coords"][:])
            group.create_array("labels", data=labels)
            group.attrs.update({"store": str(store_path), "cell_level0": store.attrs["cell_level0"],
                                "grid": store.attrs["grid"], "seconds": seconds})
            timing["patches"] += len(probabilities)
            timing["seconds"] += seconds
            labelled = labels >= 0
            truth.append(labels[labelled])
            predicted.append(probabilities[labelled].argmax(1) if len(probabilities) else np.zeros(0, int))
            groups.append(np.full(int(labelled.sum()), slide_id))
        root.attrs.update({"model": str(model_path), "classes": classes, "magnification": magnification, **timing})
    truth, predicted, groups = (np.concatenate(x) if x else np.zeros(0) for x in (truth, predicted, groups))
    metrics = {
        "model": str(model_path),
        "method": meta["method"],
        "magnification": meta["magnification"],
        "seed": meta["seed"],
        "classes": classes,
        "test_patches": int(len(truth)),
        "best_epoch": meta["best_epoch"],
        "val_kappa": meta["val_kappa"],
        "inference": {**timing, "device": str(runtime.device), "precision": runtime.precision,
                      "patches_per_second": timing["patches"] / timing["seconds"] if timing["seconds"] else None},
        **summarise(truth.astype(int), predicted.astype(int), len(classes)),
        "per_patch": {"truth": truth.astype(int).tolist(), "predicted": predicted.astype(int).tolist(),
                      "slide": groups.astype(str).tolist()},
    }
    write_json(out_metrics, metrics)
    return metrics
