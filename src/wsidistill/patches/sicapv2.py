"""SICAPv2 -> the extraction store layout: one store per slide, the paper's splits kept.

SICAPv2 (Silva-Rodríguez et al., 2020) ships 512 px patches at 10x cut from
prostate biopsies, labelled by pathologists::

    SICAPv2/
      images/{slide}_Block_Region_{r}_{i}_{j}_xini_{x}_yini_{y}.jpg
      masks/                          pixel annotations (unused: the sheets carry the labels)
      partition/Test/{Train,Test}.xlsx
      partition/Validation/Val{1-4}/{Train,Test}.xlsx
      wsi_labels.xlsx                 slide_id, patient_id, Gleason_primary, Gleason_secondary

Each partition sheet lists ``image_name`` with one-hot ``NC``, ``G3``, ``G4``,
``G5`` and ``G4C`` (cribriform, a G4 pattern).  Splits are those of the paper
and of SICAPv2's own code, all by patient: train = ``Validation/Val1/Train``,
val = ``Validation/Val1/Test``, test = ``Test/Test``.  Lower magnifications are
area downsamplings of the 10x patch, as in extraction.  Reading ``.xlsx`` needs
openpyxl.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import zarr

from ..errors import InputError
from ..io import atomic_path, write_json, write_text
from ..slides.annotations import majority_labels
from ..slides.grid import magnification_name, patch_pixels
from . import store
from .extract import area_downsample, create_image_arrays
from .zarr_io import PatchWriter, chunk_files

CLASSES = ("NC", "G3", "G4", "G5")
NATIVE_MAGNIFICATION = 10
PATCH_SIZE = 512
#: split -> partition sheet, relative to the dataset root.
SPLIT_SHEETS = {
    "train": "partition/Validation/Val1/Train.xlsx",
    "val": "partition/Validation/Val1/Test.xlsx",
    "test": "partition/Test/Test.xlsx",
}
IMAGE_NAME = re.compile(r"^(?P<slide>.+?)_Block_.*_xini_(?P<x>\d+)_yini_(?P<y>\d+)$")
#: Patches decoded and written per batch: bounds memory whatever a slide's patch count.
BATCH = 64


class SicapError(InputError, ValueError):
    """A SICAPv2 tree that does not have the published layout; the message names the file."""


def _read_sheet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_excel(path)
    except ImportError as err:
        raise SicapError(f"{path}: reading .xlsx needs openpyxl; install it (`pip install openpyxl`)") from err


def read_partitions(root: Path) -> pd.DataFrame:
    """image_name, slide_id, x, y, split and class fractions (N, C) of every partitioned patch."""
    frames = []
    for split, relative in SPLIT_SHEETS.items():
        path = root / relative
        if not path.exists():
            raise SicapError(f"{path}: partition sheet not found; is {root} the SICAPv2 folder (with images/ and "
                             "partition/)?")
        sheet = _read_sheet(path)
        missing = [c for c in ("image_name", *CLASSES) if c not in sheet.columns]
        if missing:
            raise SicapError(f"{path}: missing columns {missing}; SICAPv2 sheets have image_name, NC, G3, G4, G5, G4C")
        frames.append(sheet.assign(split=split))
    patches = pd.concat(frames, ignore_index=True)
    if "G4C" in patches:  # cribriform is a G4 pattern
        patches["G4"] = np.maximum(patches["G4"], patches["G4C"].fillna(0))
    names = patches.image_name.astype(str).map(lambda n: IMAGE_NAME.match(Path(n).stem))
    bad = patches.image_name[names.isna()].tolist()
    if bad:
        raise SicapError(f"{root / 'partition'}: image names {bad[:5]} do not follow SICAPv2's "
                         "{{slide}}_Block_..._xini_{{x}}_yini_{{y}}.jpg pattern")
    patches["slide_id"] = [m["slide"] for m in names]
    patches["x"] = [int(m["x"]) for m in names]
    patches["y"] = [int(m["y"]) for m in names]
    twice = patches.image_name[patches.image_name.duplicated()].tolist()
    if twice:
        raise SicapError(f"{root / 'partition'}: images {twice[:5]} are in more than one of "
                         f"{sorted(SPLIT_SHEETS.values())}")
    straddling = patches.groupby("slide_id").split.nunique()
    straddling = sorted(straddling[straddling > 1].index)
    if straddling:
        raise SicapError(f"{root / 'partition'}: slides {straddling} have patches in more than one split")
    return patches


def check_root(root: Path) -> None:
    if not (root / "images").is_dir():
        raise SicapError(f"{root}: no images/ folder; point at the unpacked SICAPv2 folder")


def check_magnifications(magnifications) -> None:
    too_fine = [m for m in magnifications if m > NATIVE_MAGNIFICATION]
    if too_fine:
        raise SicapError(f"SICAPv2 is 10x; {too_fine} would need upsampling. Ask for 10x or lower.")


def check_protocol(*, magnifications, teacher_magnification: float, patch_size: int, classes) -> None:
    """Settings a workflow run on SICAPv2 must have: its patches are 512 px at 10x, labelled NC to G5."""
    check_magnifications(magnifications)
    expected = patch_pixels(PATCH_SIZE, teacher_magnification, NATIVE_MAGNIFICATION)
    if patch_size != expected:
        raise SicapError(f"`extraction.patch_size` is {patch_size}, but SICAPv2's patches are {PATCH_SIZE} px at "
                         f"{NATIVE_MAGNIFICATION}x, i.e. {expected} px at the Teacher's {teacher_magnification:g}x")
    if list(classes) != list(CLASSES):
        raise SicapError(f"`classes` is {list(classes)}, but SICAPv2 is labelled {list(CLASSES)}")


def read_slides(root: str | Path) -> pd.DataFrame:
    """slide_id, patient_id, split and patch count of every partitioned slide, from the sheets alone.

    Reads no image: the workflow calls it to plan one import job per slide. Raises
    :class:`SicapError` naming the missing folder or sheet.
    """
    root = Path(root)
    check_root(root)
    patches = read_partitions(root)
    slides = patches.groupby("slide_id", sort=True).agg(split=("split", "first"), patches=("image_name", "size"))
    patients = _patient_ids(root, slides.index)
    return slides.assign(patient_id=[patients[s] for s in slides.index]).reset_index()[
        ["slide_id", "patient_id", "split", "patches"]]


def _patient_ids(root: Path, slide_ids) -> dict[str, str]:
    """slide -> patient from wsi_labels.xlsx; a slide without a row is its own patient."""
    path = root / "wsi_labels.xlsx"
    patients = {}
    if path.exists():
        labels = _read_sheet(path)
        patients = dict(zip(labels.slide_id.astype(str), labels.patient_id.astype(str)))
    return {s: patients.get(s, s) for s in slide_ids}


def _read_patches(paths: list[Path], sides: dict[str, int]) -> dict[str, np.ndarray]:
    out = {name: [] for name in sides}
    for path in paths:
        try:
            image = imagecodecs.jpeg8_decode(path.read_bytes())
        except (OSError, imagecodecs.Jpeg8Error) as err:
            raise SicapError(f"{path}: unreadable patch ({err}); re-download it") from err
        if image.shape != (PATCH_SIZE, PATCH_SIZE, 3):
            raise SicapError(f"{path}: expected a {PATCH_SIZE}x{PATCH_SIZE} RGB patch, found shape {image.shape}")
        for name, side in sides.items():
            out[name].append(area_downsample(image, (side, side)))
    return {name: np.stack(images) for name, images in out.items()}


def heatmap_cell(coords: np.ndarray) -> int:
    """Side of the heatmap grid cell: the step between patch origins (gcd of their offsets), at most a patch.

    SICAPv2's patches overlap by half (origins 256 px apart), so a grid of 512 px cells would put
    two patches in one cell; on the step's grid each patch has a cell of its own, at its origin.
    Clipped to at least PATCH_SIZE / 8, so irregular origins cannot make the grid huge.
    """
    offsets = (coords - coords.min(axis=0)).ravel() if len(coords) else np.zeros(0, np.int64)
    step = int(np.gcd.reduce(offsets[offsets > 0])) if (offsets > 0).any() else PATCH_SIZE
    return int(np.clip(step, PATCH_SIZE // 8, PATCH_SIZE))


def _mosaic(coords: np.ndarray, means: np.ndarray, cell: int, columns: int, rows: int) -> np.ndarray:
    """One pixel per grid cell, each patch's mean colour at its origin, white elsewhere: the heatmaps' background."""
    thumbnail = np.full((rows, columns, 3), 255, np.uint8)
    thumbnail[coords[:, 1] // cell, coords[:, 0] // cell] = means
    return thumbnail


def import_slide(root: Path, slide_id: str, patches: pd.DataFrame, patient_id: str, out: Path,
                 magnifications: tuple[float, ...], threads: int) -> dict:
    """Write one slide's store; ``patches`` are its rows of :func:`read_partitions`."""
    patches = patches.sort_values(["y", "x"])
    sides = {magnification_name(m): patch_pixels(PATCH_SIZE, m, NATIVE_MAGNIFICATION) for m in magnifications}
    paths = [root / "images" / name for name in patches.image_name]
    absent = [str(p) for p in paths if not p.exists()]
    if absent:
        raise SicapError(f"{root / 'images'}: {len(absent)} images listed in the partition sheets are missing, "
                         f"e.g. {absent[:3]}; re-download SICAPv2")
    coords = patches[["x", "y"]].to_numpy(np.int64)
    fractions = patches[list(CLASSES)].fillna(0).to_numpy(np.float32)
    labels = majority_labels(fractions, 0.5)
    cell = heatmap_cell(coords)
    columns, rows = (int(v) // cell + 1 for v in coords.max(axis=0))
    means = np.zeros((len(paths), 3), np.uint8)
    with atomic_path(out / f"{slide_id}.zarr") as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        images = create_image_arrays(group, len(paths), sides)
        batches = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
        smallest = magnification_name(min(magnifications))
        with ThreadPoolExecutor(threads) as pool, PatchWriter(images, tmp, workers=threads) as writer:
            for i, batch in enumerate(pool.map(lambda b: _read_patches(b, sides), batches)):
                writer.append(batch)
                means[i * BATCH : i * BATCH + len(batch[smallest])] = batch[smallest].mean(axis=(1, 2)).round()
                writer.flush()
        thumbnail = _mosaic(coords, means, cell, columns, rows)
        group.create_array(store.COORDS, data=coords)
        group.create_array(store.LABELS, data=labels)
        group.create_array(store.TISSUE_FRACTION, data=np.ones(len(paths), np.float32))
        group.create_array(store.CLASS_FRACTIONS, data=fractions)
        group.create_array(store.THUMBNAIL, data=thumbnail)
        group.create_array(store.TISSUE_MASK, data=(thumbnail < 255).any(axis=-1))
        group.update_attributes(store.StoreAttributes(  # last, with the record of every chunk file written
            slide_id=slide_id,
            patient_id=patient_id,
            split=patches.split.iloc[0],
            source_path=str(root),
            source=store.SICAPV2,
            coords_unit="xini/yini of SICAPv2's image names",
            mpp=1.0,
            mpp_source="SICAPv2 (10x patches)",
            objective_power=NATIVE_MAGNIFICATION,
            objective_power_source="SICAPv2 (10x patches)",
            classes=list(CLASSES),
            magnifications=list(sides),
            skipped_magnifications=[],
            teacher_magnification=NATIVE_MAGNIFICATION,
            patch_size=PATCH_SIZE,
            patch_sizes=sides,
            cell_level0=cell,
            grid={"columns": columns, "rows": rows},
            thumbnail_downsample=cell,
            min_label_fraction=0.5,
            tissue_method="SICAPv2 selection",
            chunk_files=chunk_files(tmp),
        ).to_dict())
    counts = {c: int((labels == i).sum()) for i, c in enumerate(CLASSES)}
    counts["unlabelled"] = int((labels < 0).sum())
    summary = {"slide_id": slide_id, "store": str(out / f"{slide_id}.zarr"), "split": patches.split.iloc[0],
               "patient_id": patient_id, "tissue_patches": len(paths), "patches_per_class": counts,
               "magnifications": list(sides)}
    write_json(out / f"{slide_id}.json", summary)
    return summary


def import_slides(root: str | Path, out: str | Path, slide_ids=None, *, magnifications=(10, 5, 2.5),
                  threads: int = 1) -> list[dict]:
    """Import the partitioned slides ``slide_ids`` (all when None) of SICAPv2 at ``root`` into ``out``.

    Writes ``out/{slide}.zarr`` and ``out/{slide}.json`` per slide and returns their summaries; the
    workflow's ``import_sicapv2`` rule imports one slide per job this way.
    """
    root, out = Path(root), Path(out)
    check_root(root)
    check_magnifications(magnifications)
    patches = read_partitions(root)
    known = set(patches.slide_id)
    slide_ids = sorted(known) if slide_ids is None else list(slide_ids)
    unknown = [s for s in slide_ids if s not in known]
    if unknown:
        raise SicapError(f"{root / 'partition'}: slides {unknown} are in none of the partition sheets "
                         f"{sorted(SPLIT_SHEETS.values())}")
    patients = _patient_ids(root, slide_ids)
    by_slide = dict(tuple(patches.groupby("slide_id", sort=True)))
    return [import_slide(root, slide_id, by_slide[slide_id], patients[slide_id], out,
                         tuple(sorted(magnifications, reverse=True)), threads) for slide_id in slide_ids]


def import_sicapv2(root: str | Path, out: str | Path, *, magnifications=(10, 5, 2.5), threads: int = 1) -> Path:
    """Import every partitioned slide of SICAPv2 at ``root`` into ``out``; returns ``out/slides.tsv``.

    The sheet lists slide_id, patient_id, split, store and patch count per slide.
    """
    summaries = import_slides(root, out, magnifications=magnifications, threads=threads)
    rows = [{k: s[k] for k in ("slide_id", "patient_id", "split", "store", "tissue_patches")} for s in summaries]
    sheet = Path(out) / "slides.tsv"
    write_text(sheet, pd.DataFrame(rows).to_csv(sep="\t", index=False))
    return sheet
