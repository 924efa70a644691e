"""What each magnification costs, for both Student designs: pixels, FLOPs and measured throughput per patch.

Every Student magnification gets two rows on its native low-magnification patch:

- ``native`` grid: the Teacher's output stride, so the last-block grid shrinks with the magnification
  (floor 4x4) and the FLOPs fall with the pixels (the default design);
- ``teacher`` grid: max-pools dropped so the grid stays the Teacher's (the earlier design).

Both are built from the checkpoint's metadata (architecture, classes, magnifications, patch side) by
:func:`~wsidistill.models.checkpoint.student_output_stride`; FLOPs and throughput do not depend on the
weights, so the design that was not trained costs exactly what it would have cost. The ``trained`` column
marks the checkpoint's own design; an ``upsampled`` Student (the reference code's input) gets a row of its
own, on the Teacher's input size. Without trained models, :func:`design_frame` builds the networks
directly (``wsidistill cost --arch smallcnn --patch-size 256 --magnifications 40 20 10 5``).

FLOPs are counted with ``torch.utils.flop_counter`` on one forward pass; throughput is the median of
repeated timed batches on this machine's CPU (and its GPU when one is present), every row measured in one
run so the speed-ups are comparable even on a noisy machine.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..device import Runtime
from ..io import write_text
from ..models import build_model
from ..models.checkpoint import STUDENT_GRIDS, TEACHER_OUTPUT_STRIDE, load_model, student_output_stride
from ..patches.store import COORDS, open_store
from ..slides.grid import magnification_name

BATCH = 64
REPEATS = 7


def forward_gflops(model: torch.nn.Module, side: int) -> float:
    """GFLOPs of one forward pass on one ``side`` x ``side`` RGB patch."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def patches_per_second(model: torch.nn.Module, side: int, runtime: Runtime, *, batch: int, repeats: int) -> float:
    """Median throughput of batched inference after one warm-up batch, in ``runtime``'s precision."""
    model = runtime.place(model).eval()
    images = torch.rand(batch, side, side, 3, device=runtime.device).permute(0, 3, 1, 2)  # channels_last, as loaded

    def forward():
        with runtime.autocast():
            model(images)
        if runtime.is_cuda:
            torch.cuda.synchronize()

    forward()  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        forward()
        timings.append(time.perf_counter() - started)
    return batch / statistics.median(timings)


def _designs(arch: str, num_classes: int, teacher_side: int, teacher_magnification: float, magnification: float,
             teacher_stride: int) -> list[tuple[str, torch.nn.Module, int]]:
    """``(design, untrained network, input side)`` of both Student designs on native input at ``magnification``.

    A fixed-stride backbone has only the ``native`` design on native input (see ``student_output_stride``).
    """
    side = int(round(teacher_side * magnification / teacher_magnification))
    designs = []
    for grid in STUDENT_GRIDS:
        try:
            stride = student_output_stride(arch, magnification, teacher_magnification, side=side, grid=grid,
                                           teacher_stride=teacher_stride)
        except ValueError:
            continue
        designs.append((grid, build_model(arch, num_classes, output_stride=stride), side))
    return designs


def _row(name: str, magnification: float, design: str, trained: bool, model: torch.nn.Module, side: int,
         tissue_patches: float) -> dict:
    """One model's cost, measured now."""
    model = model.eval()
    with torch.no_grad():
        grid = list(model(torch.zeros(1, 3, side, side)).features.values())[-1].shape[-2:]
    row = {
        "model": name,
        "magnification": magnification,
        "design": design,
        "trained": trained,
        "input_px": side,
        "input_pixels": side * side,
        "output_stride": model.output_stride,
        "grid": f"{grid[0]}x{grid[1]}",
        "gflops_per_patch": forward_gflops(model, side),
        "cpu_patches_per_second": patches_per_second(model, side, Runtime(torch.device("cpu")), batch=BATCH,
                                                     repeats=REPEATS),
        "tissue_patches_per_slide": tissue_patches,
    }
    if torch.cuda.is_available():
        row["gpu_patches_per_second"] = patches_per_second(model, side, Runtime.create("cuda"), batch=BATCH,
                                                           repeats=REPEATS)
    row["cpu_seconds_per_slide"] = tissue_patches / row["cpu_patches_per_second"]
    return row


def _with_ratios(rows: list[dict]) -> pd.DataFrame:
    """Rows as a frame, with every ratio against the first row (the Teacher)."""
    frame = pd.DataFrame(rows)
    teacher = frame.iloc[0]
    frame["pixel_ratio_vs_teacher"] = teacher.input_pixels / frame.input_pixels
    frame["flop_ratio_vs_teacher"] = teacher.gflops_per_patch / frame.gflops_per_patch
    frame["cpu_speedup_vs_teacher"] = frame.cpu_patches_per_second / teacher.cpu_patches_per_second
    if "gpu_patches_per_second" in frame:
        frame["gpu_speedup_vs_teacher"] = frame.gpu_patches_per_second / teacher.gpu_patches_per_second
    return frame


def _tissue_patches(stores: list[str | Path]) -> float:
    return float(np.mean([open_store(s)[COORDS].shape[0] for s in stores])) if stores else float("nan")


def cost_frame(models: dict[str, str | Path], stores: list[str | Path], threads: int = 1) -> pd.DataFrame:
    """Cost of trained models (``{name: checkpoint}``, the Teacher first), both Student designs per Student.

    Rows: the Teacher, then per Student its ``native`` and ``teacher`` grid designs on native input
    (``trained`` marks the checkpoint's), plus its own ``upsampled`` row if it was trained that way.
    ``stores``: test stores, for tissue patches per slide (NaN when empty).
    """
    torch.set_num_threads(threads)
    tissue = _tissue_patches(stores)
    (teacher_name, teacher_path), *students = models.items()
    teacher, teacher_meta = load_model(teacher_path)
    rows = [_row(teacher_name, teacher_meta.magnification, "Teacher", True, teacher, teacher_meta.patch_side,
                 tissue)]
    for name, path in students:
        model, meta = load_model(path)
        upsampled = meta.student_input == "upsampled"
        # Checkpoints from before the native design was the default dropped max-pools: the teacher grid.
        trained_grid = meta.student_grid or "teacher"
        for grid, network, side in _designs(meta.arch, meta.num_classes, teacher_meta.patch_side,
                                            teacher_meta.magnification, meta.magnification,
                                            getattr(teacher, "output_stride", TEACHER_OUTPUT_STRIDE)):
            trained = not upsampled and grid == trained_grid
            rows.append(_row(name, meta.magnification, grid, trained, model if trained else network, side, tissue))
        if upsampled:
            rows.append(_row(name, meta.magnification, "upsampled", True, model, meta.patch_side, tissue))
    return _with_ratios(rows)


def design_frame(arch: str, patch_size: int, magnifications: list[float], *, num_classes: int = 4,
                 stores: list[str | Path] = (), threads: int = 1) -> pd.DataFrame:
    """Cost of untrained networks: the Teacher at ``magnifications[0]`` on ``patch_size`` px, then both
    Student designs at every other magnification (no checkpoint needed; costs do not depend on weights)."""
    torch.set_num_threads(threads)
    tissue = _tissue_patches(list(stores))
    teacher_mag, *student_mags = magnifications
    teacher = build_model(arch, num_classes)
    rows = [_row(f"teacher_{magnification_name(teacher_mag)}", teacher_mag, "Teacher", False, teacher, patch_size,
                 tissue)]
    for mag in student_mags:
        for grid, network, side in _designs(arch, num_classes, patch_size, teacher_mag, mag, teacher.output_stride):
            rows.append(_row(f"student_{magnification_name(mag)}", mag, grid, False, network, side, tissue))
    return _with_ratios(rows)


COLUMNS = {
    "model": "model", "design": "grid design", "trained": "trained", "input_px": "patch (px)",
    "output_stride": "stride", "grid": "grid", "pixel_ratio_vs_teacher": "pixel ratio",
    "gflops_per_patch": "GFLOPs/patch", "flop_ratio_vs_teacher": "FLOP ratio",
    "cpu_patches_per_second": "CPU patches/s", "cpu_speedup_vs_teacher": "measured CPU speed-up",
    "gpu_patches_per_second": "GPU patches/s", "gpu_speedup_vs_teacher": "measured GPU speed-up",
    "tissue_patches_per_slide": "tissue patches/slide", "cpu_seconds_per_slide": "CPU s/slide",
}


def cost_markdown(frame: pd.DataFrame) -> str:
    """The table in Markdown (``DataFrame.to_markdown``), with how it was measured."""
    # Columns with nothing to show (no stores, no trained model) are left out.
    columns = {k: v for k, v in COLUMNS.items()
               if k in frame and frame[k].notna().any() and not (k == "trained" and not frame[k].any())}
    shown = frame[list(columns)].rename(columns=columns)
    shown = shown.map(_cell)
    table = shown.to_markdown(index=False, disable_numparse=True)
    return "\n".join([
        "# Cost per magnification and Student design", "",
        table, "",
        "Grid designs: `native` keeps the Teacher's output stride on the native low-magnification patch (grid "
        "shrinks with the magnification, never below 4x4); `teacher` drops max-pools to keep the Teacher's grid; "
        "`upsampled` reads the Teacher's patch pooled and upsampled back. `trained` marks each checkpoint's own "
        "design; the other is built untrained (costs do not depend on weights).",
        f"Throughput: median of {REPEATS} timed batches of {BATCH} patches after a warm-up, every row measured in "
        f"one run on this machine ({torch.get_num_threads()} CPU threads). Ratios are against the Teacher's row: "
        "the pixel ratio is what the resolution saves in principle, the FLOP ratio what the design saves, the "
        "measured speed-up what this machine realises.", "",
    ])


def _cell(value) -> str:
    if isinstance(value, (str, bool, np.bool_)):
        return str(value) if not isinstance(value, (bool, np.bool_)) else ("yes" if value else "")
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if value != value:  # NaN
        return ""
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def write_cost(models: dict[str, str | Path] | None, stores: list[str | Path], out_csv, out_md, threads: int = 1,
               *, design: tuple[str, int, list[float]] | None = None) -> pd.DataFrame:
    """Write the cost table (CSV and Markdown) of trained ``models``, or of ``design`` =
    ``(arch, patch_size, magnifications)`` built untrained when no models are given."""
    if (models is None) == (design is None):
        raise ValueError("give either trained models (NAME=PATH) or a design (arch, patch size, magnifications)")
    frame = cost_frame(models, stores, threads) if models else design_frame(*design, stores=stores, threads=threads)
    write_text(out_csv, frame.to_csv(index=False))
    write_text(out_md, cost_markdown(frame))
    return frame
