"""A mixed real-world cohort: demo tissue written as the files users bring from other tools (issue 17).

One slide of each kind, every one its own patient:

===============  =====  ===========================================================================
kind             split  what the sheet gives
===============  =====  ===========================================================================
``svs``          train  Aperio SVS (AppMag 40, MPP 0.25) with QuPath GeoJSON
``tiff``         train  generic pyramidal BigTIFF, mpp only (0.2265 um/px, derived 40x), GeoJSON
``ome``          train  OME-TIFF, pyramid in SubIFDs (OpenSlide sees one level), GeoJSON
``panda``        train  Aperio SVS with a PANDA/Radboud label mask (``label_mask`` column), no GeoJSON
``dicom``        val    DICOM WSI series folder (one file per level), GeoJSON
``own_names``    test   Aperio SVS with GeoJSON in the lab's own class names (``OWN_ANNOTATION_CLASSES``:
                        a QuPath >= 0.4 derived class, a plain-string classification, an ignored class)
``marker``       test   Aperio SVS with a blue marker stroke from the glass into the tissue, GeoJSON
``unannotated``  test   Aperio SVS without annotations: predicted and drawn, left out of the metrics
===============  =====  ===========================================================================

``sources/`` beside the slides holds each slide as the plain demo slide it was made from (Aperio SVS,
standard GeoJSON, the Radboud mask): the ground truth every format must reproduce.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import tifffile

from .formats import (
    MARKER_COLOURS,
    aperio_description,
    atomic_path,
    draw_marker_stroke,
    write_dicom_series,
    write_ome_tiff,
    write_pyramid,
)
from .params import LEVEL0_MPP
from .plan import DemoSlide, _slide_seed
from .scene import slide_grades

#: (kind, split) of each slide, in sheet order.
KINDS = (("svs", "train"), ("tiff", "train"), ("ome", "train"), ("panda", "train"), ("dicom", "val"),
         ("own_names", "test"), ("marker", "test"), ("unannotated", "test"))

#: The generic TIFF's resolution: a scanner whose 40x pixels are not 0.25 um (issue 17, kind 3).
TIFF_MPP = 0.2265

#: Stroke width of the marker slide, level-0 px per 512 px of slide height (0.2 mm on a 2048 px slide).
MARKER_WIDTH_PER_512 = 48

#: The lab's own class names for the standard ones. A list is written as a QuPath >= 0.4 derived class
#: (``{"names": [...]}``), a string as other exporters write it (``"classification": "GP3"``).
OWN_CLASS_NAMES = {"Benign": "Benign glands", "Gleason 3": "GP3", "Gleason 4": ["GP4", "Cribriform"],
                   "Gleason 5": "GP5"}

#: Name of the extra annotation the own-names slide carries over glass, which the mapping ignores.
IGNORED_CLASS = "Pen mark"

#: ``annotation_classes`` for the own names, as QuPath displays them; the pen-mark class is ignored (null).
OWN_ANNOTATION_CLASSES = {"Benign glands": "NC", "GP3": "G3", "GP4: Cribriform": "G4", "GP5": "G5",
                          IGNORED_CLASS: None}


@dataclass(frozen=True)
class MixedSlide:
    slide_id: str  # "aperio_svs", ...: the kind says what the slide tests
    kind: str
    split: str
    seed: int  # the demo slide seed: fixes every pixel and annotation


def plan_mixed_cohort(seed: int) -> list[MixedSlide]:
    """One slide per kind (``KINDS``); pure and deterministic.

    Seeds are drawn (deterministically) so that the training slides hold all four grades between them,
    as do the two annotated test slides, and the own-names slide has Gleason 4 (its derived class).
    """
    seeds = [_slide_seed(seed, index, 0) for index in range(len(KINDS))]
    kinds = [kind for kind, _ in KINDS]

    def grades(group):
        return set().union(*(slide_grades(seeds[kinds.index(kind)]) for kind in group))

    def redraw(kind, attempt):
        seeds[kinds.index(kind)] = _slide_seed(seed, kinds.index(kind), attempt)

    attempt = 0
    while 2 not in slide_grades(seeds[kinds.index("own_names")]):
        attempt += 1
        redraw("own_names", attempt)
    for group in (("svs", "tiff", "ome", "panda"), ("own_names", "marker")):
        attempt = 0
        while len(grades(group)) < 4:
            attempt += 1
            redraw(group[-1], attempt)
    return [MixedSlide(f"{kind}", kind, split, seeds[index]) for index, (kind, split) in enumerate(KINDS)]


def _rename_classes(source: Path, target: Path, slide_id: str, width: int) -> None:
    """The source GeoJSON in OWN_CLASS_NAMES, plus an IGNORED_CLASS rectangle over the glass at the top left."""
    collection = json.loads(source.read_text())
    for feature in collection["features"]:
        own = OWN_CLASS_NAMES[feature["properties"]["classification"]["name"]]
        feature["properties"]["classification"] = {"names": own} if isinstance(own, list) else own
    box = [[0, 0], [width // 8, 0], [width // 8, 16], [0, 16], [0, 0]]
    collection["features"].append({
        "type": "Feature",
        "id": str(uuid.UUID(bytes=hashlib.sha1(f"{slide_id}/{IGNORED_CLASS}".encode()).digest()[:16], version=4)),
        "geometry": {"type": "Polygon", "coordinates": [box]},
        "properties": {"objectType": "annotation", "classification": {"name": IGNORED_CLASS}},
    })
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(collection, indent=1))


def write_mixed_slide(slide: MixedSlide, out_dir: Path, *, width: int, height: int) -> dict[str, Path | None]:
    """Write one slide of the mixed cohort (and its source under ``out_dir/sources``).

    Returns the sample-sheet paths: ``slide`` (a file, or the DICOM series folder), ``annotations`` and
    ``label_mask`` (None where the sheet leaves them empty), and ``source`` (the plain demo files).
    """
    from .cohort import write_slide

    out_dir = Path(out_dir)
    sources = out_dir / "sources"
    source = write_slide(DemoSlide(slide.slide_id, slide.slide_id, slide.split, slide.seed), sources, width=width,
                         height=height, label_mask=slide.kind == "panda")
    # the source's own pyramid, decoded: a lossless copy keeps every level's pixels, so the tissue mask too
    with tifffile.TiffFile(source["slide"]) as tif:  # an SVS: one page per level
        levels = [page.asarray() for page in tif.pages]
    level0 = levels[0]
    stem = out_dir / slide.slide_id
    annotations = out_dir / f"{slide.slide_id}.geojson"
    paths = {"annotations": annotations, "label_mask": None, "source": source}
    if slide.kind == "tiff":
        paths["slide"] = stem.with_suffix(".tiff")
        write_pyramid(paths["slide"], [(0, level0)], width, height, description=None, mpp=TIFF_MPP, aperio=False)
    elif slide.kind == "ome":
        paths["slide"] = stem.with_suffix(".ome.tif")
        write_ome_tiff(paths["slide"], levels, LEVEL0_MPP)
    elif slide.kind == "dicom":
        folder = out_dir / f"{slide.slide_id}.dicom"
        shutil.rmtree(folder, ignore_errors=True)  # a rerun writes the series afresh (new UIDs)
        paths["slide"] = write_dicom_series(folder, levels, LEVEL0_MPP)
    elif slide.kind == "marker":
        paths["slide"] = stem.with_suffix(".svs")
        inked = draw_marker_stroke(level0, MARKER_COLOURS["blue"], MARKER_WIDTH_PER_512 * height // 512)
        write_pyramid(paths["slide"], [(0, inked)], width, height, aperio=True, mpp=LEVEL0_MPP,
                      description=aperio_description(width, height, 40, LEVEL0_MPP, slide.slide_id))
    else:  # svs, panda, own_names, unannotated: the Aperio file as it is
        paths["slide"] = stem.with_suffix(".svs")
        shutil.copyfile(source["slide"], paths["slide"])
    if slide.kind == "own_names":
        _rename_classes(source["annotations"], annotations, slide.slide_id, width)
    elif slide.kind in ("panda", "unannotated"):
        paths["annotations"] = None
        if slide.kind == "panda":
            paths["label_mask"] = stem.with_name(f"{slide.slide_id}_mask.tiff")
            shutil.copyfile(source["mask"], paths["label_mask"])
    else:
        shutil.copyfile(source["annotations"], annotations)
    return paths


def write_mixed_cohort(out_dir: Path, *, seed: int = 0, width: int = 1024, height: int = 768) -> Path:
    """Write every slide of ``plan_mixed_cohort(seed)`` and ``out_dir/slides.tsv`` (slide_id, path,
    annotations, label_mask, patient_id, split; paths relative to the sheet). Returns the sheet's path.

    Set ``annotation_classes`` to the standard names plus ``OWN_ANNOTATION_CLASSES``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for slide in plan_mixed_cohort(seed):
        paths = write_mixed_slide(slide, out_dir, width=width, height=height)
        rel = {key: os.path.relpath(paths[key], out_dir) if paths[key] else ""
               for key in ("slide", "annotations", "label_mask")}
        rows.append([slide.slide_id, rel["slide"], rel["annotations"], rel["label_mask"], f"P-{slide.slide_id}",
                     slide.split])
    sheet = out_dir / "slides.tsv"
    with atomic_path(sheet) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["slide_id", "path", "annotations", "label_mask", "patient_id", "split"])
        writer.writerows(rows)
    return sheet


def write_overlay(sheet: Path) -> Path:
    """``config.yaml`` beside the cohort's sheet: a config overlay that runs the workflow on it
    (demo off, ``samples`` the sheet's absolute path, ``annotation_classes`` the schema's standard names plus
    ``OWN_ANNOTATION_CLASSES``). Returns its path; use ``snakemake --configfile config.yaml OVERLAY``."""
    import yaml

    from ..config import config_default

    sheet = Path(sheet).resolve()
    overlay = {"demo": {"enabled": False}, "samples": str(sheet),
               "annotation_classes": {**config_default("annotation_classes"), **OWN_ANNOTATION_CLASSES}}
    path = sheet.parent / "config.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path
