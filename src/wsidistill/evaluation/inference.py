"""Inference of a trained model on patches: in-memory arrays or whole patch stores."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ..device import Runtime
from ..distill.inputs import student_input_from
from ..models.checkpoint import ModelMeta, model_view
from ..patches.dataset import read_images, to_tensor
from ..patches.store import images_path, open_store
from ..slides.grid import magnification_name


@torch.no_grad()
def batch_probabilities(model: torch.nn.Module, batches: Iterable[torch.Tensor], runtime: Runtime) -> np.ndarray:
    """Softmax class probabilities ``(N, C)`` float32 of ``model`` on each input batch of ``batches``, in order."""
    model.eval()
    out = []
    for batch in batches:
        with runtime.autocast():
            logits = model(batch).logits
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.classifier.out_features), np.float32)


def _probabilities(model: torch.nn.Module, count: int, read_batch: Callable[[slice], torch.Tensor], batch_size: int,
                   runtime: Runtime) -> np.ndarray:
    """:func:`batch_probabilities` on ``read_batch(rows)`` for consecutive slices of ``count`` rows."""
    return batch_probabilities(model, (read_batch(slice(start, start + batch_size))
                                       for start in range(0, count, batch_size)), runtime)


def predict_probabilities(model: torch.nn.Module, images: np.ndarray, batch_size: int, runtime: Runtime,
                          upsample_factor: float | None = None) -> np.ndarray:
    """Class probabilities ``(N, C)`` for ``images`` ``(N, H, W, 3)`` uint8; ``upsample_factor``: pool by it and
    upsample back first (an upsampled Student's input)."""

    def read_batch(rows: slice) -> torch.Tensor:
        batch = to_tensor(images[rows], runtime.device)
        return student_input_from(batch, "upsampled", upsample_factor) if upsample_factor else batch

    return _probabilities(model, len(images), read_batch, batch_size, runtime)


def infer_store(model: torch.nn.Module, meta: ModelMeta, store_path, batch_size: int,
                runtime: Runtime) -> tuple[np.ndarray, float]:
    """Class probabilities ``(N, C)`` for every patch of one store (its ``meta.input_magnification`` view, as
    the model's training input was), and the seconds it took."""
    images = open_store(store_path)[images_path(magnification_name(meta.input_magnification))]
    started = time.perf_counter()
    probabilities = _probabilities(
        model, images.shape[0], lambda rows: model_view(to_tensor(read_images(images, rows), runtime.device), meta),
        batch_size, runtime)
    return probabilities, time.perf_counter() - started
