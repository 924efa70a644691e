"""Inference of a trained model on patches: in-memory arrays or whole patch stores."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..device import Runtime
from ..distill.inputs import student_input_from
from ..models.checkpoint import model_view
from ..patches.dataset import read_images, to_tensor
from ..patches.store import images_path, open_store
from ..slides.grid import magnification_name


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, images: np.ndarray, batch_size: int, runtime: Runtime,
                          upsample_factor: float | None = None) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = to_tensor(images[start : start + batch_size], runtime.device)
        if upsample_factor:
            batch = student_input_from(batch, "upsampled", upsample_factor)
        with runtime.autocast():
            logits = model(batch).logits
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def infer_store(model, meta: dict, store_path, batch_size, runtime: Runtime) -> tuple[np.ndarray, float]:
    """Class probabilities for every patch of one store, and the seconds it took."""
    images = open_store(store_path)[images_path(magnification_name(meta["input_magnification"]))]
    started = time.perf_counter()
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = model_view(to_tensor(read_images(images, slice(start, start + batch_size)), runtime.device), meta)
        with runtime.autocast():
            logits = model(batch).logits
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    seconds = time.perf_counter() - started
    return (np.concatenate(out) if out else np.zeros((0, model.classifier.out_features), np.float32)), seconds
