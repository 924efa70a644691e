"""The patch store's layout, declared once: array and group names, root attributes, completeness record.

One Zarr v3 store per slide, ``{slide}.zarr``, written by extraction
(:func:`~wsidistill.patches.extract.extract_slide`) or the SICAPv2 import
(:mod:`~wsidistill.patches.sicapv2`)::

    coords (N, 2) int64        level-0 (x, y) of each patch's top-left corner
    labels (N,) int8           majority class, -1 when unlabelled
    tissue_fraction (N,) f4
    class_fractions (N, C) f4  annotated area of each class in the patch
    context_fractions (N, C) f4  label masks only: the part of class_fractions from context values (stroma)
    thumbnail (h, w, 3) u1     thumbnail_downsample level-0 px per thumbnail px
    tissue_mask (h, w) bool
    40x/images (N, P, P, 3) u1 one group per magnification, P = patch px there
    ...
    attributes                 :class:`StoreAttributes`

A prediction store (``wsidistill predict``) holds probabilities (N, C) f4, coords, thumbnail and
tissue_mask, with :class:`PredictionAttributes`; an evaluation's predictions hold one group per
slide with probabilities, coords and labels.

Every writer builds a :class:`StoreAttributes` and every reader gets one from
:func:`read_attributes`: the attribute names appear nowhere else.

Completeness: the last write of a store is its root attributes, with
:data:`CHUNK_FILES`, the number of chunk files of each array
(:func:`~wsidistill.patches.zarr_io.chunk_files`).  A copy, sync or partial
restore that lost chunk files would otherwise read them as fill values (black
or white patches, zero features); :func:`check_complete` compares the record
with one directory listing and refuses the store.  Stores written before the
record existed have none and are read as they are (accepted without a check).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr

from .. import __version__
from ..errors import InputError
from .zarr_io import chunk_files

COORDS = "coords"
LABELS = "labels"
TISSUE_FRACTION = "tissue_fraction"
CLASS_FRACTIONS = "class_fractions"
#: Label-mask stores: the part of each class fraction from ``label_mask_context`` values (slides.annotations.context_labels).
CONTEXT_FRACTIONS = "context_fractions"
THUMBNAIL = "thumbnail"
TISSUE_MASK = "tissue_mask"
#: The array in each magnification's group (``{name}/images``).
IMAGES = "images"
#: A model's class probabilities (N, C) float32 per patch: in a prediction store and in each slide's group
#: of an evaluation's predictions (``wsidistill evaluate``).
PROBABILITIES = "probabilities"
#: Root attribute recording ``{array path: chunk files}``, written last (stores and Teacher caches).
CHUNK_FILES = "chunk_files"

#: ``source`` of stores imported from SICAPv2.
SICAPV2 = "SICAPv2"
#: What to run again for an incomplete or damaged patch store.
REEXTRACT = "delete it and extract the slide again (`wsidistill extract`, or Snakemake rule extract)"
REIMPORT = "delete it and import the slide again (`wsidistill import-sicapv2`, or Snakemake rule import_sicapv2)"


class _Unset:
    """An attribute its writer does not record (left out of the store, not written as null)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _geometry(**kwargs):
    """A field of the patch grid's geometry (:meth:`_Attributes.geometry`)."""
    return field(metadata={"geometry": True}, **kwargs)


class _Attributes:
    """Reading and writing a store's root attributes from a dataclass of them, in field order."""

    extra: dict
    chunk_files: dict[str, int] | None

    def to_dict(self) -> dict:
        """The attributes as written to the store (``UNSET`` left out, ``extra`` spliced in)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", CHUNK_FILES) and getattr(self, f.name) is not UNSET}
        out.update(self.extra)
        if self.chunk_files is not None:
            out[CHUNK_FILES] = self.chunk_files
        return out

    @classmethod
    def from_dict(cls, attributes: dict):
        """Attributes as read from a store; any the store lacks are :data:`UNSET` (``chunk_files`` None)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", CHUNK_FILES)]
        return cls(**{name: attributes.get(name, UNSET) for name in names}, chunk_files=attributes.get(CHUNK_FILES),
                   extra={k: v for k, v in attributes.items() if k not in names and k != CHUNK_FILES})

    def geometry(self) -> dict:
        """The patch grid's attributes (cell side, columns and rows): what placing patches on the slide needs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("geometry")}


@dataclass(frozen=True, kw_only=True)
class StoreAttributes(_Attributes):
    """Root attributes of a patch store, in the order they are written.

    Lengths are level-0 pixels; magnifications are names such as ``"40x"``.
    Attributes only one writer records default to :data:`UNSET` and are then
    left out.  ``extra`` holds any other attributes (``ExtractionSettings.extra_attrs``),
    written after these; ``chunk_files`` is the completeness record.
    """

    slide_id: str
    patient_id: str = UNSET  # SICAPv2
    split: str = UNSET  # SICAPv2: train, val or test
    source_path: str
    source: str = UNSET  # SICAPv2
    coords_unit: str = UNSET  # SICAPv2
    annotations: str | None = UNSET  # extraction: GeoJSON path or None
    label_mask: str | None = UNSET  # extraction: label-mask TIFF path or None
    tissue_mask_source: str | None = UNSET  # extraction: user tissue mask path or None
    slide: dict = UNSET  # extraction: SlideInfo.to_dict()
    mpp: float
    mpp_source: str
    objective_power: float
    objective_power_source: str
    classes: list[str]
    magnifications: list[str]
    skipped_magnifications: list[str]
    teacher_magnification: float
    patch_size: int
    patch_sizes: dict[str, int]
    cell_level0: int = _geometry()  # side of a grid cell (a patch at the Teacher's magnification)
    grid: dict[str, int] = _geometry()  # {"columns": ..., "rows": ...} of cell_level0 cells
    thumbnail_downsample: float
    min_tissue_fraction: float = UNSET  # extraction
    min_label_fraction: float
    label_mask_context: list[int] = UNSET  # extraction from a label mask: its context values
    min_epithelium_fraction: float = UNSET  # extraction from a label mask
    tissue_method: str
    read_level: int = UNSET  # extraction
    block_cells: list[int] = UNSET  # extraction: [columns, rows]
    source_tiles: str | None = UNSET  # extraction: magnification kept as the slide's JPEG tiles
    wsidistill_version: str = __version__
    extra: dict = field(default_factory=dict)
    chunk_files: dict[str, int] | None = None

    @property
    def rerun(self) -> str:
        """What to run again to rewrite this store."""
        return REIMPORT if self.source == SICAPV2 else REEXTRACT


@dataclass(frozen=True, kw_only=True)
class PredictionAttributes(_Attributes):
    """Root attributes of a prediction store (``wsidistill predict``'s ``{slide_id}.zarr``), in write order.

    Its arrays are :data:`PROBABILITIES`, :data:`COORDS`, :data:`THUMBNAIL` and :data:`TISSUE_MASK`, and
    the attributes a heatmap reads carry a patch store's names (``slide_id``, ``classes``,
    ``cell_level0``, ``grid``, ``thumbnail_downsample``, ``tissue_method``), so both kinds of store
    are drawn by one reader (:func:`read_attributes`). Lengths are level-0 pixels; ``mpp`` is the
    microns per pixel the model read (at ``magnification``), ``slide_mpp`` the slide's level 0.
    """

    slide_id: str
    source_path: str
    model: str  # checkpoint path
    model_arch: str
    method: str
    seed: int
    classes: list[str]
    magnification: float  # the model's input magnification
    model_magnification: float
    mpp: float
    slide_mpp: float
    objective_power: float
    objective_power_source: str
    slide: dict  # SlideInfo.to_dict()
    patch_side: int  # px read per patch
    cell_level0: int = _geometry()
    grid: dict[str, int] = _geometry()
    read_level: int
    thumbnail_downsample: float
    tissue_method: str
    wsidistill_version: str = __version__
    extra: dict = field(default_factory=dict)
    chunk_files: dict[str, int] | None = None


def images_path(magnification_name: str) -> str:
    """Path of a magnification's patch array in the store, e.g. ``40x/images``."""
    return f"{magnification_name}/{IMAGES}"


def read_attributes(store: zarr.Group) -> StoreAttributes:
    return StoreAttributes.from_dict(dict(store.attrs))


class IncompleteStoreError(InputError, ValueError):
    """A store whose chunk files are not those its completeness record lists."""


def check_complete(path: str | Path, recorded: dict[str, int] | None, what: str, rerun: str) -> None:
    """IncompleteStoreError naming ``path``, the first short array and ``rerun`` when files are missing.

    ``recorded`` None (a store written before the record existed): accepted without a check.
    """
    if recorded is None:
        return
    found = chunk_files(path)
    wrong = [(array, found.get(array, 0), count) for array, count in recorded.items() if found.get(array, 0) != count]
    if wrong:
        array, have, want = wrong[0]
        more = f" (and {len(wrong) - 1} more arrays)" if len(wrong) > 1 else ""
        raise IncompleteStoreError(f"{path}: incomplete {what}: {array or 'the array'} has {have} of its {want} chunk "
                                   f"files{more}; {rerun}")


def open_store(path: str | Path) -> zarr.Group:
    """The patch store at ``path``, read-only, after checking it holds every chunk file it was written with."""
    store = zarr.open_group(str(path), mode="r")
    attributes = read_attributes(store)
    check_complete(path, attributes.chunk_files, "patch store", attributes.rerun)
    return store
