"""Reading patch stores back for training, evaluation and inference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore

from ..slides.grid import magnification_name
from . import store
from .jpeg import source_tile_codec
from .store import open_store
from .zarr_io import read_source_tiles

__all__ = ["PatchSet", "load_patches", "open_store", "read_images", "to_tensor"]


def read_images(array: zarr.Array, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
    """``rows`` (a slice or indices) of an ``images`` array.

    A slide's kept JPEG tiles are decoded straight from their shards, and
    only for those rows: decoding is what reading them costs.
    """
    if source_tile_codec(array) is not None and isinstance(array.store_path.store, LocalStore):
        return read_source_tiles(array, np.arange(array.shape[0])[rows])
    return array[rows] if isinstance(rows, slice) else array[:][rows]


@dataclass
class PatchSet:
    """Labelled patches of several slides, aligned across magnifications.

    ``images[name]`` is (N, P, P, 3) uint8 for each magnification name; row i
    of every array is the same tissue.
    """

    images: dict[str, np.ndarray]
    labels: np.ndarray
    slide_index: np.ndarray
    slide_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_patches(stores: Sequence[str | Path], magnifications: Sequence[float], *, labelled_only: bool = True) -> PatchSet:
    """Load the patches of ``stores`` at ``magnifications`` into memory.

    The demo and SICAPv2-sized cohorts fit in memory; patches are kept as
    uint8 and converted per batch.  Each store is checked for completeness
    (:func:`~wsidistill.patches.store.open_store`: IncompleteStoreError naming it).
    """
    names = [magnification_name(m) for m in magnifications]
    images = {name: [] for name in names}
    labels, slide_index, slide_ids = [], [], []
    for index, path in enumerate(stores):
        root = open_store(path)
        attributes = store.read_attributes(root)
        slide_labels = root[store.LABELS][:]
        rows = np.flatnonzero(slide_labels >= 0) if labelled_only else np.arange(len(slide_labels))
        slide_ids.append(attributes.slide_id)
        for name in names:
            if name not in root:
                raise KeyError(f"{path}: no {name} patches (skipped at extraction: {attributes.skipped_magnifications})")
            array = root[store.images_path(name)]
            images[name].append(read_images(array, rows) if len(rows) else np.zeros((0, *array.shape[1:]), np.uint8))
        labels.append(slide_labels[rows])
        slide_index.append(np.full(len(rows), index))
    return PatchSet(
        images={name: np.concatenate(parts) for name, parts in images.items()},
        labels=np.concatenate(labels).astype(np.int64),
        slide_index=np.concatenate(slide_index),
        slide_ids=slide_ids,
    )


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1], channels_last because the source is NHWC.

    The uint8 bytes travel to the device (from pinned memory, asynchronously, on CUDA) and are
    converted there: a quarter of the bytes of a float copy.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255)

