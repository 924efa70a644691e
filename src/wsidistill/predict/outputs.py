"""What ``wsidistill predict`` writes per slide, each file atomically, and the table over slides.

``{slide_id}.zarr``     probabilities (N, C) f4, coords (N, 2) int64 level-0 (x, y) top-left corners,
                        thumbnail and tissue mask; attributes: model, magnification, mpp, classes, grid
``{slide_id}.png``      heatmap: predicted class map and one probability map per class
``{slide_id}.geojson``  QuPath objects: one tile per patch, classified, probabilities as measurements
``{slide_id}.json``     Gleason score and ISUP grade group (:mod:`wsidistill.evaluation.grading`), counts, timings
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import zarr

from ..evaluation.grading import grade_from_patch_labels
from ..io import atomic_path, write_json, write_text
from ..patches import store as patch_store
from ..report.heatmaps import prediction_heatmap
from ..report.palette import class_rgb
from ..slides.grid import magnification_name
from .model import PredictModel
from .slide import SlidePrediction

#: Columns of the summary table, in order (a failed slide has only slide_id, path, status and error).
SUMMARY_COLUMNS = ("slide_id", "path", "status", "error", "model", "magnification", "tissue_patches",
                   "gleason_score", "primary", "secondary", "grade_group", "tumour_fraction", "seconds",
                   "patches_per_second")

#: QuPath object type of each feature: tiles are detections QuPath's own "Create tiles" makes.
QUPATH_OBJECT_TYPE = "tile"


def outputs_for(out_dir: str | Path, slide_id: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {kind: out_dir / f"{slide_id}{suffix}" for kind, suffix in
            (("zarr", ".zarr"), ("heatmap", ".png"), ("geojson", ".geojson"), ("json", ".json"))}


def write_probabilities(prediction: SlidePrediction, model: PredictModel, path: str | Path) -> None:
    """The prediction store: arrays and :class:`~wsidistill.patches.store.PredictionAttributes`."""
    info, tissue = prediction.info, prediction.tissue
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.create_array(patch_store.PROBABILITIES, data=prediction.probabilities)
        root.create_array(patch_store.COORDS, data=prediction.coords)
        root.create_array(patch_store.THUMBNAIL, data=tissue.thumbnail, chunks=tissue.thumbnail.shape)
        root.create_array(patch_store.TISSUE_MASK, data=tissue.mask, chunks=tissue.mask.shape)
        attributes = patch_store.PredictionAttributes(
            slide_id=prediction.slide_id,
            source_path=prediction.path,
            model=model.path,
            model_arch=model.arch,
            method=model.method,
            seed=model.seed,
            classes=list(model.classes),
            magnification=model.input_magnification,
            model_magnification=model.magnification,
            mpp=info.mpp * info.objective_power / model.input_magnification,  # microns per pixel read
            slide_mpp=info.mpp,
            objective_power=info.objective_power,
            objective_power_source=info.objective_power_source,
            slide=info.to_dict(),
            patch_side=model.patch_side,
            cell_level0=prediction.grid.cell,
            grid={"columns": prediction.grid.columns, "rows": prediction.grid.rows},
            read_level=prediction.read_level,
            thumbnail_downsample=tissue.downsample,
            tissue_method=tissue.method,
        )
        root.attrs.update(attributes.to_dict())


def qupath_features(prediction: SlidePrediction, classes: tuple[str, ...]) -> list[dict]:
    """One GeoJSON Feature per patch, as QuPath (0.4+) reads them.

    Geometry: the patch's square in level-0 pixels (origin top left, QuPath's convention), a closed
    ring.  Properties: ``objectType`` "tile", ``classification`` {name, color [r, g, b]} of the most
    probable class, and each class's probability as a ``measurements`` entry "P(class)".  Ids are
    UUIDs derived from the slide and the corner, so a rerun writes the same file.
    """
    coords, cell = prediction.coords, prediction.grid.cell
    boxes = shapely.box(coords[:, 0], coords[:, 1], coords[:, 0] + cell, coords[:, 1] + cell)
    rings = shapely.get_coordinates(shapely.get_exterior_ring(boxes)).reshape(len(coords), -1, 2).astype(int)
    colors = np.round(class_rgb(classes) * 255).astype(int).tolist()
    predicted = prediction.probabilities.argmax(1)
    names = [f"P({name})" for name in classes]
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"wsidistill:{prediction.slide_id}")
    features = []
    for ring, (x, y), label, probabilities in zip(rings.tolist(), coords.tolist(), predicted.tolist(),
                                                   prediction.probabilities.tolist()):
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(namespace, f"{x},{y}")),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": QUPATH_OBJECT_TYPE,
                "classification": {"name": classes[label], "color": colors[label]},
                "measurements": {name: round(p, 6) for name, p in zip(names, probabilities)},
            },
        })
    return features


def write_geojson(prediction: SlidePrediction, classes: tuple[str, ...], path: str | Path) -> None:
    # json.dumps, not json.dump: dump streams through the pure-Python encoder, 5x slower (benchmarks/predict.py:
    # 0.7 of the 5x Student's 2 CPU seconds on a 0.5-gigapixel slide were this file)
    write_text(path, json.dumps({"type": "FeatureCollection", "features": qupath_features(prediction, classes)}))


def slide_record(prediction: SlidePrediction, model: PredictModel, *, min_tumour_fraction: float = 0.0) -> dict:
    """Slide-level grade (Gleason score, ISUP grade group) and counts, from the predicted class of each patch.

    Grading needs the ordinal classes non-cancerous, G3, G4, G5; with any other classes the grade
    fields are None and ``grade_note`` says why.
    """
    predicted = prediction.probabilities.argmax(1)
    counts = np.bincount(predicted, minlength=len(model.classes))
    record = {
        "slide_id": prediction.slide_id, "path": prediction.path, "status": "ok", "error": None,
        "model": model.path, "method": model.method, "seed": model.seed,
        "magnification": magnification_name(model.input_magnification),
        "tissue_patches": int(len(predicted)),
        "patches_per_class": dict(zip(model.classes, counts.tolist())),
        "gleason_score": None, "primary": None, "secondary": None, "grade_group": None, "tumour_fraction": None,
        "grade_note": None, "min_tumour_fraction": min_tumour_fraction,
        "read_level": prediction.read_level, "timings": prediction.timings,
        "seconds": prediction.timings["total_s"],
        "patches_per_second": len(predicted) / prediction.timings["total_s"],
    }
    try:
        grade = grade_from_patch_labels(predicted, model.classes, min_tumour_fraction=min_tumour_fraction)
    except ValueError as err:
        record["grade_note"] = f"not graded: {err}"
    else:
        record.update(gleason_score=grade.score, primary=grade.primary, secondary=grade.secondary,
                      grade_group=grade.grade_group, tumour_fraction=grade.tumour_fraction)
    return record


def write_slide_outputs(prediction: SlidePrediction, model: PredictModel, out_dir: str | Path, *,
                        min_tumour_fraction: float = 0.0) -> dict:
    """Write the four per-slide outputs; the JSON last, so its presence means the others are complete."""
    started = time.perf_counter()
    paths = outputs_for(out_dir, prediction.slide_id)
    layers = {"slide_id": prediction.slide_id, "classes": list(model.classes), "cell": prediction.grid.cell,
              "grid": {"columns": prediction.grid.columns, "rows": prediction.grid.rows},
              "thumbnail": prediction.tissue.thumbnail, "downsample": prediction.tissue.downsample,
              "coords": prediction.coords, "probabilities": prediction.probabilities}  # as the store holds them
    # The heatmap is drawn on a thread of its own while the Zarr store and the GeoJSON are written: PNG encoding,
    # compression and file writes release the GIL, so on 2 cores the outputs take 0.11 s instead of 0.145 s for a
    # 5x Student on a 0.5-gigapixel slide (benchmarks/predict.py).  Only this thread draws with matplotlib.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsidistill-heatmap") as pool:
        heatmap = pool.submit(prediction_heatmap, layers, paths["heatmap"],
                              title=f"{model.method} {magnification_name(model.magnification)}")
        write_probabilities(prediction, model, paths["zarr"])
        write_geojson(prediction, model.classes, paths["geojson"])
        heatmap.result()
    record = {**slide_record(prediction, model, min_tumour_fraction=min_tumour_fraction),
              "outputs": {kind: str(path) for kind, path in paths.items()}}
    record["timings"] = {**record["timings"], "write_s": time.perf_counter() - started}  # all but the JSON itself
    write_json(paths["json"], record)
    return record


def write_summary(records: list[dict], path: str | Path) -> pd.DataFrame:
    """One row per slide (ok or failed) with its grade, as CSV."""
    frame = pd.DataFrame([{column: record.get(column) for column in SUMMARY_COLUMNS} for record in records],
                         columns=list(SUMMARY_COLUMNS))
    write_text(path, frame.to_csv(index=False))
    return frame


def summarise_slide_jsons(jsons: list[str | Path], path: str | Path) -> pd.DataFrame:
    """The summary table from per-slide JSONs (the workflow's per-slide jobs)."""
    return write_summary([json.loads(Path(p).read_text()) for p in jsons], path)
