"""Teacher-target cache: the frozen Teacher's targets for every training patch under every D4 element,
pooled to the grids its Students read.

The Teacher is frozen, so what the distillation terms need from it (:func:`teacher_targets`: logits,
last-block features, attention maps) is a fixed function of the patch. The cache runs the Teacher
once on each of the eight D4 transforms (:func:`d4_transform`, elements ``0..7``) of each training
patch and stores the result, so a Student trained with per-sample D4 augmentation reads exactly the
targets an on-the-fly Teacher forward pass would give (no equivariance of the Teacher is assumed:
transforming element 0's maps would be an approximation, the cache is not). One cache per Teacher serves every
configured Student method and magnification distilled from it.

What is stored is what the Students read. Every loss pools the Teacher's target to the Student's grid
(area average, :func:`~wsidistill.distill.attention.align_map`) and only then normalises it
(:mod:`wsidistill.distill.losses`), so a spatial target is stored already pooled to the coarsest grid that
every Student's grid divides (:func:`stored_size`: the finest Student's, for power-of-two grids; the
Teacher's own grid when none fits): each Student's loss then pools it the rest of the way, and an area
average of area averages over whole blocks is the area average (exact up to float32 rounding, ~1e-7).
At 256 px at 40x, Students at 20/10/5x read 16/8/4-cell grids: the 32 x 32 Teacher features are stored on
16 x 16, a quarter of the cells.  ``float16`` (the default) halves the rest; it rounds every target to a
relative 2^-11 (4.9e-4) and the losses computed from it agree with the on-the-fly Teacher's within a
relative 2e-3 (measured: tests/training/test_teacher_cache.py; docs/performance.md gives bytes per
patch before and after).  A Student whose grid does not divide the stored one is refused
(:meth:`TeacherCache.check`).

AT+ maps are not stored when the features are and the Teacher's last block is non-negative (it ends with a
ReLU: smallcnn, ResNet; :attr:`~wsidistill.models.base.FeatureClassifier.nonnegative_features`). With the
closed-form Grad-CAM weights ``a_k^c = W[c, k] / (H W)`` (GAP + linear head, (H, W) the Teacher's grid) the
map is ``M^c = sum_k ReLU(a_k^c A_k) = sum_k ReLU(W[c, k]) / (H W) A_k`` for ``A >= 0``: linear in ``A``, so
the pooled map is that sum over the pooled features. The reader derives it from them with the stored
``(C, K)`` weights ``ReLU(W) / (H W)`` (``atplus_weights``), and a build stops if a feature is negative.
VGG16's signed last block keeps its stored maps.

Layout of ``{cache}.zarr`` (Zarr v3)::

    {key} (8, N, ...)   one array per target key in use (``logits`` (C,), ``features`` (K, H, W),
                        ``atplus`` (C, H, W) unless derived, ...; see :func:`teacher_targets`), spatial ones on the
                        grid ``attrs["sides"][key]`` (pooled, see above); axis 0 is the D4
                        element, axis 1 the row of the training PatchSet (``load_patches`` of the
                        same stores, labelled patches, in store order); chunks ``(1, r, ...)`` with
                        ``r`` rows of about ``CHUNK_BYTES`` (one row for 128 px smallcnn features),
                        Blosc-LZ4 compressed; float32 (exact) or float16
    atplus_weights      (C, K) float32 ``ReLU(W) / (H W)``, when ``atplus`` is derived from ``features``
    attrs               format, version, keys, terms, teacher_options, dtype, derived, sides and teacher_sides
                        (stored and Teacher grid per spatial key), students (each one's grids),
                        teacher (path, sha256, arch, magnification), stores (path, slide_id, rows
                        per store), fingerprint,
                        chunk_files (files per array, written last; a cache missing one is refused, as
                        are patch stores: :mod:`wsidistill.patches.store`)

The fingerprint covers, per store and in order, the slide id, the selected rows' labels and
coordinates, the shape of the Teacher-magnification images and a content sample of them; with the
Teacher checkpoint's SHA-256 it lets :meth:`TeacherCache.open` refuse a stale cache.
"""

from __future__ import annotations

import errno
import hashlib
import math
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import Tensor

from ..config import section_defaults
from ..device import InferenceSettings
from ..distill.attention import align_map
from ..distill.d4 import d4_transform
from ..distill.targets import teacher_targets
from ..distill.terms import TEACHER_DEFAULTS, TERMS, check_terms, target_keys
from ..errors import InputError
from ..patches import store as patch_store
from ..patches.zarr_io import ChunkFiles, RowChunkWriter, chunk_files

#: The config's ``training`` defaults (``loader_workers``), declared once in the config schema.
TRAINING_DEFAULTS = section_defaults("training")
CACHE_FORMAT = "wsidistill-teacher-cache"
#: Version 2: spatial targets pooled to the Students' grids, float16 by default.
CACHE_VERSION = 2
D4_ELEMENTS = 8
#: Target bytes per chunk: one row of smallcnn features (256 x 16 x 16 float32) per chunk, so a batch
#: reads only its own rows; small arrays get many rows per chunk.
CHUNK_BYTES = 256 << 10
#: Served arrays are read into memory when the cache is opened, smallest first, while their total stays
#: under this (the demo's features: 2 MiB a patch, 3.3 GB for 1,550 patches, fit); the others are read
#: per batch from their chunk files, ~10% slower a step (docs/performance.md).
DEFAULT_MEMORY_BYTES = 4 << 30
#: Chunks zarr decodes per batch of its codec pipeline: one batch's rows at once, not one by one.
_READ_CONFIG = {"codec_pipeline.batch_size": 64}
#: LZ4 with byte shuffle: on trained smallcnn features (~70% zeros) 0.38 of the raw size, decoded at
#: ~0.1 ms a 256 KiB row (zstd: 0.28, ~0.25 ms), so a batch's reads stay small beside its step.
COMPRESSOR = {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}}
DTYPES = ("float32", "float16")
#: Targets matched on the Student's input grid; the other spatial ones are matched on its last block's grid.
INPUT_GRID_KEYS = ("saliency",)
#: The array of a cache's (C, K) AT+ channel weights ``ReLU(W) / (H W)``, when its AT+ maps are derived.
ATPLUS_WEIGHTS = "atplus_weights"
REBUILD = "delete it and rebuild it (`wsidistill teacher-cache`, or Snakemake rule teacher_cache)"


class StaleCacheError(InputError, ValueError):
    """A Teacher-target cache that does not match the stores, Teacher or terms of a training run."""


def teacher_options_with_defaults(options: dict | None) -> dict:
    """The :func:`teacher_targets` options, defaults filled in (``at_p`` 2), for comparison."""
    return {name: float((options or {}).get(name, default)) for name, default in TEACHER_DEFAULTS.items()}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_stores(stores: Sequence[str | Path], magnification_name: str) -> list[dict]:
    """Per store: path, slide id, labelled rows and a digest of what fixes the rows and their pixels.

    Rows are selected as :func:`~wsidistill.patches.dataset.load_patches` does (labelled only).
    The digest covers the slide id, the rows' labels and coordinates, the shape of the images at
    ``magnification_name`` and the pixels of the first and last selected rows (one or two chunk
    reads): cheap enough to check every time a Student starts.
    """
    entries = []
    for path in stores:
        root = patch_store.open_store(path)
        slide_id = str(patch_store.read_attributes(root).slide_id)
        labels = root[patch_store.LABELS][:]
        rows = np.flatnonzero(labels >= 0)
        if magnification_name not in root:
            raise KeyError(f"{path}: no {magnification_name} patches")
        images = root[patch_store.images_path(magnification_name)]
        digest = hashlib.sha256()
        digest.update(slide_id.encode())
        digest.update(np.ascontiguousarray(labels[rows]).tobytes())
        digest.update(np.ascontiguousarray(root[patch_store.COORDS][:][rows]).tobytes())
        digest.update(repr((tuple(images.shape), str(images.dtype))).encode())
        for row in dict.fromkeys(rows[[0, -1]].tolist() if len(rows) else []):
            digest.update(np.ascontiguousarray(images[row]).tobytes())
        entries.append({"path": str(path), "slide_id": slide_id, "rows": int(len(rows)),
                        "digest": digest.hexdigest()})
    return entries


def fingerprint(entries: list[dict]) -> str:
    return hashlib.sha256("\n".join(f"{e['slide_id']}:{e['rows']}:{e['digest']}" for e in entries).encode()).hexdigest()


def stored_size(key: str, teacher_size: Sequence[int], students: Sequence[Mapping]) -> tuple[int, int]:
    """The ``(H, W)`` grid spatial target ``key`` is stored on, given its ``teacher_size`` on the Teacher's grid.

    ``students``: each Student's grids, ``{"grid": (H, W), "input": (H, W)}`` (last block and input,
    :func:`~wsidistill.models.checkpoint.student_reads`); ``saliency`` is read on the input grid, the others
    on the last block's. The coarsest grid every Student's grid divides (per axis, their least common
    multiple) when it divides the Teacher's, so that pooling to it and then to any Student's grid is
    exact area pooling; else (no Students, or a Student grid that does not divide) the Teacher's own.
    """
    teacher_size = tuple(int(n) for n in teacher_size)
    if not students:
        return teacher_size
    kind = "input" if key in INPUT_GRID_KEYS else "grid"
    size = tuple(math.lcm(*(int(student[kind][axis]) for student in students)) for axis in range(2))
    return size if all(t % n == 0 for t, n in zip(teacher_size, size)) else teacher_size


def _chunk_rows(row_bytes: int, n_rows: int) -> int:
    """Rows per chunk: a power of two near ``CHUNK_BYTES`` of data, at least one row."""
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    return int(min(1 << (rows.bit_length() - 1), max(1, n_rows)))


def build_teacher_cache(
    teacher_path: str | Path,
    stores: Sequence[str | Path],
    out: str | Path,
    terms: Iterable[str],
    *,
    teacher_options: dict | None = None,
    students: Sequence[Mapping] = (),
    dtype: str = "float16",
    settings: InferenceSettings = InferenceSettings(device="cpu", precision="fp32"),
    loader_workers: int = TRAINING_DEFAULTS["loader_workers"],
) -> dict:
    """Run the Teacher on the 8 D4 transforms of every training patch of ``stores``; write ``out``.

    ``terms``: the union of the terms of every method that will read the cache (``ce`` needs
    nothing). ``teacher_options`` as ``Distiller.teacher_options`` (``at_p``). ``students``: the Students
    that will read it, each as the keyword arguments of :func:`~wsidistill.models.checkpoint.student_reads`
    but ``side`` (``arch``, ``magnification``, optional ``grid`` and ``upsampled``); spatial targets are
    stored pooled to their grids (:func:`stored_size`); none: on the Teacher's grid. ``dtype`` float16
    (default) rounds the targets to a relative 4.9e-4 and halves the size; float32 keeps them as the
    Teacher gives them. A target outside float16's range stops the build (ValueError naming the key).
    The uncompressed size is checked against the free disk space after the first batch (OSError ENOSPC).
    ``settings``: batch size, device (default CPU, fp32), threads, progress bars. Patches are streamed
    from the stores in batches (``loader_workers`` processes read and decode them, as the config's
    ``training.loader_workers``) and each batch's eight D4 transforms are written before the next is
    read, so memory holds a few batches, whatever the cohort. Written atomically. Returns a summary
    (rows, keys, bytes, seconds).
    """
    from tqdm import tqdm

    from ..io import atomic_path
    from ..models.checkpoint import load_model, student_reads
    from ..patches.dataset import StorePatches, batch_loader, to_tensor
    from ..slides.grid import magnification_name

    if dtype not in DTYPES:
        raise ValueError(f"cache dtype must be one of {list(DTYPES)}, got {dtype!r}")
    terms = tuple(dict.fromkeys(check_terms(terms)))
    keys = target_keys(terms)
    if not keys:
        raise ValueError(f"terms {list(terms)} read no Teacher target: nothing to cache")
    teacher_options = teacher_options_with_defaults(teacher_options)
    runtime = settings.runtime()
    batch_size, progress = settings.batch_size, settings.progress
    started = time.perf_counter()
    teacher, meta = load_model(teacher_path, runtime)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    name = magnification_name(meta.magnification)
    entries = describe_stores(stores, name)
    patches = StorePatches(stores, [meta.magnification])
    n_rows = len(patches)
    if n_rows == 0:
        raise ValueError(f"no labelled training patches in {list(map(str, stores))}")
    teacher_side = int(patches.shapes[name][0])
    students = [student_reads(side=int(round(teacher_side * s["magnification"] / meta.magnification)),
                              teacher_magnification=meta.magnification, teacher_stride=teacher.output_stride,
                              **s)[1] for s in students]
    sizes: dict[str, tuple[int, int]] = {}  # per spatial key: (Teacher's grid, stored grid)
    # AT+ maps linear in non-negative features: derived from the stored pooled features when read (module doc)
    derived = ({"atplus": {"from": "features", "weights": ATPLUS_WEIGHTS}}
               if {"atplus", "features"} <= set(keys) and getattr(teacher, "nonnegative_features", False) else {})

    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arrays: dict[str, zarr.Array] = {}
        writers: dict[tuple[str, int], RowChunkWriter] = {}  # one per (key, D4 element): each holds < one chunk
        disk_checked = False
        batches = [np.arange(start, min(start + batch_size, n_rows)) for start in range(0, n_rows, batch_size)]
        loader = batch_loader(patches, batches, workers=min(loader_workers, len(batches)), pin_memory=runtime.is_cuda)
        for batch in tqdm(loader, total=len(batches), desc="teacher cache", disable=not progress, leave=False):
            images = to_tensor(batch["images"][name], runtime.device)
            for k in range(D4_ELEMENTS):
                with runtime.autocast():
                    targets = teacher_targets(teacher, d4_transform(images, k), terms, **teacher_options)
                if derived and bool((targets["features"] < 0).any()):
                    raise RuntimeError(f"{meta.arch} declares non-negative last-block features, but {teacher_path} "
                                       "gives negative ones: its AT+ maps cannot be derived from pooled features")
                for key in keys:
                    value = targets[key].float()
                    if value.dim() == 4:
                        teacher_size = tuple(value.shape[-2:])
                        sizes.setdefault(key, (teacher_size, stored_size(key, teacher_size, students)))
                        if key in derived:
                            continue
                        value = align_map(value, sizes[key][1])
                    value = value.cpu().numpy().astype(dtype, copy=False)
                    if not np.isfinite(value).all():
                        raise ValueError(f"Teacher target {key!r} is not finite as {dtype} (float16 holds up to "
                                         f"65504): build the cache with --dtype float32")
                    if key not in arrays:
                        row_bytes = int(np.prod(value.shape[1:])) * np.dtype(dtype).itemsize
                        rows = _chunk_rows(row_bytes, n_rows)
                        arrays[key] = root.create_array(key, shape=(D4_ELEMENTS, n_rows, *value.shape[1:]),
                                                        chunks=(1, rows, *value.shape[1:]), dtype=dtype,
                                                        compressors=COMPRESSOR)
                    writers.setdefault((key, k), RowChunkWriter(arrays[key], tmp, k)).append(value)
            if not disk_checked:  # after the first batch, when the arrays' shapes are known
                _check_disk(out, tmp, sum(a.nbytes for a in arrays.values()))
                disk_checked = True
        for writer in writers.values():
            writer.close()
        if derived:
            height, width = sizes["features"][0]
            root.create_array(ATPLUS_WEIGHTS, data=(teacher.classifier.weight.detach().float().cpu().clamp(min=0)
                                                    / (height * width)).numpy(), compressors=None)
        root.attrs.update(
            {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "keys": keys,
                "terms": list(terms),
                "teacher_options": teacher_options,
                "dtype": dtype,
                "derived": derived,
                "sides": {key: list(size) for key, (_, size) in sizes.items()},
                "teacher_sides": {key: list(size) for key, (size, _) in sizes.items()},
                "students": [{kind: list(size) for kind, size in student.items()} for student in students],
                "d4": "element k: torch.rot90 by k % 4 quarter turns on (H, W), then flip W if k >= 4",
                "teacher": {"path": str(teacher_path), "sha256": file_sha256(teacher_path), "arch": meta.arch,
                            "magnification": meta.magnification},
                "stores": entries,
                "fingerprint": fingerprint(entries),
                "rows": n_rows,
                patch_store.CHUNK_FILES: chunk_files(tmp),  # last: TeacherCache refuses a cache missing a file
            }
        )
    nbytes = {key: int(np.prod(a.shape)) * np.dtype(dtype).itemsize for key, a in arrays.items()}
    disk_bytes = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    return {"cache": str(out), "rows": n_rows, "keys": keys, "derived": sorted(derived), "dtype": dtype,
            "nbytes": nbytes,
            "sides": {key: list(size) for key, (_, size) in sizes.items()},
            "bytes_per_patch": sum(nbytes.values()) / n_rows, "disk_bytes": disk_bytes,
            "disk_bytes_per_patch": disk_bytes / n_rows, "seconds": time.perf_counter() - started}


def _check_disk(out: str | Path, tmp: Path, nbytes: int) -> None:
    """OSError ENOSPC naming ``out`` when the cache's uncompressed ``nbytes`` exceed the free space (an upper
    bound: it is stored compressed), before hours of Teacher passes fill the disk."""
    free = shutil.disk_usage(tmp if tmp.exists() else Path(tmp).parent).free
    if nbytes > free:
        raise OSError(errno.ENOSPC, f"the Teacher-target cache needs up to {nbytes / 2**20:.0f} MiB, "
                      f"{free / 2**20:.0f} MiB are free", str(out))


class TeacherCache:
    """Read side of a Teacher-target cache: ``read(elements, rows)`` gives ``teacher_targets``' dict.

    Open with :meth:`open`, which checks the cache against the training run and serves only the keys
    its terms read. Arrays that fit in ``memory_bytes`` (all but the features, usually) are read into
    memory once; the others are read per batch, row by row, straight from their chunk files
    (:class:`ChunkFiles`), or through zarr for a layout that reader does not handle.
    """

    def __init__(self, path: str | Path, *, keys: Iterable[str] | None = None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no Teacher-target cache at {self.path}: build it with `wsidistill teacher-cache`")
        self.root = zarr.open_group(str(self.path), mode="r")
        attrs = dict(self.root.attrs)
        if attrs.get("format") != CACHE_FORMAT or attrs.get("version") != CACHE_VERSION:
            raise StaleCacheError(
                f"{self.path} is not a version-{CACHE_VERSION} Teacher-target cache "
                f"(format {attrs.get('format')!r}, version {attrs.get('version')!r}): rebuild it"
            )
        patch_store.check_complete(self.path, attrs.get(patch_store.CHUNK_FILES), "Teacher-target cache", REBUILD)
        self.attrs = attrs
        #: Every key the cache holds; ``arrays`` holds the ones :meth:`read` serves.
        self.keys: list[str] = list(attrs["keys"])
        self.rows: int = int(attrs["rows"])
        served = self.keys if keys is None else [k for k in self.keys if k in set(keys)]
        missing = sorted(set(keys or ()) - set(self.keys))
        if missing:
            raise StaleCacheError(
                f"Teacher-target cache {self.path} lacks {missing} (it holds {self.keys}, built for terms "
                f"{attrs['terms']}); {REBUILD} with the union of every method's terms"
            )
        #: Served keys derived when read (AT+ maps from the pooled features): key -> (C, K) channel weights.
        self.derived: dict[str, Tensor] = {key: torch.from_numpy(self.root[spec["weights"]][:])
                                           for key, spec in attrs.get("derived", {}).items() if key in served}
        sources = [spec["from"] for key, spec in attrs.get("derived", {}).items() if key in served]
        self.served = served
        self.arrays: dict[str, zarr.Array | np.ndarray] = {
            key: self.root[key] for key in dict.fromkeys([*served, *sources]) if key not in self.derived}
        self._files: dict[str, ChunkFiles] = {}
        for key in self.arrays:
            try:
                self._files[key] = ChunkFiles(self.arrays[key], self.path / key)
            except NotImplementedError:
                pass
        budget = memory_bytes
        with zarr.config.set(_READ_CONFIG):
            for key in sorted(self.arrays, key=lambda k: self.arrays[k].nbytes):
                if self.arrays[key].nbytes <= budget:
                    budget -= self.arrays[key].nbytes
                    files = self._files.pop(key, None)
                    self.arrays[key] = files.read_all() if files is not None else self.arrays[key][:]

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        stores: Sequence[str | Path],
        teacher_path: str | Path | None = None,
        terms: Iterable[str] = (),
        teacher_options: dict | None = None,
        student_sides: Mapping[str, Sequence[int]] | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> TeacherCache:
        """Open ``path`` for a run on ``stores`` with ``terms`` (and a Student reading ``student_sides``, see
        :meth:`check`), serving only the keys those terms read; StaleCacheError if it does not match the run."""
        terms = tuple(terms)
        cls(path, memory_bytes=0).check(stores=stores, teacher_path=teacher_path, terms=terms,
                                        teacher_options=teacher_options, student_sides=student_sides)
        return cls(path, keys=target_keys(terms), memory_bytes=memory_bytes)

    def check(
        self,
        *,
        stores: Sequence[str | Path],
        teacher_path: str | Path | None = None,
        terms: Iterable[str] = (),
        teacher_options: dict | None = None,
        student_sides: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """StaleCacheError naming what differs: the stores, the Teacher, the terms or their options, or a
        Student grid (``student_sides``: ``{"grid": (H, W), "input": (H, W)}``, as
        :func:`~wsidistill.models.checkpoint.student_reads` gives) that a pooled target's grid does not divide."""
        rebuild = REBUILD
        cached = self.attrs["stores"]
        current = describe_stores(stores, self._teacher_magnification_name())
        if fingerprint(current) != self.attrs["fingerprint"]:
            ids = [e["slide_id"] for e in current]
            cached_ids = [e["slide_id"] for e in cached]
            if ids != cached_ids:
                detail = f"slides {cached_ids} in the cache, {ids} now"
            else:
                changed = [c["slide_id"] for c, e in zip(current, cached) if (c["rows"], c["digest"]) != (e["rows"], e["digest"])]
                detail = f"patches of {changed} changed since the cache was built"
            raise StaleCacheError(f"Teacher-target cache {self.path} is stale: {detail}; {rebuild}")
        if teacher_path is not None:
            digest = file_sha256(teacher_path)
            if digest != self.attrs["teacher"]["sha256"]:
                raise StaleCacheError(
                    f"Teacher-target cache {self.path} was built from another Teacher "
                    f"({self.attrs['teacher']['path']}, sha256 {self.attrs['teacher']['sha256'][:12]}), "
                    f"not {teacher_path} (sha256 {digest[:12]}); {rebuild}"
                )
        missing = sorted(set(target_keys(terms)) - set(self.keys))
        if missing:
            raise StaleCacheError(
                f"Teacher-target cache {self.path} lacks {missing} (it holds {self.keys}, built for terms "
                f"{self.attrs['terms']}); {rebuild} with the union of every method's terms"
            )
        if student_sides is not None:
            teacher_sides = self.attrs.get("teacher_sides", {})
            for key, stored in self.attrs.get("sides", {}).items():
                if key not in target_keys(terms) or stored == teacher_sides.get(key):
                    continue  # unpooled: the loss pools (or upsamples) it exactly as on the fly
                kind = "input" if key in INPUT_GRID_KEYS else "grid"
                student = [int(n) for n in student_sides[kind]]
                if any(n % m for n, m in zip(stored, student)):
                    raise StaleCacheError(
                        f"Teacher-target cache {self.path} holds {key!r} pooled to {stored[0]}x{stored[1]}, "
                        f"which does not pool exactly to this Student's {student[0]}x{student[1]} {kind}; "
                        f"{REBUILD} for every Student magnification and design (--student-magnifications)")
        options = teacher_options_with_defaults(teacher_options)
        reads_options = any(key in TERMS and TERMS[key].map_options for key in self.keys)  # e.g. `at` reads at_p
        if reads_options and options != teacher_options_with_defaults(self.attrs["teacher_options"]):
            raise StaleCacheError(
                f"Teacher-target cache {self.path} was built with Teacher options {self.attrs['teacher_options']}, "
                f"this run uses {options}; {rebuild}"
            )

    def _teacher_magnification_name(self) -> str:
        from ..slides.grid import magnification_name

        return magnification_name(self.attrs["teacher"]["magnification"])

    def __len__(self) -> int:
        return self.rows

    def read(self, elements: Tensor | np.ndarray | Sequence[int], rows: np.ndarray | Sequence[int],
             device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Targets of ``rows`` under D4 ``elements`` (one per row), as float32 tensors, batch first.

        Equal to ``teacher_targets(teacher, d4_transform(x_i, elements[i]))`` for each row ``i``.
        """
        elements = np.asarray(elements, dtype=np.int64).reshape(-1)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(elements) != len(rows):
            raise ValueError(f"{len(elements)} D4 elements for {len(rows)} rows")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows or elements.min() < 0 or elements.max() >= D4_ELEMENTS):
            raise IndexError(f"rows must be in 0..{self.rows - 1} and elements in 0..7")
        out = {}
        for key, array in self.arrays.items():
            if isinstance(array, np.ndarray):
                values = array[elements, rows]
            elif key in self._files:
                files = self._files[key]
                values = np.stack([files.read(int(e), int(r)) for e, r in zip(elements, rows)])
            else:
                values = np.empty((len(rows), *array.shape[2:]), array.dtype)
                with zarr.config.set(_READ_CONFIG):
                    for element in np.unique(elements):
                        where = np.flatnonzero(elements == element)
                        order = where[np.argsort(rows[where], kind="stable")]
                        values[order] = array.oindex[int(element), rows[order]]
            out[key] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)
        for key, weights in self.derived.items():  # sum_k ReLU(W[c, k]) / (H W) A_k (module doc)
            out[key] = torch.einsum("ck,bkhw->bchw", weights.to(device), out["features"])
        return {key: out[key] for key in self.served}

    @property
    def on_disk(self) -> list[str]:
        """Served keys read per batch from the store (the others are in memory)."""
        return [key for key, array in self.arrays.items() if not isinstance(array, np.ndarray)]

    def iterate(self, batches: Iterable[tuple[Tensor | np.ndarray, np.ndarray]], *,
                device: torch.device | str = "cpu") -> Iterator[dict[str, Tensor]]:
        """:meth:`read` for each ``(elements, rows)`` of ``batches``, in order.

        Reads stay in the calling thread: a batch's direct chunk reads cost a few ms, and a read-ahead
        thread measured slower (it competes with the training step for the GIL and the cores).
        """
        for elements, rows in batches:
            yield self.read(elements, rows, device=device)
