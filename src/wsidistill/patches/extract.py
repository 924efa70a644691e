"""Slide -> one Zarr v3 store of aligned patches at every magnification.

Layout of ``{slide}.zarr``::

    coords (N, 2) int64        level-0 (x, y) of each patch's top-left corner
    labels (N,) int8           majority class, -1 when unlabelled
    tissue_fraction (N,) f4
    class_fractions (N, C) f4  annotated area of each class in the patch
    thumbnail (h, w, 3) u1     with attrs thumbnail_downsample
    tissue_mask (h, w) bool
    40x/images (N, P, P, 3) u1 one group per magnification, P = patch px there
    ...

Each block of grid cells is read once, at the native level closest above the
highest magnification wanted, and area-downsampled for the others, so every
JPEG tile is decoded once and patch *i* is the same tissue at every
magnification.  Blocks are processed in parallel with dask (threads by
default, or a distributed scheduler) in bounded windows, so memory does not
grow with the slide.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import dask
import numpy as np
import zarr
from tqdm import tqdm

from .. import __version__
from ..io import atomic_path, write_json
from ..slides.annotations import class_fractions, majority_labels, read_geojson
from ..slides.grid import PatchGrid, magnification_name, patch_pixels
from ..slides.reader import Slide
from ..slides.tissue import detect_tissue

#: Target bytes per compressed-chunk payload: large enough for fast reads, small enough to stream.
CHUNK_BYTES = 2 << 20


class MagnificationUnavailable(ValueError):
    """A requested magnification finer than the slide's native resolution."""


@dataclass(frozen=True)
class ExtractionSettings:
    classes: tuple[str, ...]
    class_map: dict[str, str]
    magnifications: tuple[float, ...]
    teacher_magnification: float
    patch_size: int
    min_tissue_fraction: float = 0.5
    min_label_fraction: float = 0.5
    tissue_method: str = "hsv-otsu"
    on_missing_magnification: str = "skip"
    block_cells: int = 8
    thumbnail_max_side: int = 1024
    scheduler_address: str | None = None
    extra_attrs: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict) -> ExtractionSettings:
        extraction = config["extraction"]
        return cls(
            classes=tuple(config["classes"]),
            class_map=dict(config["annotation_classes"]),
            magnifications=tuple(sorted(config["magnifications"], reverse=True)),
            teacher_magnification=config["teacher"]["magnification"],
            patch_size=extraction["patch_size"],
            min_tissue_fraction=extraction["min_tissue_fraction"],
            min_label_fraction=extraction["min_label_fraction"],
            tissue_method=extraction["tissue_method"],
            on_missing_magnification=extraction["on_missing_magnification"],
            block_cells=extraction["block_cells"],
            scheduler_address=(config.get("dask") or {}).get("scheduler_address"),
        )


@lru_cache(maxsize=8)
def _open(path: str, mpp: float | None, objective_power: float | None) -> Slide:
    """One open handle per slide and process; OpenSlide reads are thread-safe."""
    return Slide(path, mpp=mpp, objective_power=objective_power)


def area_downsample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``image`` to ``size`` (width, height); exact block means for integer factors."""
    height, width = image.shape[:2]
    fx, fy = width / size[0], height / size[1]
    if fx == fy == 1:
        return image
    if fx.is_integer() and fy.is_integer():
        f = int(fx)
        blocks = image.reshape(size[1], int(fy), size[0], f, -1).astype(np.float32)
        return (blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8).reshape(size[1], size[0], *image.shape[2:])
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _read_block(slide_key, level, level_downsample, origin, cells, cell, sides):
    """Read one block of cells once and cut it into patches at every magnification.

    ``cells`` are (column, row) offsets within the block whose top-left is
    ``origin`` (level 0); ``sides`` maps magnification name -> (patch px,
    level-0 px per output px).
    """
    slide = _open(*slide_key)
    columns = cells[:, 0].max() + 1
    rows = cells[:, 1].max() + 1
    read_w = int(round(columns * cell / level_downsample))
    read_h = int(round(rows * cell / level_downsample))
    block = slide.read_region(level, origin[0], origin[1], read_w, read_h)
    out = {}
    for name, (side, _) in sides.items():
        scaled = area_downsample(block, (columns * side, rows * side))
        out[name] = np.stack([scaled[r * side : (r + 1) * side, c * side : (c + 1) * side] for c, r in cells])
    return out


def extract_slide(
    slide_path: str | Path,
    out: str | Path,
    settings: ExtractionSettings,
    *,
    slide_id: str,
    annotations: str | Path | None = None,
    mpp: float | None = None,
    objective_power: float | None = None,
    threads: int = 1,
    summary_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Write ``out`` (a Zarr store) atomically and return the extraction summary."""
    started = time.perf_counter()
    timings = {}
    slide_key = (str(Path(slide_path).resolve()), mpp, objective_power)
    slide = _open(*slide_key)
    info = slide.info

    available, skipped = [], []
    for magnification in settings.magnifications:
        if magnification > info.objective_power * 1.001:
            message = (
                f"{slide_path}: {magnification:g}x requested but the slide's native magnification is "
                f"{info.objective_power:g}x ({info.objective_power_source}); it is never upsampled"
            )
            if settings.on_missing_magnification == "error":
                raise MagnificationUnavailable(message + ". Remove it from `magnifications` or set "
                                               "`extraction.on_missing_magnification: skip`.")
            warnings.warn(message + "; skipped", stacklevel=2)
            skipped.append(magnification)
        else:
            available.append(magnification)

    cell = patch_pixels(settings.patch_size, info.objective_power, settings.teacher_magnification)
    grid = PatchGrid.for_slide(info.dimensions, cell)
    thumbnail, thumb_downsample = slide.thumbnail(settings.thumbnail_max_side)
    tissue_mask = detect_tissue(thumbnail, settings.tissue_method)
    tissue_fraction = grid.tissue_fraction(tissue_mask, thumb_downsample)
    keep = np.flatnonzero(tissue_fraction >= settings.min_tissue_fraction)
    timings["tissue_s"] = time.perf_counter() - started

    # Order patches block by block so each block's patches are contiguous in the store.
    grid_rc = np.stack([keep % grid.columns, keep // grid.columns], axis=1)
    block_rc = grid_rc // settings.block_cells
    order = np.lexsort((grid_rc[:, 0], grid_rc[:, 1], block_rc[:, 0], block_rc[:, 1]))
    keep, grid_rc, block_rc = keep[order], grid_rc[order], block_rc[order]
    coords = grid_rc.astype(np.int64) * cell

    fractions = np.zeros((len(keep), len(settings.classes)))
    if annotations:
        regions = read_geojson(annotations, settings.class_map, settings.classes, info.dimensions)
        fractions = class_fractions(regions, coords, cell)
    labels = majority_labels(fractions, settings.min_label_fraction)
    timings["labels_s"] = time.perf_counter() - started - timings["tissue_s"]

    sides = {
        magnification_name(m): (
            patch_pixels(settings.patch_size, m, settings.teacher_magnification),
            info.objective_power / m,
        )
        for m in available
    }
    level = slide.best_level_for(min(d for _, d in sides.values())) if sides else 0
    level_downsample = info.level_downsamples[level]

    blocks = []
    if len(keep):
        boundaries = np.flatnonzero(np.any(np.diff(block_rc, axis=0) != 0, axis=1)) + 1
        for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, len(keep)]):
            rc = grid_rc[start:stop]
            top_left = rc.min(axis=0)
            blocks.append((start, stop, tuple(int(v) for v in top_left * cell), rc - top_left))

    extract_started = time.perf_counter()
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.create_array("coords", data=coords)
        root.create_array("labels", data=labels)
        root.create_array("tissue_fraction", data=tissue_fraction[keep].astype(np.float32))
        root.create_array("class_fractions", data=fractions.astype(np.float32))
        root.create_array("thumbnail", data=thumbnail)
        root.create_array("tissue_mask", data=tissue_mask)
        images = {}
        for name, (side, _) in sides.items():
            per_chunk = int(np.clip(CHUNK_BYTES // (side * side * 3), 1, 4096))
            images[name] = root.create_group(name).create_array(
                "images", shape=(len(keep), side, side, 3), chunks=(per_chunk, side, side, 3), dtype="uint8"
            )
        _write_blocks(images, blocks, slide_key, level, level_downsample, cell, sides, threads,
                      settings.scheduler_address, progress=progress, desc=slide_id)
        root.attrs.update(
            {
                "slide_id": slide_id,
                "source_path": str(slide_path),
                "annotations": str(annotations) if annotations else None,
                "slide": info.to_dict(),
                "mpp": info.mpp,
                "mpp_source": info.mpp_source,
                "objective_power": info.objective_power,
                "objective_power_source": info.objective_power_source,
                "classes": list(settings.classes),
                "magnifications": [magnification_name(m) for m in available],
                "skipped_magnifications": [magnification_name(m) for m in skipped],
                "teacher_magnification": settings.teacher_magnification,
                "patch_size": settings.patch_size,
                "patch_sizes": {name: side for name, (side, _) in sides.items()},
                "cell_level0": cell,
                "grid": {"columns": grid.columns, "rows": grid.rows},
                "thumbnail_downsample": thumb_downsample,
                "min_tissue_fraction": settings.min_tissue_fraction,
                "min_label_fraction": settings.min_label_fraction,
                "tissue_method": settings.tissue_method,
                "read_level": level,
                "wsidistill_version": __version__,
                **settings.extra_attrs,
            }
        )
    timings["extract_s"] = time.perf_counter() - extract_started
    timings["total_s"] = time.perf_counter() - started

    counts = {c: int((labels == i).sum()) for i, c in enumerate(settings.classes)}
    counts["unlabelled"] = int((labels < 0).sum())
    summary = {
        "slide_id": slide_id,
        "store": str(out),
        "grid_cells": grid.columns * grid.rows,
        "tissue_patches": int(len(keep)),
        "patches_per_class": counts,
        "magnifications": [magnification_name(m) for m in available],
        "skipped_magnifications": [magnification_name(m) for m in skipped],
        "warnings": [f"no tissue found in {slide_path}"] if not len(keep) else [],
        "timings": timings,
        "patch_sets_per_second": len(keep) / timings["extract_s"] if timings["extract_s"] else None,
    }
    if not len(keep):
        warnings.warn(f"{slide_path}: no tissue found; wrote an empty store", stacklevel=2)
    if summary_path:
        write_json(summary_path, summary)
    return summary


def _write_blocks(images, blocks, slide_key, level, level_downsample, cell, sides, threads, scheduler_address,
                  *, progress, desc):
    """Compute blocks in bounded windows and write whole chunks in order."""
    if not blocks or not images:
        return
    read = dask.delayed(_read_block, pure=True)
    window = max(4, 4 * threads)
    buffers = {name: [] for name in images}
    written = dict.fromkeys(images, 0)

    def flush(final=False):
        for name, array in images.items():
            pending = buffers[name]
            if not pending:
                continue
            stacked = np.concatenate(pending)
            chunk = array.chunks[0]
            ready = len(stacked) if final else (len(stacked) // chunk) * chunk
            if ready:
                array[written[name] : written[name] + ready] = stacked[:ready]
                written[name] += ready
            buffers[name] = [stacked[ready:]] if ready < len(stacked) else []

    compute_kwargs = {"scheduler": "threads", "num_workers": threads}
    client = None
    if scheduler_address:
        from distributed import Client

        client = Client(scheduler_address)
        compute_kwargs = {"scheduler": client}
    try:
        with tqdm(total=blocks[-1][1], unit="patch", desc=f"extract {desc}", disable=not progress) as bar:
            for i in range(0, len(blocks), window):
                batch = blocks[i : i + window]
                results = dask.compute(
                    *[read(slide_key, level, level_downsample, origin, cells, cell, sides)
                      for _, _, origin, cells in batch],
                    **compute_kwargs,
                )
                for result, (start, stop, _, _) in zip(results, batch):
                    for name in images:
                        buffers[name].append(result[name])
                    bar.update(stop - start)
                flush()
        flush(final=True)
    finally:
        if client is not None:
            client.close()
