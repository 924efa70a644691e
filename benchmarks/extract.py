"""Patch-extraction throughput: this project against tiatoolbox, a CLAM/TRIDENT-style loop and two floors.

    .venv/bin/python benchmarks/extract.py                          # 32768 x 24576 px slide (0.8 gigapixel)
    .venv/bin/python benchmarks/extract.py --sizes 16384x12288 32768x24576 --json resources/benchmarks/extract.json

Slides are generated 40x demo slides (Aperio SVS, 256 px JPEG tiles, levels 1/4/16), written once
under resources/benchmarks/ (about 12 minutes at 0.8 gigapixel; reused afterwards).  The field of view
is 256 px at 40x; one *patch-set* is that field at 40, 20, 10 and 5x (256, 128, 64 and 32 px).  The
same 600 tissue patch-sets (a seeded sample of the cells the project's tissue detection keeps, in
raster order) go through:

* ``a_project``: ``extract_slide`` restricted to those 600 cells by a tissue mask, timed end to end
  (thumbnail, tissue, labels, store metadata, patches), its store in the system's temporary folder.
  The patches are whole tiles, so the 40x images keep the file's JPEG tiles and 20/10/5x are
  decoded from them, area-averaged and stored Blosc-LZ4.
  ``a_project_recompressed`` is the same with ``reuse_source_tiles=False``: 40x decoded and stored
  Blosc-LZ4 like the others, the project's path for patches that are not whole tiles.
  ``a_project_slide`` is the same on every tissue cell of the slide, and is run on every size for
  peak RSS.
* ``b_tiatoolbox``: ``WSIReader.read_bounds`` per patch and magnification (units="power").
* ``c_naive``: OpenSlide ``read_region`` per patch and magnification at the best level, then
  ``cv2.resize`` (INTER_AREA) to size, as CLAM / TRIDENT-style loops do.
* ``d_openslide_tiles``: the OpenSlide floor: each level-0 tile under the patches read once with
  ``read_region``, tile-aligned; no resize, no storage.  Unit: tiles/s.
* ``e_decode``: the decode limit: each of those tiles' JPEG bytes read at the TIFF's tile offset and
  decoded once with libjpeg-turbo (imagecodecs); no OpenSlide.  Unit: tiles/s.

With 256 px cells on 256 px tiles one patch-set is one tile, so (a)/(e) compares like with like.
Each measurement is a fresh process pinned to one core, then two (``os.sched_setaffinity`` before
any import), warmed up on one patch-set; (b)-(e) use a thread pool of that many workers, (a)
``threads=`` that many.  Methods are interleaved over ``--repeats`` rounds so a shared machine's
drifts hit all alike; the table gives the median (best) rate, ratios of medians, the rate per
CPU-second (steadier under load), each process's peak RSS (VmHWM) and the load average.
``--json`` writes every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FIELD = 256  # px at 40x
MAGNIFICATIONS = (40, 20, 10, 5)
METHODS = ("a_project", "a_project_recompressed", "a_project_slide", "b_tiatoolbox", "c_naive", "d_openslide_tiles",
           "e_decode")
UNITS = {"d_openslide_tiles": "tiles/s", "e_decode": "tiles/s"}


class Clock:
    """Wall and CPU seconds (every thread of the process) of the code inside ``with``."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self._wall, self._cpu_now() - self._cpu

    @staticmethod
    def _cpu_now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


def benchmark_slide(size: str) -> Path:
    """The generated slide of ``size`` (WIDTHxHEIGHT), written on first use."""
    from wsidistill.demo import plan_cohort, write_slide

    width, height = (int(v) for v in size.split("x"))
    path = Path("resources/benchmarks") / size / "demo000.svs"
    if not path.exists():
        print(f"generating {path} (once) ...", file=sys.stderr, flush=True)
        write_slide(plan_cohort(6, 0)[0], path.parent, width=width, height=height)
    return path


def tissue_cells(slide_path: Path, count: int, seed: int = 0):
    """(all tissue cells, a seeded sample of ``count``) as level-0 (x, y), raster order, per the project's detection."""
    import numpy as np

    from wsidistill.slides.grid import PatchGrid
    from wsidistill.slides.reader import Slide
    from wsidistill.slides.tissue import detect_tissue

    with Slide(slide_path) as slide:
        thumbnail, downsample = slide.thumbnail()
        grid = PatchGrid.for_slide(slide.info.dimensions, FIELD)
    keep = np.flatnonzero(grid.tissue_fraction(detect_tissue(thumbnail), downsample) >= 0.5)
    sample = np.sort(np.random.default_rng(seed).choice(keep, size=min(count, len(keep)), replace=False))
    # Level-0 (x, y) of raster-order cell indices, as extraction computes them.
    def corners(cells):
        return np.stack([cells % grid.columns, cells // grid.columns], axis=1).astype(np.int64) * FIELD

    return corners(keep), corners(sample)


def run_project(slide_path, coords, threads, *, whole_slide, reuse_source_tiles=True):
    import cv2
    import numpy as np

    from wsidistill.patches.extract import ExtractionSettings, extract_slide

    settings = ExtractionSettings(classes=("NC", "G3", "G4", "G5"), class_map={}, magnifications=MAGNIFICATIONS,
                                  teacher_magnification=40, patch_size=FIELD, reuse_source_tiles=reuse_source_tiles)
    with tempfile.TemporaryDirectory() as tmp:
        mask = None
        if not whole_slide:  # one mask pixel per cell: exactly these cells are tissue
            from wsidistill.slides.reader import Slide

            with Slide(slide_path) as slide:
                width, height = slide.info.dimensions
            pixels = np.zeros((height // FIELD, width // FIELD), np.uint8)
            pixels[coords[:, 1] // FIELD, coords[:, 0] // FIELD] = 255
            mask = Path(tmp) / "mask.png"
            cv2.imwrite(str(mask), pixels)
        with Clock() as clock:
            summary = extract_slide(slide_path, Path(tmp) / "s.zarr", settings, slide_id="bench", tissue_mask=mask,
                                    threads=threads, progress=False)
        stored = sum(p.stat().st_size for p in (Path(tmp) / "s.zarr").rglob("*") if p.is_file())
    raw = summary["tissue_patches"] * sum((FIELD * m // 40) ** 2 * 3 for m in MAGNIFICATIONS)
    return summary["tissue_patches"], clock, {"compression_ratio": raw / stored, "timings": summary["timings"]}


def run_tiatoolbox(slide_path, coords, threads):
    from tiatoolbox.wsicore.wsireader import WSIReader

    reader = WSIReader.open(slide_path)

    def patch_set(xy):
        x, y = (int(v) for v in xy)
        return [reader.read_bounds((x, y, x + FIELD, y + FIELD), resolution=m, units="power") for m in MAGNIFICATIONS]

    return _timed(patch_set, coords, threads)


def run_naive(slide_path, coords, threads):
    import cv2
    import numpy as np
    import openslide

    slide = openslide.OpenSlide(str(slide_path))

    def patch_set(xy):
        x, y = (int(v) for v in xy)
        out = []
        for m in MAGNIFICATIONS:
            downsample = 40 / m
            level = slide.get_best_level_for_downsample(downsample + 1e-6)
            read = round(FIELD / slide.level_downsamples[level])
            image = np.asarray(slide.read_region((x, y), level, (read, read)).convert("RGB"))
            side = round(FIELD / downsample)
            out.append(image if read == side else cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA))
        return out

    return _timed(patch_set, coords, threads)


def _tiles_under(coords, tile: int):
    import numpy as np

    return np.unique(coords // tile, axis=0)  # (column, row); 256 px cells on 256 px tiles: one each


def run_openslide_tiles(slide_path, coords, threads):
    import openslide

    slide = openslide.OpenSlide(str(slide_path))
    tile = int(slide.properties["openslide.level[0].tile-width"])
    return _timed(lambda cr: slide.read_region((int(cr[0]) * tile, int(cr[1]) * tile), 0, (tile, tile)),
                  _tiles_under(coords, tile), threads)


def run_decode(slide_path, coords, threads):
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(slide_path) as tif:
        page = tif.pages[0]
        offsets, counts, tables = page.dataoffsets, page.databytecounts, page.jpegtables
        across = -(-page.imagewidth // page.tilewidth)
        tile = page.tilewidth
        rgb = page.photometric == tifffile.PHOTOMETRIC.RGB and not page.is_jfif
    fd = os.open(slide_path, os.O_RDONLY)
    colorspace = imagecodecs.JPEG8.CS.RGB if rgb else None

    def decode(cr):
        index = int(cr[1]) * across + int(cr[0])
        return imagecodecs.jpeg8_decode(os.pread(fd, counts[index], offsets[index]), tables=tables,
                                        colorspace=colorspace)

    return _timed(decode, _tiles_under(coords, tile), threads)


def _timed(work, items, threads):
    with Clock() as clock:
        if threads == 1:
            for item in items:
                work(item)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, items))
    return len(items), clock, {}


def worker(args) -> dict:
    """One measurement, in a process already pinned to ``args.cores`` cores."""
    import numpy as np

    coords = np.asarray(json.loads(Path(args.coords).read_text()), dtype=np.int64)
    runners = {
        "a_project": lambda c: run_project(args.slide, c, args.cores, whole_slide=False),
        "a_project_recompressed": lambda c: run_project(args.slide, c, args.cores, whole_slide=False,
                                                        reuse_source_tiles=False),
        "a_project_slide": lambda c: run_project(args.slide, c, args.cores, whole_slide=len(c) > 1),
        "b_tiatoolbox": lambda c: run_tiatoolbox(args.slide, c, args.cores),
        "c_naive": lambda c: run_naive(args.slide, c, args.cores),
        "d_openslide_tiles": lambda c: run_openslide_tiles(args.slide, c, args.cores),
        "e_decode": lambda c: run_decode(args.slide, c, args.cores),
    }
    runners[args.method](coords[:1])  # warm-up: first-call costs (thread pools, lazy imports) are not throughput
    load_before = os.getloadavg()[0]
    items, clock, extra = runners[args.method](coords)
    peak_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM"))
    return {"method": args.method, "cores": args.cores, "items": items, "seconds": clock.wall,
            "rate": items / clock.wall, "cpu_rate": items / clock.cpu, "peak_rss_mb": peak_kib / 1024,
            "load_before": load_before, "load_after": os.getloadavg()[0], **extra}


def measure(method: str, slide: Path, coords_file: Path, cores: int) -> dict:
    """Run ``worker`` in a fresh process pinned to the first ``cores`` CPUs this process may use."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    command = [sys.executable, __file__, "--worker", method, "--slide", str(slide), "--coords", str(coords_file),
               "--cores", str(cores)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if result.returncode:
        raise RuntimeError(f"{method} on {cores} core(s) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["32768x24576"],
                        help="slides WIDTHxHEIGHT: the project's peak RSS on each, every method timed on the last")
    parser.add_argument("--patch-sets", type=int, default=600)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--coords", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.method = args.worker
        args.cores = args.cores[0]
        print(json.dumps(worker(args)))
        return

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = []  # (size, slide, coords file, tissue cells, methods)
        for size in args.sizes:
            slide = benchmark_slide(size)
            everything, sample = tissue_cells(slide, args.patch_sets)
            coords_file = Path(tmp) / f"{size}.json"
            coords_file.write_text(json.dumps(sample.tolist()))
            plan.append((size, slide, coords_file, len(everything),
                         args.methods if size == args.sizes[-1] else ["a_project_slide"]))
        for _ in range(args.repeats):  # interleaved, so drifts of a shared machine hit every method alike
            for size, slide, coords_file, cells, methods in plan:
                for cores in args.cores:
                    for method in methods:
                        run = {"size": size, "tissue_cells": cells, **measure(method, slide, coords_file, cores)}
                        runs.append(run)
                        print(f"{size} {method} {cores} core(s): {run['rate']:.1f} {UNITS.get(method, 'patch-sets/s')}"
                              f" ({run['cpu_rate']:.1f} per CPU-second, load {run['load_before']:.1f}, "
                              f"peak RSS {run['peak_rss_mb']:.0f} MB)",
                              file=sys.stderr, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(runs, indent=1))
    print(table(runs, args.sizes[-1]))


def table(runs: list[dict], size: str) -> str:
    """Median (best) rate per method and core count; ratios of the project's median to each median."""
    import numpy as np

    groups = {}
    for run in runs:
        groups.setdefault((run["size"], run["method"], run["cores"]), []).append(run)
    median = {key: float(np.median([r["rate"] for r in group])) for key, group in groups.items()}
    cores = sorted({c for _, _, c in groups})
    names = [f"{c} core{'s' * (c > 1)}" for c in cores]
    cpu = {key: float(np.median([r["cpu_rate"] for r in group])) for key, group in groups.items()}
    lines = ["| method | unit | " + " | ".join(f"{n}: median (best)" for n in names) + " | "
             + " | ".join(f"(a) / this, {n}" for n in names)
             + f" | per CPU-second, {names[0]} | peak RSS MB | load avg |",
             "|---|---|" + "---|" * (2 * len(cores)) + "---|---|---|"]
    for method in METHODS:
        keys = [(size, method, c) for c in cores]
        if not any(k in groups for k in keys):
            continue
        rates = [f"{median[k]:.0f} ({max(r['rate'] for r in groups[k]):.0f})" if k in groups else "" for k in keys]
        ratios = [f"{median[(size, 'a_project', c)] / median[k]:.2f}"
                  if k in groups and (size, "a_project", c) in median else "" for k, c in zip(keys, cores)]
        found = [r for k in keys for r in groups.get(k, [])]
        loads = [r["load_before"] for r in found]
        per_cpu = f"{cpu[keys[0]]:.0f}" if keys[0] in cpu else ""
        lines.append(f"| {method} | {UNITS.get(method, 'patch-sets/s')} | " + " | ".join(rates) + " | "
                     + " | ".join(ratios) + f" | {per_cpu} | {max(r['peak_rss_mb'] for r in found):.0f} | "
                     + f"{min(loads):.1f}-{max(loads):.1f} |")
    lines.append("")
    for c in cores:  # (e) runs cluster around two rates on some machines: its best run is the strict limit
        project, decode = (size, "a_project", c), (size, "e_decode", c)
        if project in median and decode in groups:
            best = max(r["rate"] for r in groups[decode])
            lines.append(f"- (a) / (e), {c} core(s): {median[project] / median[decode]:.2f} by medians, "
                         f"{median[project] / best:.2f} against (e)'s best run")
    for (run_size, method, c), group in sorted(groups.items()):
        if method == "a_project_slide":
            lines.append(f"- {run_size}: {group[0]['tissue_cells']} tissue patch-sets, {c} core(s): peak RSS "
                         f"{max(r['peak_rss_mb'] for r in group):.0f} MB, median {median[(run_size, method, c)]:.0f} "
                         f"patch-sets/s, compression {group[0]['compression_ratio']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
