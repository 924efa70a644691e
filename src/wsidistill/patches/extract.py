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

The grid's cells are grouped into blocks whose edges fall on the file's tile
edges, so no two blocks share a tile.  Each block is read once, at the native
level closest above the highest magnification wanted, decoding only the tiles
under its tissue cells, and area-downsampled for the others: every JPEG tile is
decoded once and patch *i* is the same tissue at every magnification.  Blocks
are processed in parallel with dask (threads by default, or a distributed
scheduler) in bounded windows while writer threads compress and store the
previous window's whole chunks, so memory does not grow with the slide.
"""

from __future__ import annotations

import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import dask
import numcodecs
import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec, BytesCodec
from zarr.storage import LocalStore

from .. import __version__
from ..errors import InputError
from ..io import atomic_path, write_json
from ..slides.annotations import (
    RADBOUD_CLASSES,
    AnnotationError,
    class_fractions,
    label_mask_fractions,
    majority_labels,
    read_geojson,
    read_tissue_mask,
)
from ..slides.grid import PatchGrid, magnification_name, patch_pixels
from ..slides.reader import Slide
from ..slides.tissue import detect_tissue

#: Target bytes per compressed-chunk payload: large enough for fast reads, small enough to stream.
CHUNK_BYTES = 2 << 20

#: Patches are decoded JPEG, which no lossless codec shrinks much (LZ4 1.15x, bit-shuffled LZ4 1.3x,
#: zstd 1.35x on tissue), so speed decides: LZ4 costs 40% of the JPEG decode, zstd twice the decode.
PATCH_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle", typesize=1)

#: Largest block side (level pixels) worth making to align blocks with both cells and tiles.
MAX_ALIGNED_BLOCK = 8192


class MagnificationUnavailable(InputError, ValueError):
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
    label_mask_classes: dict[int, str | None] = field(default_factory=lambda: dict(RADBOUD_CLASSES))
    extra_attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Block:
    """Store rows ``start:stop``: the patches whose level-0 top-left corners are ``corners``."""

    start: int
    stop: int
    corners: np.ndarray


@lru_cache(maxsize=8)
def _open(path: str, mpp: float | None, objective_power: float | None) -> Slide:
    """One open handle per slide and process; reads are thread-safe."""
    return Slide(path, mpp=mpp, objective_power=objective_power)


def area_downsample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``image`` to ``size`` (width, height): block means for integer factors."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


def downsample_patches(patches: np.ndarray, side: int) -> np.ndarray:
    """Area-average (n, s, s, 3) patches to (n, side, side, 3).

    For an integer factor the patches are resized as one tall image: the
    averaged blocks never cross from one patch into the next.
    """
    count, size = patches.shape[:2]
    if size == side:
        return patches
    if size % side == 0:
        tall = area_downsample(patches.reshape(count * size, size, -1), (side, count * side))
        return tall.reshape(count, side, side, -1)
    return np.stack([area_downsample(patch, (side, side)) for patch in patches])


def block_shape(cell: int, tile: tuple[int, int] | None, level_downsample: float, block_cells: int) -> tuple[int, int]:
    """Cells per block (columns, rows): about ``block_cells`` a side, edges on tile edges where possible.

    Aligned edges are multiples of lcm(cell, tile) in level-0 pixels; when that
    is not a whole number or too large, blocks are ``block_cells`` wide and
    the tiles on their edges are decoded by both neighbours.
    """
    if tile is None:
        return block_cells, block_cells
    shape = []
    for tile_side in tile:
        tile_level0 = tile_side * level_downsample
        unit = math.lcm(cell, round(tile_level0)) // cell if float(tile_level0).is_integer() else 0
        aligned = 0 < unit * cell / level_downsample <= MAX_ALIGNED_BLOCK
        shape.append(unit * max(1, round(block_cells / unit)) if aligned else block_cells)
    return shape[0], shape[1]


def _read_block(slide_key, level, corners, cell, sides):
    """Read one block's patches once and derive every magnification from them.

    ``corners`` are the level-0 top-left corners of the block's cells;
    ``sides`` maps magnification name -> patch px there, finest first.  Each
    magnification is area-averaged from the one above it (2x steps for
    40/20/10/5x): a quarter of the work of averaging each from the native
    pixels, at the price of rounding at each step, which leaves pixels within
    1.5 grey levels of the exact area average (on average 0.2 brighter at 10x,
    0.4 at 5x: OpenCV rounds halves up).
    """
    slide = _open(*slide_key)
    patches = slide.read_rectangles(level, corners, round(cell / slide.info.level_downsamples[level]))
    out = {}
    for name, side in sides.items():
        patches = out[name] = downsample_patches(patches, side)
    return out


def create_image_arrays(root: zarr.Group, count: int, sides: dict[str, int]) -> dict[str, zarr.Array]:
    """One ``{magnification}/images`` array of ``count`` patches per magnification, chunks of ~CHUNK_BYTES."""
    images = {}
    for name, side in sides.items():
        per_chunk = int(np.clip(CHUNK_BYTES // (side * side * 3), 1, 4096))
        images[name] = root.create_group(name).create_array(
            "images", shape=(count, side, side, 3), chunks=(per_chunk, side, side, 3), dtype="uint8",
            compressors=PATCH_CODEC,
            chunk_key_encoding={"name": "default", "separator": "."},  # c.7.0.0.0: one file, no folders per chunk
            config={"write_empty_chunks": True},  # spares zarr-python a full compare per chunk
        )
    return images


def _plan_blocks(coords: np.ndarray, block_rc: np.ndarray) -> list[Block]:
    """One Block per run of equal ``block_rc`` (rows are sorted block by block)."""
    if not len(coords):
        return []
    boundaries = np.flatnonzero(np.any(np.diff(block_rc, axis=0) != 0, axis=1)) + 1
    return [Block(int(start), int(stop), coords[start:stop])
            for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, len(coords)])]


def extract_slide(
    slide_path: str | Path,
    out: str | Path,
    settings: ExtractionSettings,
    *,
    slide_id: str,
    annotations: str | Path | None = None,
    label_mask: str | Path | None = None,
    tissue_mask: str | Path | None = None,
    mpp: float | None = None,
    objective_power: float | None = None,
    threads: int = 1,
    summary_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Write ``out`` (a Zarr store) atomically and return the extraction summary.

    Labels come from ``annotations`` (QuPath GeoJSON) or ``label_mask`` (a
    PANDA-style mask TIFF); ``tissue_mask`` (nonzero = tissue, any scale)
    replaces tissue detection.  Every warning also lands in the summary.
    """
    started = time.perf_counter()
    timings = {}
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        warnings.warn(message, stacklevel=3)

    if annotations and label_mask:
        raise AnnotationError(f"{annotations} and {label_mask}: give either GeoJSON annotations or a label mask "
                              "for a slide, not both")
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
            note(message + "; skipped")
            skipped.append(magnification)
        else:
            available.append(magnification)

    cell = patch_pixels(settings.patch_size, info.objective_power, settings.teacher_magnification)
    grid = PatchGrid.for_slide(info.dimensions, cell)
    thumbnail, thumb_downsample = slide.thumbnail(settings.thumbnail_max_side)
    if tissue_mask:
        user_mask, mask_downsample = read_tissue_mask(tissue_mask, info.dimensions)
        tissue_fraction = grid.tissue_fraction(user_mask, mask_downsample)
        stored_mask = cv2.resize(user_mask.astype(np.uint8), (thumbnail.shape[1], thumbnail.shape[0]),
                                 interpolation=cv2.INTER_NEAREST).astype(bool)
        tissue_method = "user mask"
    else:
        stored_mask = detect_tissue(thumbnail, settings.tissue_method)
        tissue_fraction = grid.tissue_fraction(stored_mask, thumb_downsample)
        tissue_method = settings.tissue_method
    keep = np.flatnonzero(tissue_fraction >= settings.min_tissue_fraction)
    timings["tissue_s"] = time.perf_counter() - started

    sides = {magnification_name(m): patch_pixels(settings.patch_size, m, settings.teacher_magnification)
             for m in available}
    finest = max(available, default=info.objective_power)
    level = slide.best_level_for(info.objective_power / finest)
    level_downsample = info.level_downsamples[level]
    block_columns, block_rows = block_shape(cell, slide.tile_size(level), level_downsample, settings.block_cells)

    # Order patches block by block so each block's patches are contiguous in the store.
    grid_rc = np.stack([keep % grid.columns, keep // grid.columns], axis=1)
    block_rc = grid_rc // (block_columns, block_rows)
    order = np.lexsort((grid_rc[:, 0], grid_rc[:, 1], block_rc[:, 0], block_rc[:, 1]))
    keep, grid_rc, block_rc = keep[order], grid_rc[order], block_rc[order]
    coords = grid_rc.astype(np.int64) * cell

    fractions = np.zeros((len(keep), len(settings.classes)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if annotations:
            regions = read_geojson(annotations, settings.class_map, settings.classes, info.dimensions)
            fractions = class_fractions(regions, coords, cell)
        elif label_mask:
            fractions = label_mask_fractions(label_mask, settings.label_mask_classes, settings.classes, coords, cell,
                                             info.dimensions)
    for warning in caught:
        note(str(warning.message))
    labels = majority_labels(fractions, settings.min_label_fraction)
    timings["labels_s"] = time.perf_counter() - started - timings["tissue_s"]

    blocks = _plan_blocks(coords, block_rc)
    extract_started = time.perf_counter()
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.create_array("coords", data=coords)
        root.create_array("labels", data=labels)
        root.create_array("tissue_fraction", data=tissue_fraction[keep].astype(np.float32))
        root.create_array("class_fractions", data=fractions.astype(np.float32))
        root.create_array("thumbnail", data=thumbnail)
        root.create_array("tissue_mask", data=stored_mask)
        images = create_image_arrays(root, len(keep), sides)
        _write_blocks(images, blocks, slide_key, level, cell, sides, threads, settings.scheduler_address,
                      progress=progress, desc=slide_id)
        root.update_attributes(  # one metadata write, where attrs.update writes once per key
            {
                "slide_id": slide_id,
                "source_path": str(slide_path),
                "annotations": str(annotations) if annotations else None,
                "label_mask": str(label_mask) if label_mask else None,
                "tissue_mask_source": str(tissue_mask) if tissue_mask else None,
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
                "patch_sizes": sides,
                "cell_level0": cell,
                "grid": {"columns": grid.columns, "rows": grid.rows},
                "thumbnail_downsample": thumb_downsample,
                "min_tissue_fraction": settings.min_tissue_fraction,
                "min_label_fraction": settings.min_label_fraction,
                "tissue_method": tissue_method,
                "read_level": level,
                "block_cells": [block_columns, block_rows],
                "wsidistill_version": __version__,
                **settings.extra_attrs,
            }
        )
    timings["extract_s"] = time.perf_counter() - extract_started
    timings["total_s"] = time.perf_counter() - started

    if not len(keep):
        note(f"{slide_path}: no tissue found; wrote an empty store")
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
        "pixel_reader": info.pixel_reader,
        "read_level": level,
        "block_cells": [block_columns, block_rows],
        "warnings": notes,
        "timings": timings,
        "patch_sets_per_second": len(keep) / timings["extract_s"] if timings["extract_s"] else None,
    }
    if summary_path:
        write_json(summary_path, summary)
    return summary


def _chunk_encoder(array: zarr.Array):
    """Encode a whole chunk exactly as ``array``'s metadata declares (bytes, then Blosc), or None.

    None unless the array is uint8 in C order in a local directory with that
    codec pipeline; such arrays are written through zarr-python instead.
    """
    codecs = array.metadata.codecs
    if not (isinstance(array.store_path.store, LocalStore) and array.dtype == np.uint8 and array.order == "C"
            and len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)):
        return None
    blosc = codecs[1]
    shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
               "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[blosc.shuffle.value]
    return numcodecs.Blosc(cname=blosc.cname.value, clevel=blosc.clevel, shuffle=shuffle, typesize=blosc.typesize,
                           blocksize=blosc.blocksize).encode


def _take_rows(pieces: list[np.ndarray], count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first ``count`` rows of ``pieces`` (a view when one piece holds them all) and the pieces left."""
    head, rest = [], list(pieces)
    while count:
        piece = rest.pop(0)
        if len(piece) > count:
            head.append(piece[:count])
            rest.insert(0, piece[count:])
            count = 0
        else:
            head.append(piece)
            count -= len(piece)
    return (head[0] if len(head) == 1 else np.concatenate(head)), rest


class PatchWriter:
    """Appends patches to each magnification's array; writer threads store whole chunks meanwhile.

    Chunks are encoded here and written as files under the keys the array's
    metadata gives (the last one padded with the fill value, as Zarr stores
    edge chunks): zarr-python's own write path (a fresh fill-value buffer and
    a copy per chunk, a hop to its event loop and on to a thread) costs four
    times the compression itself (docs/performance.md).  At most one batch is
    in flight, so memory is bounded by two batches.
    """

    def __init__(self, images: dict[str, zarr.Array], *, workers: int = 1):
        self.images = images
        self._encoders = {name: _chunk_encoder(array) for name, array in images.items()}
        self._pending = {name: [] for name in images}
        self._written = dict.fromkeys(images, 0)
        self._pool = ThreadPoolExecutor(max(1, workers))
        self._in_flight = []

    def append(self, patches: dict[str, np.ndarray]) -> None:
        for name in self.images:
            self._pending[name].append(patches[name])

    def flush(self, *, final: bool = False) -> None:
        """Hand every whole chunk (and, when final, the last partial one) to the writer threads."""
        jobs = []
        for name, array in self.images.items():
            pieces, per_chunk = self._pending[name], array.chunks[0]
            rows = sum(len(piece) for piece in pieces)
            while rows >= per_chunk or (final and rows):
                chunk, pieces = _take_rows(pieces, min(rows, per_chunk))
                jobs.append((name, self._written[name], chunk))
                self._written[name] += len(chunk)
                rows -= len(chunk)
            self._pending[name] = pieces
        self._wait()
        self._in_flight = [self._pool.submit(self._store, *job) for job in jobs]
        if final:
            self._wait()

    def _store(self, name: str, start: int, patches: np.ndarray) -> None:
        array, encode = self.images[name], self._encoders[name]
        if encode is None:
            array[start : start + len(patches)] = patches
            return
        per_chunk = array.chunks[0]
        if len(patches) < per_chunk:  # the last chunk: stored whole, padded with the fill value
            patches = np.concatenate([patches, np.full((per_chunk - len(patches), *patches.shape[1:]),
                                                       array.fill_value, patches.dtype)])
        key = array.metadata.encode_chunk_key((start // per_chunk,) + (0,) * (array.ndim - 1))
        path = Path(array.store_path.store.root) / array.path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(patches))

    def _wait(self) -> None:
        for future in self._in_flight:
            future.result()
        self._in_flight = []

    def __enter__(self) -> PatchWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self.flush(final=True)
        finally:
            self._pool.shutdown(wait=True)


def _write_blocks(images, blocks, slide_key, level, cell, sides, threads, scheduler_address, *, progress, desc):
    """Compute blocks in bounded windows of dask tasks and store their patches in order."""
    if not blocks or not images:
        return
    read = dask.delayed(_read_block, pure=False)  # no hashing of every argument for a key
    window = max(4, 4 * threads)
    compute_kwargs = {"scheduler": "threads", "num_workers": threads}
    client = None
    if scheduler_address:
        from distributed import Client

        client = Client(scheduler_address)
        compute_kwargs = {"scheduler": client}
    try:
        with PatchWriter(images, workers=threads) as writer, \
                tqdm(total=blocks[-1].stop, unit="patch", desc=f"extract {desc}", disable=not progress) as bar:
            for i in range(0, len(blocks), window):
                batch = blocks[i : i + window]
                results = dask.compute(
                    *[read(slide_key, level, b.corners, cell, sides) for b in batch], **compute_kwargs
                )
                for result, block in zip(results, batch):
                    writer.append(result)
                    bar.update(block.stop - block.start)
                writer.flush()
    finally:
        if client is not None:
            client.close()
