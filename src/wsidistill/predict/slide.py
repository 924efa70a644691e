"""Class probabilities of every tissue patch of a slide, read at the model's own magnification.

The slide is read straight from its pyramid at the native level nearest at or above the model's
input magnification and area-downsampled to it; it is never upsampled, so a 5x Student decodes
about 1/64 of the pixels a 40x Teacher decodes.  Tissue detection, the patch grid, the tile-aligned
blocks and their dask streaming are extraction's own functions
(:func:`wsidistill.patches.extract.find_tissue`, :func:`~wsidistill.patches.extract.plan_blocks`,
:func:`~wsidistill.patches.extract.stream_blocks`): patch *i* here is the tissue patch extraction
stores for the same cell.  Memory is bounded by a window of blocks and the (N, C) probabilities.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import section_defaults
from ..device import Runtime
from ..patches.dataset import to_tensor
from ..patches.extract import (  # noqa: F401 (NoTissueError: predict's error, re-exported)
    ExtractionSettings,
    NoTissueError,
    Tissue,
    block_shape,
    find_tissue,
    no_tissue_error,
    open_slide,
    plan_blocks,
    require_magnification,
    stream_blocks,
)
from ..slides.grid import PatchGrid, magnification_name, patch_pixels
from ..slides.reader import SlideInfo
from .model import PredictModel


@dataclass(frozen=True)
class PredictSettings:
    """How slides are read for prediction; tissue defaults equal extraction's, so both keep the same patches."""

    tissue_method: str = ExtractionSettings.tissue_method
    min_tissue_fraction: float = ExtractionSettings.min_tissue_fraction
    thumbnail_max_side: int = ExtractionSettings.thumbnail_max_side
    block_cells: int = ExtractionSettings.block_cells
    batch_size: int = section_defaults("predict")["batch_size"]
    threads: int = 1
    scheduler_address: str | None = None


@dataclass
class SlidePrediction:
    """One slide's predictions: ``probabilities`` (N, C) float32 for the patches at ``coords`` (N, 2) level-0 (x, y)."""

    slide_id: str
    path: str
    info: SlideInfo
    coords: np.ndarray
    probabilities: np.ndarray
    grid: PatchGrid
    tissue: Tissue
    read_level: int
    timings: dict


def _prefetched(iterator, depth: int = 1):
    """``iterator``'s items, produced in a background thread up to ``depth`` ahead (reading overlaps inference)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        try:
            for item in iterator:
                items.put(item)
        except BaseException as err:  # handed to the consumer, raised there
            items.put(err)
        items.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


@torch.no_grad()
def predict_slide(path: str | Path, model: PredictModel, runtime: Runtime, settings: PredictSettings, *,
                  slide_id: str, mpp: float | None = None, objective_power: float | None = None,
                  progress: bool = True) -> SlidePrediction:
    """Classify every tissue patch of the slide at ``path`` with ``model``.

    ``mpp`` / ``objective_power`` override the slide's own metadata, as a sample sheet's columns of the
    same names do for extraction (:class:`wsidistill.slides.reader.Slide`).

    Raises :class:`~wsidistill.slides.reader.SlideReadError` for an unreadable slide,
    :class:`~wsidistill.patches.extract.MagnificationUnavailable` when the slide's native
    magnification is below the model's input magnification, and :class:`NoTissueError` when no
    grid cell has ``min_tissue_fraction`` tissue; every message names the file.
    """
    started = time.perf_counter()
    slide_key = (str(Path(path).resolve()), mpp, objective_power)
    slide = open_slide(*slide_key)
    info = slide.info
    magnification = model.input_magnification
    require_magnification(path, info, magnification, "the model", f"Use a model trained at {info.objective_power:g}x "
                          f"or lower, or a scan at {magnification:g}x.")
    cell = patch_pixels(model.patch_side, info.objective_power, magnification)  # level-0 px per patch
    grid = PatchGrid.for_slide(info.dimensions, cell)
    tissue = find_tissue(slide, grid, settings.tissue_method, settings.min_tissue_fraction,
                         settings.thumbnail_max_side)
    if not len(tissue.keep):
        raise no_tissue_error(path, tissue.method, cell, settings.min_tissue_fraction,
                              "Check the slide holds stained tissue, or lower --min-tissue-fraction or change "
                              "--tissue-method.", tissue.fraction)
    level = slide.best_level_for(info.objective_power / magnification)
    blocks_rc = block_shape(cell, slide.tile_size(level), info.level_downsamples[level], settings.block_cells)
    _, coords, blocks = plan_blocks(tissue.keep, grid, blocks_rc)
    timings = {"tissue_s": time.perf_counter() - started}

    name = magnification_name(magnification)
    probabilities = np.empty((len(coords), len(model.classes)), np.float32)
    inferred = 0
    stream = stream_blocks(blocks, slide_key, level, cell, {name: model.patch_side}, settings.threads,
                           settings.scheduler_address)
    infer_started = time.perf_counter()
    with tqdm(total=len(coords), unit="patch", desc=f"predict {slide_id}", disable=not progress, leave=False) as bar:
        for patches, count in _prefetched(stream):
            images = patches[name]
            for start in range(0, count, settings.batch_size):
                batch = model.view(to_tensor(images[start : start + settings.batch_size], runtime.device))
                with runtime.autocast():
                    logits = model.network(batch).logits
                stop = inferred + len(batch)
                probabilities[inferred:stop] = torch.softmax(logits.float(), dim=1).cpu().numpy()
                inferred = stop
            bar.update(count)
    timings["read_infer_s"] = time.perf_counter() - infer_started
    timings["total_s"] = time.perf_counter() - started
    return SlidePrediction(slide_id=slide_id, path=str(path), info=info, coords=coords, probabilities=probabilities,
                           grid=grid, tissue=tissue, read_level=level, timings=timings)
