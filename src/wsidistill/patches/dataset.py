"""Reading patch stores back for training, evaluation and inference."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore

from ..errors import InputError
from ..slides.grid import magnification_name
from . import store
from .jpeg import source_tile_codec
from .store import open_store
from .zarr_io import ChunkFiles, read_source_tiles

#: Decoded image chunks a :class:`StorePatches` keeps per process (least recently used dropped first): a
#: Blosc chunk of ~2 MB holds ~170 patches at 10x, so a batch of random rows would otherwise decode each
#: store's chunk again (benchmarks/stream_step.py: 23 ms a batch of 32 at 10x through zarr's ``oindex``).
BLOCK_CACHE_BYTES = 64 << 20

__all__ = ["BatchSources", "MemoryPatches", "PatchSet", "StorePatches", "batch_loader", "load_patches", "open_store",
           "read_images", "to_tensor"]


class MissingMagnification(InputError, KeyError):
    """A store without the patches a model reads: its slide's native magnification is below them."""

    @classmethod
    def of(cls, path, name: str, attributes: store.StoreAttributes) -> MissingMagnification:
        return cls(f"{path}: no {name} patches: slide {attributes.slide_id} is {attributes.objective_power:g}x "
                   f"({attributes.objective_power_source}) and extraction skipped {attributes.skipped_magnifications}. "
                   "Remove the slide from the sample sheet, correct its `objective_power` / `mpp`, or lower "
                   "`teacher.magnification` and `magnifications` for the whole study")

    def __str__(self) -> str:  # KeyError's repr-quoting would wrap the one line in quotes
        return str(self.args[0])


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
                raise MissingMagnification.of(path, name, attributes)
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


def to_tensor(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1], channels_last because the source is NHWC.

    The uint8 bytes travel to the device (from pinned memory, asynchronously, on CUDA) and are
    converted there: a quarter of the bytes of a float copy.
    """
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if torch.device(device).type == "cuda":
        tensor = (tensor if tensor.is_pinned() else tensor.pin_memory()).to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float().div_(255)



# --- batches for training: streamed from the stores, or from memory -----------------------------------------------

class _Batches(torch.utils.data.Dataset):
    """``dataset[rows]`` is one batch: ``{"rows", "labels", "images": {name: uint8 NHWC}}`` as tensors."""

    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, rows: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def open(self) -> None:
        """Open what reading needs, before the first batch (a loader worker calls it as it starts)."""

    def batch(self, rows, names: Sequence[str] | None = None) -> dict:
        """The batch of ``rows`` (ascending), with the images of ``names`` only (default: every magnification)."""
        rows = np.asarray(rows, dtype=np.int64)
        return {"rows": torch.from_numpy(rows), "labels": torch.from_numpy(self.labels[rows]),
                "images": {name: torch.from_numpy(images) for name, images in self.read(rows, names).items()}}

    def __getitem__(self, rows) -> dict:
        return self.batch(rows)


class StorePatches(_Batches):
    """Patches of ``stores`` at ``magnifications``, read a batch at a time straight from the stores.

    Rows are those of :func:`load_patches` (labelled patches, or every patch, in store order), so row
    ``i`` here is row ``i`` of the in-memory :class:`PatchSet`.  ``dataset[rows]`` (``rows``: ascending
    int indices) returns one batch, ``{"rows": (B,) int64, "labels": (B,) int64, "images": {name: (B, P,
    P, 3) uint8}}``: kept JPEG tiles are decoded in the process that reads (a DataLoader worker), only
    for those rows (:func:`~wsidistill.patches.zarr_io.read_source_tiles`); Blosc arrays read the chunks
    holding them.  Only labels and row indices stay in memory (a few bytes a patch).  Each store is
    checked for completeness once, here (:func:`open_store`).  Picklable: each worker opens the stores
    itself.
    """

    def __init__(self, stores: Sequence[str | Path], magnifications: Sequence[float], *,
                 labelled_only: bool = True) -> None:
        self.stores = [str(path) for path in stores]
        self.magnifications, self.labelled_only = list(magnifications), labelled_only
        self.names = [magnification_name(m) for m in magnifications]
        rows, labels, slide_index, self.slide_ids, self.shapes = [], [], [], [], {}
        for index, path in enumerate(self.stores):
            root = open_store(path)
            attributes = store.read_attributes(root)
            slide_labels = root[store.LABELS][:]
            selected = np.flatnonzero(slide_labels >= 0) if labelled_only else np.arange(len(slide_labels))
            for name in self.names:
                if name not in root:
                    raise MissingMagnification.of(path, name, attributes)
                self.shapes.setdefault(name, tuple(root[store.images_path(name)].shape[1:]))
            self.slide_ids.append(attributes.slide_id)
            rows.append(selected)
            labels.append(slide_labels[selected])
            slide_index.append(np.full(len(selected), index))
        self.local_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self.slide_index = np.concatenate(slide_index) if slide_index else np.zeros(0, np.int64)
        self._arrays: dict | None = None
        self._blocks: OrderedDict = OrderedDict()  # (slide, name, chunk) -> decoded chunk, this process's
        self._block_files: dict = {}

    @property
    def nbytes(self) -> int:
        """Bytes of uint8 pixels :meth:`load` would hold in memory (every magnification)."""
        return sum(len(self) * int(np.prod(shape)) for shape in self.shapes.values())

    def __getstate__(self) -> dict:
        # zarr handles and decoded chunks are per process: each worker opens and decodes its own
        return {**self.__dict__, "_arrays": None, "_blocks": OrderedDict(), "_block_files": {}}

    def open(self) -> None:
        """Open every store's arrays and chunk files (no pixels read): a worker's first batch then only reads."""
        for index in range(len(self.stores)):
            for name in self.names:
                array = self._array(index, name)
                if source_tile_codec(array) is None:
                    self._files(index, name, array)

    def _array(self, index: int, name: str) -> zarr.Array:
        if self._arrays is None:
            self._arrays = {}
        key = (index, name)
        if key not in self._arrays:
            self._arrays[key] = zarr.open_group(self.stores[index], mode="r")[store.images_path(name)]
        return self._arrays[key]

    def read(self, rows: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Images ``{name: (len(rows), P, P, 3) uint8}`` of ascending ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        names = self.names if names is None else names
        out = {name: np.empty((len(rows), *self.shapes[name]), np.uint8) for name in names}
        slides = self.slide_index[rows]
        for slide in np.unique(slides):
            where = np.flatnonzero(slides == slide)
            local = self.local_rows[rows[where]]
            for name in names:
                array = self._array(int(slide), name)
                if source_tile_codec(array) is not None and isinstance(array.store_path.store, LocalStore):
                    out[name][where] = read_source_tiles(array, local)
                elif (files := self._files(int(slide), name, array)) is not None:
                    out[name][where] = self._cached_rows(int(slide), name, files, local)
                else:
                    out[name][where] = array.oindex[local]
        return out

    def _files(self, slide: int, name: str, array: zarr.Array) -> ChunkFiles | None:
        """A direct chunk-file reader of a local, unsharded, row-chunked (r, P, P, 3) array, else None (zarr reads)."""
        key = (slide, name)
        if key not in self._block_files:
            files = None
            if isinstance(array.store_path.store, LocalStore) and tuple(array.chunks[1:]) == tuple(array.shape[1:]):
                try:
                    files = ChunkFiles(array, Path(self.stores[slide]) / store.images_path(name))
                except NotImplementedError:
                    pass
            self._block_files[key] = files
        return self._block_files[key]

    def _cached_rows(self, slide: int, name: str, files: ChunkFiles, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` of one store's array, each chunk decoded once and kept (up to BLOCK_CACHE_BYTES)."""
        size = files.chunk_shape[0]
        out = np.empty((len(local), *files.shape[1:]), files.dtype)
        for index in np.unique(local // size):
            key = (slide, name, int(index))
            block = self._blocks.pop(key, None)
            if block is None:
                block = files.block((int(index),))
            self._blocks[key] = block  # most recently used last
            where = np.flatnonzero(local // size == index)
            out[where] = block[local[where] - index * size]
        while sum(b.nbytes for b in self._blocks.values()) > BLOCK_CACHE_BYTES and len(self._blocks) > 1:
            self._blocks.popitem(last=False)
        return out

    def load(self) -> MemoryPatches:
        """Every row read into memory (:func:`load_patches`), served batch by batch as this dataset is."""
        return MemoryPatches(load_patches(self.stores, self.magnifications, labelled_only=self.labelled_only))


class MemoryPatches(_Batches):
    """A :class:`PatchSet` in memory served as :class:`StorePatches` serves its stores: ``dataset[rows]``
    gives the same batch dict."""

    def __init__(self, patches: PatchSet) -> None:
        self.patches = patches
        self.labels, self.slide_index, self.slide_ids = patches.labels, patches.slide_index, patches.slide_ids
        self.names = list(patches.images)
        self.shapes = {name: tuple(images.shape[1:]) for name, images in patches.images.items()}

    def read(self, rows: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return {name: self.patches.images[name][rows] for name in (self.names if names is None else names)}


class BatchSources(torch.utils.data.Dataset):
    """Several datasets behind one loader: ``sources[(key, rows, names)]`` is ``datasets[key].batch(rows, names)``.

    One set of persistent loader workers then serves a training run's every read (its epochs, the precise-BN
    pass, validation) instead of starting new worker processes for each pass (benchmarks/stream_step.py).
    """

    def __init__(self, **datasets: _Batches) -> None:
        self.datasets = datasets

    def __getitem__(self, item: tuple) -> dict:
        key, rows, names = item
        return self.datasets[key].batch(rows, names)

    def open(self) -> None:
        for dataset in self.datasets.values():
            dataset.open()


def _open_worker_dataset(_worker: int) -> None:
    torch.utils.data.get_worker_info().dataset.open()


def batch_loader(dataset: _Batches | BatchSources, batches, *, workers: int = 0, pin_memory: bool = False,
                 persistent: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``dataset[item]`` for each item of ``batches`` (any iterable read in order: a list,
    or a sampler whose batches change per epoch); an item is an ascending row array for a dataset, a ``(key,
    rows, names)`` triple for :class:`BatchSources`.

    ``workers`` > 0 reads and decodes in that many worker processes, two batches ahead each, each opening the
    stores as it starts (:meth:`StorePatches.open`); ``pin_memory`` (on CUDA) puts each batch in page-locked
    memory for an asynchronous copy to the GPU.
    """
    return torch.utils.data.DataLoader(dataset, sampler=batches, batch_size=None, num_workers=workers,
                                       pin_memory=pin_memory, persistent_workers=persistent and workers > 0,
                                       worker_init_fn=_open_worker_dataset if workers else None)
