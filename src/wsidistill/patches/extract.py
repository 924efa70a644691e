"""Slide -> one Zarr v3 store of aligned patches at every magnification.

The store's layout and attributes are those of :mod:`.store`.

The grid's cells are grouped into blocks whose edges fall on the file's tile
edges, so no two blocks share a tile.  Each block is read once, at the native
level closest above the highest magnification wanted, decoding only the tiles
under its tissue cells, and area-downsampled for the others: every JPEG tile is
decoded once and patch *i* is the same tissue at every magnification.  Blocks
are processed in parallel with dask (threads by default, or a distributed
scheduler) in bounded windows while writer threads compress and store the
previous window's whole chunks, so memory does not grow with the slide.

When every patch at the read level is whole JPEG tiles of the file (patch
side a multiple of the tile side, as with 256 px patches on 256 px tiles),
that magnification keeps the file's own tile bytes as its chunks
(:mod:`.jpeg`), sharded: no recompression, no generation loss, and several
times smaller.  ``reuse_source_tiles=False`` stores Blosc-LZ4 pixels instead.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import cv2
import dask.threaded
import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec
from zarr.storage import MemoryStore

from ..config import config_default, section_defaults
from ..errors import InputError, UnlabelledSlideError
from ..io import atomic_path, write_json
from ..slides.annotations import (
    RADBOUD_CLASSES,
    AnnotationError,
    class_fractions,
    context_labels,
    label_mask_fractions,
    majority_labels,
    read_annotations,
    read_tissue_mask,
    unlabelled_gland_classes,
)
from ..slides.grid import GridError, PatchGrid, field_cell, magnification_name, patch_pixels
from ..slides.reader import Slide, SlideInfo, TiffTiles
from ..slides.tissue import detect_tissue
from . import store
from .jpeg import SlideJpegCodec
from .zarr_io import PatchWriter, chunk_files

#: The root group's metadata file (attributes included) in a Zarr v3 store.
ROOT_METADATA = "zarr.json"

#: Target bytes per compressed-chunk payload: large enough for fast reads, small enough to stream.
CHUNK_BYTES = 2 << 20

#: Patches are decoded JPEG, which no lossless codec shrinks much (LZ4 1.15x, bit-shuffled LZ4 1.3x,
#: zstd 1.35x on tissue), so speed decides: LZ4 costs 40% of the JPEG decode, zstd twice the decode.
PATCH_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle", typesize=1)

#: Largest block side (level pixels) worth making to align blocks with both cells and tiles.
MAX_ALIGNED_BLOCK = 8192

#: Patches per dask task at most asked for: fewer, larger tasks keep the scheduler's cost per patch small.
TASK_PATCHES = 64


class MagnificationUnavailable(InputError, ValueError):
    """A requested magnification finer than the slide's native resolution."""


class NoTissueError(InputError, ValueError):
    """A slide on which tissue detection keeps no patch."""


def require_magnification(path, info: SlideInfo, magnification: float, needed_by: str, choices: str) -> None:
    """Raise :class:`MagnificationUnavailable` naming the slide, its power, ``magnification`` and ``choices``
    when the slide's native objective power is below ``magnification`` (slides are never upsampled);
    ``needed_by`` says what reads it ("the Teacher", "the model")."""
    if magnification > info.objective_power * 1.001:
        raise MagnificationUnavailable(
            f"{path}: {needed_by} reads {magnification:g}x but the slide's native magnification is "
            f"{info.objective_power:g}x ({info.objective_power_source}); slides are never upsampled. {choices}")


def no_tissue_error(path, method: str, cell: int, min_tissue_fraction: float, choices: str,
                    fraction: np.ndarray | None = None) -> NoTissueError:
    """:class:`NoTissueError` naming the slide, the tissue method and threshold, and ``choices``; with the cells'
    tissue ``fraction``, a slide whose tissue lies only in cells under the threshold says how much the best holds."""
    most = float(np.max(fraction)) if fraction is not None and np.size(fraction) else 0.0
    if most > 0:
        return NoTissueError(f"{path}: too little tissue for a patch ({method}: the most covered {cell} px cell holds "
                             f"{most:.0%} tissue, under `extraction.min_tissue_fraction` {min_tissue_fraction:g}). "
                             f"{choices}")
    return NoTissueError(f"{path}: no tissue found ({method}, no {cell} px cell at least {min_tissue_fraction:g} "
                         f"tissue). {choices}")


#: The config's ``extraction`` keys with their defaults, declared once in the config schema.
EXTRACTION_DEFAULTS = section_defaults("extraction")


@dataclass(frozen=True)
class ExtractionSettings:
    """What shapes a patch store: the config's ``classes``, ``annotation_classes`` (``class_map``),
    ``magnifications``, ``teacher.magnification`` and its ``extraction`` section, whose keys and
    defaults come from the config schema (``EXTRACTION_DEFAULTS``)."""

    classes: tuple[str, ...]
    class_map: dict[str, str]
    magnifications: tuple[float, ...]
    teacher_magnification: float
    patch_size: int = EXTRACTION_DEFAULTS["patch_size"]
    min_tissue_fraction: float = EXTRACTION_DEFAULTS["min_tissue_fraction"]
    min_label_fraction: float = EXTRACTION_DEFAULTS["min_label_fraction"]
    tissue_method: str = EXTRACTION_DEFAULTS["tissue_method"]
    on_missing_magnification: str = EXTRACTION_DEFAULTS["on_missing_magnification"]
    block_cells: int = EXTRACTION_DEFAULTS["block_cells"]
    thumbnail_max_side: int = 1024
    reuse_source_tiles: bool = EXTRACTION_DEFAULTS["reuse_source_tiles"]
    scheduler_address: str | None = None
    label_mask_classes: dict[int, str | None] = field(default_factory=lambda: dict(RADBOUD_CLASSES))
    #: label-mask values that are tissue context (stroma), graded by the glands they hold (context_labels)
    label_mask_context: tuple[int, ...] = tuple(config_default("label_mask_context"))
    #: epithelium share of a label-mask patch's labelled tissue from which its glands decide its label
    min_epithelium_fraction: float = EXTRACTION_DEFAULTS["min_epithelium_fraction"]
    #: who gets the area where annotations of different classes overlap (slides.annotations.OVERLAP_RULES)
    annotation_overlap: str = EXTRACTION_DEFAULTS["annotation_overlap"]
    extra_attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Block:
    """Store rows ``start:stop``: the patches whose level-0 top-left corners are ``corners``."""

    start: int
    stop: int
    corners: np.ndarray


@lru_cache(maxsize=8)
def open_slide(path: str, mpp: float | None, objective_power: float | None) -> Slide:
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


def _read_block(slide_key, level, block_corners, cell, sides, kept_as_tiles=None):
    """Read a run of blocks' patches once and derive every magnification from them.

    ``block_corners`` holds each block's level-0 top-left cell corners; a
    block is read in one call (the OpenSlide fallback reads its bounding
    region).  ``sides`` maps magnification name -> patch px there, finest
    first.  Each magnification is area-averaged from the one above it (2x
    steps for 40/20/10/5x): a quarter of the work of averaging each from the
    native pixels, at the price of rounding at each step, which leaves pixels
    within 1.5 grey levels of the exact area average (on average 0.2 brighter
    at 10x, 0.4 at 5x: OpenCV rounds halves up).

    The magnification named ``kept_as_tiles`` (the finest; see
    :func:`_source_tiles`) comes back as each patch's tile bytes, row by row,
    and its pixels are decoded from those bytes into a reused buffer only to
    derive the others: fresh buffers that size would cost page faults on
    every block.
    """
    slide = open_slide(*slide_key)
    downsample = slide.info.level_downsamples[level]
    native = round(cell / downsample)
    count = sum(map(len, block_corners))
    out, derived = {}, dict(sides)
    if kept_as_tiles is None:
        patches = np.empty((count, native, native, 3), np.uint8)
        start = 0
        for corners in block_corners:
            slide.read_rectangles(level, corners, native, out=patches[start : start + len(corners)])
            start += len(corners)
    else:
        tiles = slide.jpeg_tiles(level)
        tw, th = tiles.tile_width, tiles.tile_height
        grid = [(c, r) for r in range(native // th) for c in range(native // tw)]
        origins = np.round(np.concatenate(block_corners) / downsample).astype(np.int64) // (tw, th)
        out[kept_as_tiles] = [[tiles.tile_bytes(x + c, y + r) for c, r in grid] for x, y in origins]
        del derived[kept_as_tiles]
        if not derived:
            return out
        patches = _reused_buffer((count, native, native, 3))
        for target, (x, y), data in zip(patches, origins, out[kept_as_tiles]):
            for (c, r), tile in zip(grid, data):
                pixels = target[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
                if not tile:  # a tile the scanner left out: white, as the reader fills it
                    pixels[:] = tiles.fill
                elif len(grid) == 1:
                    tiles.decode(tile, x + c, y + r, out=pixels)
                else:
                    pixels[:] = tiles.decode(tile, x + c, y + r)
    for name, side in derived.items():
        patches = out[name] = downsample_patches(patches, side)
    return out


_thread_buffers = threading.local()


def _reused_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array of ``shape`` reusing this thread's buffer; valid until the thread's next call."""
    size = math.prod(shape)
    buffer = getattr(_thread_buffers, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _thread_buffers.buffer = np.empty(size, np.uint8)
    return buffer[:size].reshape(shape)


def _source_tiles(slide: Slide, level: int, cell: int, side: int) -> TiffTiles | None:
    """The level's JPEG tiles when every patch of ``side`` px read there is whole tiles, else None.

    Patches are then stored as those tiles' own bytes: patch corners are
    multiples of the cell, so tile-aligned when the side is a multiple of the
    tile's, and cells lie inside the image.
    """
    tiles = slide.jpeg_tiles(level)
    native = cell / slide.info.level_downsamples[level]
    if tiles is None or native != side or side % tiles.tile_width or side % tiles.tile_height:
        return None
    return tiles


def create_image_arrays(root: zarr.Group, count: int, sides: dict[str, int],
                        source_tiles: tuple[str, TiffTiles] | None = None) -> dict[str, zarr.Array]:
    """One ``{magnification}/images`` array of ``count`` patches per magnification, chunks of ~CHUNK_BYTES.

    The magnification named in ``source_tiles`` keeps that level's JPEG tiles
    as its chunks, in shards of about CHUNK_BYTES (JPEG taken as 8x smaller
    than pixels); empty tiles read back white, as the reader fills them.
    """
    images = {}
    for name, side in sides.items():
        layout = {"chunks": (int(np.clip(CHUNK_BYTES // (side * side * 3), 1, 4096)), side, side, 3),
                  "compressors": PATCH_CODEC}
        if source_tiles is not None and name == source_tiles[0]:
            tiles = source_tiles[1]
            tables, rgb = tiles.jpeg
            layout = {"chunks": (1, tiles.tile_height, tiles.tile_width, 3),
                      "shards": (int(np.clip(8 * CHUNK_BYTES // (side * side * 3), 1, 4096)), side, side, 3),
                      "serializer": SlideJpegCodec(tables=tables, rgb=rgb), "compressors": None, "fill_value": 255}
        images[name] = root.create_group(name).create_array(
            store.IMAGES, shape=(count, side, side, 3), dtype="uint8", **layout,
            chunk_key_encoding={"name": "default", "separator": "."},  # c.7.0.0.0: one file, no folders per chunk
        )
    return images


def _plan_blocks(coords: np.ndarray, block_rc: np.ndarray) -> list[Block]:
    """One Block per run of equal ``block_rc`` (rows are sorted block by block)."""
    if not len(coords):
        return []
    boundaries = np.flatnonzero(np.any(np.diff(block_rc, axis=0) != 0, axis=1)) + 1
    return [Block(int(start), int(stop), coords[start:stop])
            for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, len(coords)])]


def plan_blocks(keep: np.ndarray, grid: PatchGrid, block_cells: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, list[Block]]:
    """Kept cells ordered block by block, so each block's patches are contiguous rows.

    ``keep`` holds row-major cell indices of ``grid``; ``block_cells`` is
    (columns, rows) per block (:func:`block_shape`).  Returns the reordered
    ``keep``, their level-0 top-left corners (N, 2) int64 and the blocks.
    """
    grid_rc = np.stack([keep % grid.columns, keep // grid.columns], axis=1)
    block_rc = grid_rc // block_cells
    order = np.lexsort((grid_rc[:, 0], grid_rc[:, 1], block_rc[:, 0], block_rc[:, 1]))
    keep, grid_rc, block_rc = keep[order], grid_rc[order], block_rc[order]
    coords = grid_rc.astype(np.int64) * grid.cell
    return keep, coords, _plan_blocks(coords, block_rc)


@dataclass(frozen=True)
class Tissue:
    """Where a slide's tissue is: the thumbnail, its mask and the grid cells kept."""

    thumbnail: np.ndarray  # (h, w, 3) uint8
    downsample: float  # level-0 pixels per thumbnail pixel
    mask: np.ndarray  # (h, w) bool, on the thumbnail
    fraction: np.ndarray  # (rows * columns,) tissue fraction of every grid cell, row-major
    keep: np.ndarray  # indices of the cells with at least the minimum fraction
    method: str  # the detection method, or "user mask"


def find_tissue(slide: Slide, grid: PatchGrid, method: str, min_tissue_fraction: float, thumbnail_max_side: int,
                tissue_mask: str | Path | None = None) -> Tissue:
    """Detect tissue on the thumbnail (or read ``tissue_mask``) and keep the cells covered enough.

    Shared by extraction and ``wsidistill predict``, so both see the same patches.
    """
    thumbnail, thumb_downsample = slide.thumbnail(thumbnail_max_side)
    if tissue_mask:
        user_mask, mask_downsample = read_tissue_mask(tissue_mask, slide.info.dimensions)
        fraction = grid.tissue_fraction(user_mask, mask_downsample)
        mask = cv2.resize(user_mask.astype(np.uint8), (thumbnail.shape[1], thumbnail.shape[0]),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
        method = "user mask"
    else:
        mask = detect_tissue(thumbnail, method)
        fraction = grid.tissue_fraction(mask, thumb_downsample)
    keep = np.flatnonzero(fraction >= min_tissue_fraction)
    return Tissue(thumbnail, thumb_downsample, mask, fraction, keep, method)


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
    require_labels: bool = False,
) -> dict:
    """Write ``out`` (a Zarr store) atomically and return the extraction summary.

    Labels come from ``annotations`` (QuPath GeoJSON) or ``label_mask`` (a
    PANDA-style mask TIFF); ``tissue_mask`` (nonzero = tissue, any scale)
    replaces tissue detection.  Every warning also lands in the summary.

    Before anything is written, a slide that cannot serve its role stops with one line naming it and the
    choices (issue 17, kind 7): :class:`MagnificationUnavailable` below the Teacher's magnification,
    :class:`NoTissueError` when no cell has ``min_tissue_fraction`` tissue, and, with ``require_labels``
    (a training slide), :class:`UnlabelledSlideError` when no patch is labelled.
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
    slide = open_slide(*slide_key)
    info = slide.info

    require_magnification(
        slide_path, info, settings.teacher_magnification, "the Teacher",
        "Give a scan at that magnification, correct the slide's `objective_power` / `mpp` in the sample sheet "
        "(--objective-power, --mpp) if its metadata is wrong, remove it from the sheet, or lower "
        "`teacher.magnification` and `magnifications` for the whole study.")
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

    for message in slide.warnings:
        note(message)
    cell = field_cell(settings.patch_size, settings.teacher_magnification, info.mpp, info.objective_power)
    grid = PatchGrid.for_slide(info.dimensions, cell)
    tissue = find_tissue(slide, grid, settings.tissue_method, settings.min_tissue_fraction,
                         settings.thumbnail_max_side, tissue_mask)
    thumbnail, thumb_downsample, stored_mask = tissue.thumbnail, tissue.downsample, tissue.mask
    tissue_fraction, keep, tissue_method = tissue.fraction, tissue.keep, tissue.method
    if not len(keep):
        raise no_tissue_error(
            slide_path, tissue_method, cell, settings.min_tissue_fraction,
            "Check the slide holds stained tissue; lower `extraction.min_tissue_fraction` (--min-tissue-fraction) or "
            "change `extraction.tissue_method`, give a tissue mask (`tissue_mask` sheet column, --tissue-mask), "
            "or remove the slide from the sample sheet.", tissue_fraction)
    timings["tissue_s"] = time.perf_counter() - started

    try:
        sides = {magnification_name(m): patch_pixels(settings.patch_size, m, settings.teacher_magnification)
                 for m in available}
    except GridError as err:
        raise GridError(f"{slide_path}: {err}") from None
    finest = max(available, default=info.objective_power)
    level = slide.best_level_for(cell * settings.teacher_magnification / (settings.patch_size * finest))
    level_downsample = info.level_downsamples[level]
    block_columns, block_rows = block_shape(cell, slide.tile_size(level), level_downsample, settings.block_cells)
    tiles = _source_tiles(slide, level, cell, sides[magnification_name(finest)]) \
        if available and settings.reuse_source_tiles else None
    kept_as_tiles = magnification_name(finest) if tiles is not None else None

    keep, coords, blocks = plan_blocks(keep, grid, (block_columns, block_rows))

    fractions = np.zeros((len(keep), len(settings.classes)))
    undecided, overlaps, context = None, {}, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if annotations:
            regions = read_annotations(annotations, settings.class_map, settings.classes, info.dimensions,
                                       overlap=settings.annotation_overlap)
            fractions = class_fractions(regions.regions, coords, cell)
            undecided = class_fractions({"undecided": regions.undecided}, coords, cell)[:, 0]
            touched = class_fractions(regions.overlaps, coords, cell) > 0
            overlaps = {pair: {"annotation_pairs": regions.overlap_pairs[pair], "patches": int(touched[:, k].sum()),
                               "undecided_patches": int((touched[:, k] & (undecided > 0)).sum())}
                        for k, pair in enumerate(regions.overlaps)}
        elif label_mask:
            fractions, context = label_mask_fractions(label_mask, settings.label_mask_classes, settings.classes,
                                                      coords, cell, info.dimensions, settings.label_mask_context)
    for warning in caught:
        note(str(warning.message))
    if context is not None:
        labels = context_labels(fractions, context, settings.min_label_fraction, settings.min_epithelium_fraction)
        lost = unlabelled_gland_classes(fractions, context, labels, settings.classes)
        if lost:
            shown = ", ".join(f"{name} glands in {count} patch(es)" for name, count in lost.items())
            note(f"{label_mask}: {shown}, but no patch labelled {' or '.join(lost)} (each under "
                 f"`extraction.min_epithelium_fraction` {settings.min_epithelium_fraction:g} of its tissue, or "
                 "out-voted by other glands): those classes are absent from this slide's labels. "
                 "Lower it (--min-epithelium-fraction) to label them")
    else:
        labels = majority_labels(fractions, settings.min_label_fraction, undecided)
        lost_to_overlaps = int(((labels < 0) & (undecided > 0)).sum()) if undecided is not None else 0
        if lost_to_overlaps:
            pairs = ", ".join(pair for pair, counts in overlaps.items() if counts["undecided_patches"])
            note(f"{annotations}: {lost_to_overlaps} patch(es) unlabelled (-1) where annotations of {pairs} overlap "
                 f"and the `{settings.annotation_overlap}` overlap rule gives that area to neither class. Redraw "
                 "them, or set `extraction.annotation_overlap` (--annotation-overlap)")
    if require_labels and not (labels >= 0).any():
        source = annotations or label_mask
        detail = (f"{source} labels none of its {len(keep)} tissue patches at `extraction.min_label_fraction` "
                  f"{settings.min_label_fraction:g}" if source else "no annotations or label mask given")
        raise UnlabelledSlideError(
            f"{slide_path}: a training slide with no labelled patch ({detail}). Annotate its tissue, move it to "
            "the test split (predicted, left out of the metrics), or drop it from the sample sheet.")
    timings["labels_s"] = time.perf_counter() - started - timings["tissue_s"]

    extract_started = time.perf_counter()
    # Metadata and the small arrays are built in memory and written in one pass: zarr-python's local
    # store hops to a thread for every file it checks or writes, 30 ms a slide.
    skeleton = {}
    root = zarr.open_group(MemoryStore(skeleton), mode="w", zarr_format=3)
    root.create_array(store.COORDS, data=coords)
    root.create_array(store.LABELS, data=labels)
    root.create_array(store.TISSUE_FRACTION, data=tissue_fraction[keep].astype(np.float32))
    root.create_array(store.CLASS_FRACTIONS, data=fractions.astype(np.float32))
    if context is not None:
        root.create_array(store.CONTEXT_FRACTIONS, data=context.astype(np.float32))
    for name, image in ((store.THUMBNAIL, thumbnail), (store.TISSUE_MASK, stored_mask)):  # read whole: one chunk
        root.create_array(name, data=image, chunks=image.shape, compressors=PATCH_CODEC)
    images = create_image_arrays(root, len(keep), sides, (kept_as_tiles, tiles) if tiles is not None else None)
    attributes = store.StoreAttributes(
        slide_id=slide_id,
        source_path=str(slide_path),
        annotations=str(annotations) if annotations else None,
        label_mask=str(label_mask) if label_mask else None,
        tissue_mask_source=str(tissue_mask) if tissue_mask else None,
        slide=info.to_dict(),
        mpp=info.mpp,
        mpp_source=info.mpp_source,
        objective_power=info.objective_power,
        objective_power_source=info.objective_power_source,
        classes=list(settings.classes),
        magnifications=[magnification_name(m) for m in available],
        skipped_magnifications=[magnification_name(m) for m in skipped],
        teacher_magnification=settings.teacher_magnification,
        patch_size=settings.patch_size,
        patch_sizes=sides,
        cell_level0=cell,
        grid={"columns": grid.columns, "rows": grid.rows},
        thumbnail_downsample=thumb_downsample,
        min_tissue_fraction=settings.min_tissue_fraction,
        min_label_fraction=settings.min_label_fraction,
        **({"label_mask_context": list(settings.label_mask_context),
            "min_epithelium_fraction": settings.min_epithelium_fraction} if label_mask else {}),
        tissue_method=tissue_method,
        read_level=level,
        block_cells=[block_columns, block_rows],
        source_tiles=kept_as_tiles,
        extra=settings.extra_attrs,
    )
    with atomic_path(out) as tmp:
        for key, buffer in skeleton.items():
            if key != ROOT_METADATA:
                (tmp / key).parent.mkdir(parents=True, exist_ok=True)
                (tmp / key).write_bytes(buffer.to_bytes())
        _write_blocks(images, tmp, blocks, slide_key, level, cell, sides, threads, settings.scheduler_address,
                      kept_as_tiles, progress=progress, desc=slide_id)
        # The root metadata last, with the record of every chunk file written: a store missing one is refused.
        # One metadata write, where attrs.update writes once per key.
        root.update_attributes(dataclasses.replace(attributes, chunk_files=chunk_files(tmp)).to_dict())
        (tmp / ROOT_METADATA).write_bytes(skeleton[ROOT_METADATA].to_bytes())
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
        "annotation_overlap": settings.annotation_overlap,
        "annotation_overlaps": overlaps,
        "magnifications": [magnification_name(m) for m in available],
        "skipped_magnifications": [magnification_name(m) for m in skipped],
        "pixel_reader": info.pixel_reader,
        "read_level": level,
        "block_cells": [block_columns, block_rows],
        "source_tiles": kept_as_tiles,
        "warnings": notes,
        "timings": timings,
        "patch_sets_per_second": len(keep) / timings["extract_s"] if timings["extract_s"] else None,
    }
    if summary_path:
        write_json(summary_path, summary)
    return summary


def _group_blocks(blocks: list[Block], patches: int) -> list[list[Block]]:
    """Consecutive blocks in runs of at least ``patches`` patches (the last may be short): one dask task each."""
    tasks, run = [], []
    for block in blocks:
        run.append(block)
        if block.stop - run[0].start >= patches:
            tasks.append(run)
            run = []
    return tasks + [run] if run else tasks


def stream_blocks(blocks, slide_key, level, cell, sides, threads, scheduler_address=None, kept_as_tiles=None):
    """Yield each dask task's patches (magnification name -> array, :func:`_read_block`) and its patch count, in order.

    Tasks are computed in windows of ``4 * threads`` (threads, or the
    distributed scheduler at ``scheduler_address``), so at most one window of
    patches is in memory besides what the caller keeps.  Shared by extraction
    and ``wsidistill predict``.
    """
    if not blocks:
        return
    window = max(4, 4 * threads)
    client = None
    if scheduler_address:
        from distributed import Client

        client = Client(scheduler_address)
    get = client.get if client is not None else partial(dask.threaded.get, num_workers=threads)
    name = f"read_block-{uuid.uuid4().hex}"  # one name per call: slides sharing a scheduler never share keys
    # smaller tasks on small slides, so that a window still has a task for every thread
    tasks = _group_blocks(blocks, min(TASK_PATCHES, blocks[-1].stop // window))
    try:
        for i in range(0, len(tasks), window):
            batch = tasks[i : i + window]
            graph = {(name, i + j): (_read_block, slide_key, level, [b.corners for b in task], cell, sides,
                                     kept_as_tiles)
                     for j, task in enumerate(batch)}
            for result, task in zip(get(graph, list(graph)), batch):
                yield result, task[-1].stop - task[0].start
    finally:
        if client is not None:
            client.close()


def _write_blocks(images, directory, blocks, slide_key, level, cell, sides, threads, scheduler_address, kept_as_tiles,
                  *, progress, desc):
    """Compute blocks in bounded windows of dask tasks and store their patches in order."""
    if not blocks or not images:
        return
    window = max(4, 4 * threads)
    with PatchWriter(images, directory, workers=threads) as writer, \
            tqdm(total=blocks[-1].stop, unit="patch", desc=f"extract {desc}", disable=not progress) as bar:
        for done, (result, count) in enumerate(stream_blocks(blocks, slide_key, level, cell, sides, threads,
                                                             scheduler_address, kept_as_tiles), start=1):
            writer.append(result)
            bar.update(count)
            if done % window == 0:
                writer.flush()
