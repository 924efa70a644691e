"""Generation speed of the demo cohort, in seconds per 100 megapixels (level 0) of written slide.

Run `python -m wsidistill.demo.speed` to reproduce the number quoted in docs/demo_cohort.md.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import cv2

from .cohort import DEFAULT_HEIGHT, DEFAULT_WIDTH, plan_cohort, write_cohort, write_slide


def seconds_per_100_megapixels(runs: int = 3, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> dict[str, float]:
    """Median over `runs` slides of single-threaded wall and CPU time of write_slide (render, JPEG
    pyramid, GeoJSON) scaled to 100 Mpx, and the wall time of the default 10-slide cohort (all cores).

    CPU time is the figure to compare between machines: it hardly changes when other jobs share them.
    """
    wall, cpu = [], []
    threads = cv2.getNumThreads()
    with tempfile.TemporaryDirectory() as tmp:
        cv2.setNumThreads(1)
        for slide in plan_cohort(max(runs, 3), seed=0)[:runs]:
            t0, c0 = time.perf_counter(), time.process_time()
            write_slide(slide, Path(tmp), width=width, height=height)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        cv2.setNumThreads(threads)
        t0 = time.perf_counter()
        write_cohort(Path(tmp) / "cohort", 10, seed=0, width=width, height=height)
        cohort = time.perf_counter() - t0
    per = 1e8 / (width * height)
    return {
        "wall_s_per_100mpx": statistics.median(wall) * per,
        "cpu_s_per_100mpx": statistics.median(cpu) * per,
        "default_cohort_wall_s": cohort,
    }


if __name__ == "__main__":
    for name, value in seconds_per_100_megapixels().items():
        print(f"{name}\t{value:.1f}")
