"""``wsidistill predict``: a trained Teacher or Student applied to new, unannotated slides.

For each slide (any format :class:`wsidistill.slides.reader.Slide` opens) it reads the tissue at
the model's own magnification straight from the pyramid and writes class probabilities (Zarr), a
heatmap (PNG), a QuPath GeoJSON and the slide's Gleason score and ISUP grade group (JSON), then a
summary table over the slides.  A slide that cannot be used (unreadable, below the model's
magnification, no tissue) is reported in one line and the others go on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import config_default, section_defaults
from ..device import Runtime
from ..errors import InputError
from .model import CheckpointError, PredictModel
from .outputs import outputs_for, summarise_slide_jsons, write_slide_outputs, write_summary
from .slide import NoTissueError, PredictSettings, SlidePrediction, predict_slide


class PredictFailed(InputError, RuntimeError):
    """Some slides of a run failed; the message lists them, the others' outputs are written."""


def slide_ids_for(slides: Sequence[str | Path], slide_ids: Sequence[str] | None = None) -> list[str]:
    """``slide_ids`` or each file's name without its extension(s); raises InputError on duplicates."""
    ids = list(slide_ids) if slide_ids else [Path(s).stem.removesuffix(".ome") for s in slides]
    if len(ids) != len(slides):
        raise InputError(f"{len(slides)} slides but {len(ids)} slide ids: give one --slide-id per slide")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"slide ids {duplicates} occur twice (outputs are named by id): rename the files or give "
                         "--slide-id for each slide")
    return ids


def predict_slides(slides: Sequence[str | Path], model_path: str | Path, out_dir: str | Path, *,
                   slide_ids: Sequence[str] | None = None, settings: PredictSettings = PredictSettings(),
                   device: str = config_default("device"), precision: str = config_default("precision"),
                   summary: str | Path | None = None, mpp: float | None = None,
                   objective_power: float | None = None,
                   min_tumour_fraction: float = section_defaults("predict")["min_tumour_fraction"],
                   progress: bool = True) -> list[dict]:
    """Predict every slide; returns one record per slide (status "ok" or "failed").

    ``mpp`` / ``objective_power`` override every slide's own metadata (a sheet's columns of those names, one
    slide per call in the workflow).  ``summary``: the CSV over slides (default ``out_dir/summary.csv``; False writes none).  Raises
    :class:`CheckpointError` when ``model_path`` is not a model checkpoint (no slide can go on) and
    :class:`PredictFailed` after the last slide when any slide failed.
    """
    ids = slide_ids_for(slides, slide_ids)
    torch.set_num_threads(settings.threads)
    runtime = Runtime.create(device, precision)
    model = PredictModel.load(model_path, runtime)
    records: list[dict | None] = []
    failures: list[str] = []

    def failed(index: int, path, slide_id: str, err: InputError) -> None:
        message = str(err).splitlines()[0]
        tqdm.write(f"wsidistill predict: error: {message}", file=sys.stderr)  # not inside a progress bar line
        failures.append(f"{slide_id} ({message})")
        records[index] = {"slide_id": slide_id, "path": str(path), "status": "failed", "error": message}

    def finish(pending) -> None:
        """Wait for a slide's outputs; its record (or its one-line failure) takes the slide's place."""
        index, path, slide_id, written = pending
        try:
            records[index] = written.result()
        except InputError as err:
            failed(index, path, slide_id, err)

    # The outputs of slide i (Zarr, heatmap, GeoJSON, grade) are written on a second thread while slide i + 1
    # is read and inferred; at most one slide's outputs wait, so memory stays bounded.  On 2 cores the writer
    # (partly Python, under the GIL) and the inference compete, so it hides only part of the outputs' cost:
    # 0.31 -> 0.29 s a slide for the 5x Student (benchmarks/predict.py, "slides per run"); more with more cores.
    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsidistill-predict-writer") as writer:
        for path, slide_id in tqdm(list(zip(slides, ids)), desc="predict", unit="slide", disable=not progress):
            records.append(None)
            try:
                prediction = predict_slide(path, model, runtime, settings, slide_id=slide_id, mpp=mpp,
                                           objective_power=objective_power, progress=progress)
            except InputError as err:
                failed(len(records) - 1, path, slide_id, err)
                continue
            if pending:
                finish(pending)
            pending = (len(records) - 1, path, slide_id,
                       writer.submit(write_slide_outputs, prediction, model, out_dir,
                                     min_tumour_fraction=min_tumour_fraction))
        if pending:
            finish(pending)
    if summary is not False:
        write_summary(records, summary or Path(out_dir) / "summary.csv")
    if failures:
        raise PredictFailed(f"{len(failures)} of {len(records)} slides failed: " + "; ".join(failures))
    return records


__all__ = ["CheckpointError", "NoTissueError", "PredictFailed", "PredictModel", "PredictSettings", "SlidePrediction",
           "outputs_for", "predict_slide", "predict_slides", "summarise_slide_jsons", "write_summary"]
