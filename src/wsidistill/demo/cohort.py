"""The synthetic cohort: planning slides/patients/splits and writing slides, annotations and the sheet."""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .formats import aperio_description, atomic_path, write_geojson, write_pyramid
from .params import DEFAULT_PARAMS, LEVEL0_MPP, GeneratorParams
from .plan import DemoSlide, plan_cohort
from .render import render_strips
from .scene import build_scene

DEFAULT_WIDTH = 3072  # level-0 px; with DEFAULT_HEIGHT ~160 (150-190) tissue patches of 128 px per slide
DEFAULT_HEIGHT = 2304
# variant -> (file suffix, objective magnification, MPP, Aperio SVS?)
VARIANTS = {
    "svs40": (".svs", 40, LEVEL0_MPP, True),
    "svs20": (".svs", 20, 2 * LEVEL0_MPP, True),
    "nometa": (".svs", None, None, True),
    "tiff": (".tiff", None, LEVEL0_MPP, False),
}


def strip_rows(width: int) -> int:
    """Rows rendered at once: 512, or 256 for slides wider than ~3900 px, bounding working memory
    (about 110 bytes per strip pixel, halo included)."""
    return 512 if width * 592 <= 2_300_000 else 256


def write_slide(
    slide: DemoSlide,
    out_dir: Path,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    variant: str = "svs40",
    label_mask: bool = False,
    params: GeneratorParams = DEFAULT_PARAMS,
) -> dict[str, Path]:
    """Render one slide and write it with its GeoJSON (and optionally its Radboud label mask).

    width/height are level-0 pixels of the written file. Variant "svs20" is a native 20x scan: the same
    kind of tissue rendered at 0.5 um/px, so a slide of equal pixel size covers 4x the area.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    if min(width, height) < 256:
        raise ValueError("slides must be at least 256x256 px (a 3-level 1/4/16 pyramid of 256 px tiles)")
    suffix, magnification, mpp, aperio = VARIANTS[variant]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = 2.0 if variant == "svs20" else 1.0  # scene (40x) px per level-0 px
    scene = build_scene(slide.seed, width * scale, height * scale, params)
    paths = {"slide": out_dir / f"{slide.slide_id}{suffix}", "annotations": out_dir / f"{slide.slide_id}.geojson"}
    labels = np.zeros((height, width), np.uint8) if label_mask else None

    def rgb_strips():
        for y0, rgb, lab in render_strips(scene, params, width, height, scale, rows=strip_rows(width)):
            if labels is not None:
                labels[y0 : y0 + len(lab)] = lab
            yield y0, rgb

    description = aperio_description(width, height, magnification, mpp, slide.slide_id) if aperio else None
    write_pyramid(paths["slide"], rgb_strips(), width, height, description=description, mpp=mpp, aperio=aperio)
    write_geojson(paths["annotations"], scene.regions, scale, slide.slide_id)
    if labels is not None:
        paths["mask"] = out_dir / f"{slide.slide_id}_mask.tiff"
        strips = ((y0, labels[y0 : y0 + 512]) for y0 in range(0, height, 512))
        write_pyramid(paths["mask"], strips, width, height, description=None, mpp=mpp, aperio=False, label=True)
    return paths


def write_sample_sheet(slides: list[DemoSlide], out_dir: Path, sheet_path: Path, *, variant: str | None = None) -> Path:
    """TSV (slide_id, path, annotations, patient_id, split); paths relative to the sheet's directory.

    The slide suffix comes from `variant` when given, else from the file found on disk (.svs default).
    """
    out_dir, sheet_path = Path(out_dir), Path(sheet_path)
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    base = sheet_path.parent.resolve()

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), base)

    rows = []
    for s in slides:
        suffix = VARIANTS[variant][0] if variant else (".tiff" if (out_dir / f"{s.slide_id}.tiff").exists() else ".svs")
        rows.append([s.slide_id, rel(out_dir / f"{s.slide_id}{suffix}"), rel(out_dir / f"{s.slide_id}.geojson"), s.patient_id, s.split])
    with atomic_path(sheet_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["slide_id", "path", "annotations", "patient_id", "split"])
        writer.writerows(rows)
    return sheet_path


def _write_one(args):
    slide, out_dir, kwargs = args
    return write_slide(slide, out_dir, **kwargs)


def write_cohort(
    out_dir: Path,
    n_slides: int,
    seed: int,
    *,
    workers: int | None = None,
    val_patients: int | None = None,
    test_patients: int | None = None,
    **slide_kwargs,
) -> Path:
    """Write every slide of plan_cohort(n_slides, seed, val_patients=..., test_patients=...) plus
    out_dir/slides.tsv; returns the sheet path. `slide_kwargs` go to write_slide (size, variant, params).

    Slides are independent, so they are rendered in `workers` processes (default: all cores),
    started with 'spawn': forking a parent whose OpenCV/OpenMP thread pools are running can deadlock.
    """
    out_dir = Path(out_dir)
    slides = plan_cohort(n_slides, seed, val_patients=val_patients, test_patients=test_patients)
    workers = min(workers or os.cpu_count() or 1, len(slides))
    jobs = [(s, out_dir, slide_kwargs) for s in slides]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_one, jobs))
    else:
        for job in jobs:
            _write_one(job)
    return write_sample_sheet(slides, out_dir, out_dir / "slides.tsv", variant=slide_kwargs.get("variant"))
