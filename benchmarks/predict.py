"""Whole-slide prediction speed: the 40x Teacher, the 20/10/5x Students, and tiatoolbox's PatchPredictor.

    .venv/bin/python benchmarks/predict.py                                   # 25600 x 19200 px (0.49 gigapixel)
    .venv/bin/python benchmarks/predict.py --size 4096x3072 --rss-sizes 2048x1536 4096x3072   # quick check

One generated 40x demo slide (Aperio SVS, 256 px JPEG tiles, levels 1/4/16), written once under the
system's temporary folder and reused.  The field of view is ``--field`` px at 40x.  Every run is a
fresh process, timed end to end: open the slide, detect tissue, read and decode at the model's
magnification, infer, write every output (``wsidistill predict``: Zarr, heatmap, GeoJSON, grade).

* ``teacher_40x``, ``student_20x`` / ``10x`` / ``5x``: ``predict_slides`` with smallcnn models of random
  weights (speed does not depend on them); Students take the stride of
  :func:`wsidistill.models.checkpoint.student_output_stride`, so they follow the project's Student rule.
* ``tiatoolbox_40x``: tiatoolbox 2.x ``PatchPredictor.run(patch_mode=False)`` on the same slide, the
  same Teacher wrapped as a tiatoolbox ``ModelABC``, its own tissue mask, ``--field`` px patches at
  40x (units "power"), written as its Zarr output.

Printed (medians of ``--repeats`` interleaved runs), once for one slide per run (latency) and once for
``--run-slides`` copies of the slide in one run, as a cohort is predicted (the outputs of one slide are
written while the next is inferred): patches, seconds per slide, patches/s, CPU seconds
(user + system, all threads: steadier than wall time on a shared machine) and each run's ratios to the Teacher, then
the Teacher's peak RSS (VmHWM of the process) at each of ``--rss-sizes``.  On a shared machine the
figures are noisy; ratios from one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEACHER_MAGNIFICATION = 40
RUNS = ("teacher_40x", "student_20x", "student_10x", "student_5x", "tiatoolbox_40x")
CLASSES = ["NC", "G3", "G4", "G5"]


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "wsidistill-benchmarks"


def benchmark_slide(size: str) -> Path:
    """The generated slide of ``size`` (WIDTHxHEIGHT), written on first use."""
    from wsidistill.demo import plan_cohort, write_slide

    width, height = (int(v) for v in size.split("x"))
    path = cache_dir() / size / "demo000.svs"
    if not path.exists():
        print(f"generating {path} (once) ...", file=sys.stderr, flush=True)
        write_slide(plan_cohort(6, 0)[0], path.parent, width=width, height=height)
    return path


def checkpoint(magnification: float, field: int) -> Path:
    """A random-weight smallcnn saved as training saves it, reading ``field`` px at 40x at ``magnification``."""
    import torch

    from wsidistill.models import build_model
    from wsidistill.models.checkpoint import student_output_stride

    teacher = magnification == TEACHER_MAGNIFICATION
    side = int(field * magnification / TEACHER_MAGNIFICATION)
    stride = None if teacher else student_output_stride("smallcnn", magnification, TEACHER_MAGNIFICATION, side=side)
    # the stride names the file: a change of the Student rule writes a new model, never reuses a stale one
    path = cache_dir() / "models" / f"smallcnn_{magnification:g}x_{field}px_{'teacher' if teacher else f'stride{stride}'}.pt"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = build_model("smallcnn", len(CLASSES), output_stride=stride)
    meta = {"arch": "smallcnn", "num_classes": len(CLASSES), "classes": CLASSES, "magnification": magnification,
            "teacher_magnification": TEACHER_MAGNIFICATION, "output_stride": stride,
            "input_magnification": magnification, "patch_side": side, "student_input": "native",
            "student_grid": None if teacher else "native", "method": "teacher" if teacher else "ce", "seed": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def run_project(slide: Path, magnification: float, args) -> int:
    """``--slides`` copies of the slide in one ``predict_slides`` call (one run over several slides, as a cohort
    is predicted: the outputs of one slide are written while the next is inferred); patches of the first."""
    from wsidistill.predict import PredictSettings, predict_slides

    with tempfile.TemporaryDirectory() as out:
        records = predict_slides([slide] * args.slides, checkpoint(magnification, args.field), out, progress=False,
                                 slide_ids=[f"copy{i}" for i in range(args.slides)],
                                 settings=PredictSettings(threads=args.threads, batch_size=args.batch_size),
                                 device=args.device)
    return records[0]["tissue_patches"]


def run_tiatoolbox(slide: Path, args) -> int:
    """tiatoolbox's WSI patch-prediction engine with our Teacher inside."""
    import numpy as np
    import torch
    import zarr
    from tiatoolbox.models.engine.io_config import IOPatchPredictorConfig
    from tiatoolbox.models.engine.patch_predictor import PatchPredictor
    from tiatoolbox.models.models_abc import ModelABC

    from wsidistill.device import Runtime
    from wsidistill.predict import PredictModel

    teacher = PredictModel.load(checkpoint(TEACHER_MAGNIFICATION, args.field), Runtime(torch.device(args.device)))

    class Teacher(ModelABC):
        """Our network behind tiatoolbox's model interface: uint8 NHWC batch in, softmax probabilities out."""

        def __init__(self):
            super().__init__()
            self.network = teacher.network

        def forward(self, images):
            return torch.softmax(self.network(images).logits, dim=1)

        @staticmethod
        def infer_batch(model, batch_data, *, device="cpu"):
            images = torch.as_tensor(np.asarray(batch_data)).to(device).permute(0, 3, 1, 2).float().div_(255)
            with torch.inference_mode():
                return model(images).cpu().numpy()

    engine = PatchPredictor(model=Teacher(), batch_size=args.batch_size, num_workers=0, device=args.device,
                            verbose=False)
    ioconfig = IOPatchPredictorConfig(input_resolutions=[{"units": "power", "resolution": TEACHER_MAGNIFICATION}],
                                      patch_input_shape=(args.field, args.field),
                                      stride_shape=(args.field, args.field))
    with tempfile.TemporaryDirectory() as out:
        result = engine.run([slide], patch_mode=False, ioconfig=ioconfig, save_dir=Path(out) / "tia",
                            output_type="zarr", overwrite=True)
        store = next(iter(result.values())) if isinstance(result, dict) else result
        root = zarr.open(str(store), mode="r")
        return int(root["probabilities"].shape[0] if "probabilities" in root else root["predictions"].shape[0])


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads (dask's readers included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(args) -> None:
    """One run, in this process; prints its figures as JSON.  Imports are not timed: they are per process, not per slide."""
    import torch  # noqa: F401

    import wsidistill.predict  # noqa: F401
    import wsidistill.report.heatmaps  # noqa: F401

    if args.worker == "tiatoolbox_40x":
        import tiatoolbox.models.engine.patch_predictor  # noqa: F401
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    if args.worker == "tiatoolbox_40x":
        patches = run_tiatoolbox(args.slide, args)
    else:
        patches = run_project(args.slide, float(args.worker.split("_")[1].rstrip("x")), args)
    seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
    peak_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM"))
    print(json.dumps({"run": args.worker, "slides": args.slides, "patches": patches,
                      "seconds": seconds / args.slides, "cpu_seconds": cpu_seconds / args.slides,
                      "peak_rss_mb": peak_kib / 1024,
                      "load": os.getloadavg()[0]}))


def measure(run: str, slide: Path, args, slides: int = 1) -> dict:
    """One fresh process: ``slides`` copies of ``slide`` in one run; seconds are per slide."""
    command = [sys.executable, __file__, "--worker", run, "--slide", str(slide), "--slides", str(slides),
               "--field", str(args.field),
               "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        return {"run": run, "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """One run's figures as the medians of its repeats (failed repeats left out; all failed: the first error)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    return {**ok[0], **{key: statistics.median(r[key] for r in ok)
                        for key in ("seconds", "cpu_seconds", "peak_rss_mb", "load")}, "repeats": len(ok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="25600x19200", help="slide of the speed runs, WIDTHxHEIGHT at 40x")
    parser.add_argument("--rss-sizes", nargs="+", default=["16384x12288", "32768x24576"],
                        help="slides of the Teacher's peak-RSS runs (0.2 and 0.8 gigapixel)")
    parser.add_argument("--field", type=int, default=256, help="patch side in px at 40x")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the table gives medians")
    parser.add_argument("--run-slides", type=int, default=4,
                        help="also time our runs over this many copies of the slide in one run (per slide); 1: not")
    parser.add_argument("--slides", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    slide = benchmark_slide(args.size)
    for magnification in (40, 20, 10, 5):
        checkpoint(magnification, args.field)
    # repeats interleaved (every run once, then again), so a burst of load elsewhere hits them alike
    # every (run, slides) once, then again: a burst of load elsewhere hits them alike
    plan = [(run, 1) for run in args.runs]
    if args.run_slides > 1:
        plan += [(run, args.run_slides) for run in args.runs if run != "tiatoolbox_40x"]
    repeats = [[measure(run, slide, args, slides) for run, slides in plan] for _ in range(args.repeats)]
    runs = [_median(list(same)) for same in zip(*repeats)]
    width, height = (int(v) for v in args.size.split("x"))
    print(f"\n{args.size} px ({width * height / 1e9:.2f} gigapixel), {args.field} px field at 40x, "
          f"{args.threads} threads, {args.device}, median of {args.repeats}")
    for slides in sorted({slides for _, slides in plan}):
        print("\none slide per run (latency)" if slides == 1 else
              f"\n{slides} slides per run (one predict call over {slides} copies; per slide)")
        print(f"{'run':<16}{'patches':>9}{'s/slide':>10}{'patches/s':>11}{'vs Teacher':>12}"
              f"{'CPU s':>9}{'CPU vs Teacher':>16}{'peak RSS MB':>13}")
        same = [r for r, (_, n) in zip(runs, plan) if n == slides]
        teacher = next((r for r in same if r["run"] == "teacher_40x" and "error" not in r), None)
        for r in same:
            if "error" in r:
                print(f"{r['run']:<16} failed: {r['error']}")
                continue
            ratio = f"{teacher['seconds'] / r['seconds']:.2f}x" if teacher else "-"
            cpu_ratio = f"{teacher['cpu_seconds'] / r['cpu_seconds']:.2f}x" if teacher else "-"
            print(f"{r['run']:<16}{r['patches']:>9}{r['seconds']:>10.2f}{r['patches'] / r['seconds']:>11.1f}"
                  f"{ratio:>12}{r['cpu_seconds']:>9.2f}{cpu_ratio:>16}{r['peak_rss_mb']:>13.0f}")
    rss = [{**measure("teacher_40x", benchmark_slide(size), args), "size": size} for size in args.rss_sizes]
    print("\nTeacher peak RSS by slide size:")
    for r in rss:
        print(f"  {r['size']:>12}: " + (f"{r['peak_rss_mb']:.0f} MB ({r['patches']} patches, {r['seconds']:.1f} s)"
                                        if "error" not in r else f"failed: {r['error']}"))
    if len(rss) >= 2 and all("error" not in r for r in rss):
        print(f"  largest / smallest: {rss[-1]['peak_rss_mb'] / rss[0]['peak_rss_mb']:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} (shared machine: figures are noisy)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "repeats": repeats, "rss": rss}, indent=2))


if __name__ == "__main__":
    main()
