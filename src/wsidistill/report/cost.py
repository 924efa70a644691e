"""What each magnification costs: pixels, FLOPs and measured throughput per patch.

FLOPs are counted with ``torch.utils.flop_counter`` on one forward pass;
throughput is the median of repeated timed batches on this machine's CPU (and
its GPU when one is present), measured in one run so the ratios between
magnifications are comparable even on a noisy machine.
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
from ..models.checkpoint import load_model
from ..patches.dataset import open_store


def forward_gflops(model: torch.nn.Module, side: int) -> float:
    """GFLOPs of one forward pass on one ``side`` x ``side`` RGB patch."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def patches_per_second(model: torch.nn.Module, side: int, runtime: Runtime, *, batch: int = 64,
                       repeats: int = 7) -> float:
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


def cost_frame(models: dict[str, str | Path], stores: list[str | Path], threads: int = 1) -> pd.DataFrame:
    """One row per model (one model per magnification), the Teacher's row first."""
    torch.set_num_threads(threads)
    tissue_patches = float(np.mean([open_store(s)["coords"].shape[0] for s in stores])) if stores else float("nan")
    rows = []
    for name, path in models.items():
        model, meta = load_model(path)
        side = meta.patch_side
        row = {
            "model": name,
            "magnification": meta.magnification,
            "input_px": side,
            "input_pixels": side * side,
            "gflops_per_patch": forward_gflops(model, side),
            "cpu_patches_per_second": patches_per_second(model, side, Runtime(torch.device("cpu"))),
            "tissue_patches_per_slide": tissue_patches,
        }
        if torch.cuda.is_available():
            row["gpu_patches_per_second"] = patches_per_second(model, side, Runtime.create("cuda"))
        row["cpu_seconds_per_slide"] = tissue_patches / row["cpu_patches_per_second"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    teacher = frame.iloc[0]
    frame["pixel_ratio_vs_teacher"] = teacher.input_pixels / frame.input_pixels
    frame["flop_ratio_vs_teacher"] = teacher.gflops_per_patch / frame.gflops_per_patch
    frame["cpu_speedup_vs_teacher"] = frame.cpu_patches_per_second / teacher.cpu_patches_per_second
    return frame


def cost_markdown(frame: pd.DataFrame) -> str:
    columns = {
        "model": "model", "input_px": "patch (px)", "input_pixels": "pixels", "pixel_ratio_vs_teacher": "pixel ratio",
        "gflops_per_patch": "GFLOPs/patch", "flop_ratio_vs_teacher": "FLOP ratio",
        "cpu_patches_per_second": "CPU patches/s", "cpu_speedup_vs_teacher": "measured CPU speed-up",
        "tissue_patches_per_slide": "tissue patches/slide", "cpu_seconds_per_slide": "CPU s/slide",
    }
    if "gpu_patches_per_second" in frame:
        columns["gpu_patches_per_second"] = "GPU patches/s"
    shown = frame[list(columns)].rename(columns=columns)
    lines = ["# Cost per magnification", "",
             "| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    lines += ["", "Throughput: median of 7 timed batches of 64 patches, measured in one run on this machine "
              f"({torch.get_num_threads()} CPU threads). Ratios are against the Teacher's row: the pixel ratio is what "
              "the resolution saves in principle, the measured speed-up what this architecture realises.", ""]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def write_cost(models: dict[str, str | Path], stores: list[str | Path], out_csv, out_md, threads: int = 1) -> pd.DataFrame:
    frame = cost_frame(models, stores, threads)
    write_text(out_csv, frame.to_csv(index=False))
    write_text(out_md, cost_markdown(frame))
    return frame
