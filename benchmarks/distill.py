"""Time one distillation training step: CE only, CE+FM+AT+ from the Teacher-target cache, and on the fly.

    .venv/bin/python benchmarks/distill.py                       # synthetic demo-sized patches
    .venv/bin/python benchmarks/distill.py --stores results/patches/demo00{0,1,2}.zarr --teacher \\
        results/models/teacher_40x/seed0/model.pt                # real stores and Teacher

Every configuration runs the whole step of the training loop (``wsidistill.training.loop.train``) on the same
batches: gather uint8 rows, to float, per-sample D4 augmentation of the views, Teacher targets (read
from the cache, or computed), Student forward, loss, backward, Adam step. Batch 32, 20x Student
(smallcnn, output stride 4, 64 px; ``--magnification 10`` or ``5`` for the others), 40x Teacher
(smallcnn, stride 8, 128 px):

* ``ce``: CE only.
* ``atplus_cached``: CE + 0.1 FM + 10 AT+, Teacher targets read from the cache as training does by
  default: the cache's arrays are in memory (they fit the 2 GiB default budget, as the demo's do).
* ``atplus_cached_disk``: the same, the features read per batch from their chunk files (one row
  per chunk; the OS page cache warm): the path of caches over the memory budget, the demo's own.
* ``atplus_on_the_fly``: the library without the cache: a Teacher forward pass at 128 px every step,
  closed-form AT+ maps, native 64 px Student.
* ``atplus_reference``: the reference code's style: Teacher forward at 128 px every step, Student on
  the upsampled Student view (128 px, stride 8, the Teacher's grid), AT+ maps of both networks from
  autograd Grad-CAM (``atplus_maps(..., logits=...)``), the Student's with ``create_graph=True``
  (double backpropagation).

Each round runs one step of every configuration on the same batch, in a shuffled order, so load
from elsewhere on a shared machine hits all alike; medians are reported with their ratios to ``ce``
measured in the same run, and the median of the per-round (paired) ratios. Prints a Markdown table
and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from wsidistill.device import InferenceSettings
from wsidistill.distill import Distiller, losses, student_input_from, teacher_targets
from wsidistill.distill.attention import atplus_maps
from wsidistill.models import build_model
from wsidistill.models.checkpoint import load_model
from wsidistill.patches.dataset import load_patches, to_tensor
from wsidistill.training.loop import augment_pair
from wsidistill.training.teacher_cache import TeacherCache, build_teacher_cache

CLASSES = 4
WEIGHTS = {"ce": 1.0, "fm": 0.1, "atplus": 10.0}


def synthetic_stores(root: Path, patches: int, side: int = 128, slides: int = 2, seed: int = 0) -> list[Path]:
    """Stores in the extraction layout: smooth random colour fields at 40x, their area means at 20x, 10x, 5x."""
    rng = np.random.default_rng(seed)
    stores = []
    for index in range(slides):
        n = patches // slides + (index < patches % slides)
        coarse = rng.integers(0, 256, (n, side // 8, side // 8, 3)).astype(np.float32)
        high = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2) + rng.normal(0, 12, (n, side, side, 3))
        high = high.clip(0, 255).astype(np.uint8)
        views = {"40x": high}
        for factor in (2, 4, 8):
            views[f"{40 // factor}x"] = high.reshape(n, side // factor, factor, side // factor, factor, 3).mean(
                axis=(2, 4)).round().astype(np.uint8)
        path = root / f"slide{index}.zarr"
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.create_array("coords", data=np.stack([np.arange(n) * side, np.full(n, index)], axis=1))
        group.create_array("labels", data=rng.integers(0, CLASSES, n).astype(np.int8))
        for name, images in views.items():
            group.create_group(name).create_array("images", data=images, chunks=(32, *images.shape[1:]))
        group.attrs.update({"slide_id": f"synthetic{index}", "skipped_magnifications": []})
        stores.append(path)
    return stores


def random_teacher(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    teacher = build_model("smallcnn", CLASSES, output_stride=8)
    meta = {"arch": "smallcnn", "num_classes": CLASSES, "output_stride": 8, "magnification": 40}
    torch.save({"state_dict": teacher.state_dict(), "meta": meta}, path)
    return path


class Step:
    """One configuration: its own Student and optimiser, and a callable for one training step."""

    def __init__(self, name, run, model):
        self.name, self.run, self.times, self.cpu = name, run, [], []
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self, batch) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        loss = self.run(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.times.append(time.perf_counter() - started)
        self.cpu.append(time.process_time() - cpu)


def make_steps(patches, teacher, caches: dict[str, TeacherCache], plan, magnification: int = 20) -> list[Step]:
    torch.manual_seed(1)
    factor = 40 // magnification
    student, stride = f"{magnification}x", 8 // factor
    views = lambda batch, names: augment_pair(  # noqa: E731
        [to_tensor(patches.images[name][batch["rows"]]) for name in names], elements=batch["elements"])
    labels = lambda batch: torch.from_numpy(patches.labels[batch["rows"]])  # noqa: E731
    steps = []

    ce = Distiller(build_model("smallcnn", CLASSES, output_stride=stride), {"ce": 1.0}, num_classes=CLASSES).train()
    steps.append(Step("ce", lambda b: ce(views(b, [student])[0], labels(b), None)[0], ce))

    def cached_step(name, targets):
        distiller = Distiller(build_model("smallcnn", CLASSES, output_stride=stride), WEIGHTS, teacher=teacher,
                              num_classes=CLASSES).train()
        return Step(name, lambda b: distiller(views(b, [student])[0], labels(b), targets(b))[0], distiller)

    memory = caches["memory"].iterate((b["elements"], b["rows"]) for b in plan)
    steps.append(cached_step("atplus_cached", lambda b: next(memory)))
    steps.append(cached_step("atplus_cached_disk", lambda b: caches["disk"].read(b["elements"], b["rows"])))

    fly = Distiller(build_model("smallcnn", CLASSES, output_stride=stride), WEIGHTS, teacher=teacher,
                    num_classes=CLASSES).train()

    def on_the_fly(b):
        student_view, teacher_view = views(b, [student, "40x"])
        return fly(student_view, labels(b), teacher_targets(teacher, teacher_view, WEIGHTS))[0]

    steps.append(Step("atplus_on_the_fly", on_the_fly, fly))

    reference = build_model("smallcnn", CLASSES, output_stride=8).train()

    def reference_step(b):
        (teacher_view,) = views(b, ["40x"])
        with torch.enable_grad():  # Teacher Grad-CAM by autograd, as the reference code does
            teacher_input = teacher_view.detach().requires_grad_(True)
            out_t = teacher(teacher_input)
            features_t = list(out_t.features.values())[-1]
            map_t = atplus_maps(features_t, logits=out_t.logits).detach()
        student_input = student_input_from(teacher_view, "upsampled", factor)
        out_s = reference(student_input)
        features_s = list(out_s.features.values())[-1]
        map_s = atplus_maps(features_s, logits=out_s.logits, create_graph=True)  # double backpropagation
        return (losses.ce(out_s.logits, labels(b)) + 0.1 * losses.fm(features_s, features_t.detach())
                + 10 * losses.atplus(map_s, map_t))

    steps.append(Step("atplus_reference", reference_step, reference))
    return steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", type=Path, help="patch stores at 40x and the Student's (default: synthetic)")
    parser.add_argument("--magnification", type=int, choices=[20, 10, 5], default=20, help="the Student's (default 20)")
    parser.add_argument("--teacher", type=Path, help="40x Teacher checkpoint (default: a random smallcnn)")
    parser.add_argument("--cache", type=Path, help="an existing cache of --teacher and --stores (default: build one)")
    parser.add_argument("--patches", type=int, default=384, help="synthetic patches (default 384)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30, help="timed steps per configuration (default 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="where to write stores and the cache (default: a temporary dir)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wsidistill-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stores = args.stores or synthetic_stores(workdir / "patches", args.patches)
    teacher_path = args.teacher or random_teacher(workdir / "teacher.pt")
    teacher, _ = load_model(teacher_path)
    patches = load_patches(stores, [40, args.magnification])

    cache_path = args.cache or workdir / "cache.zarr"
    if args.cache:
        files = [f for f in cache_path.rglob("*") if f.is_file()]
        summary = {"seconds": float("nan"), "disk_bytes": sum(f.stat().st_size for f in files),
                   "nbytes": {k: group[k].nbytes for group in [zarr.open_group(str(cache_path))]
                              for k in group.attrs["keys"] if k not in group.attrs.get("derived", {})}}
    else:
        summary = build_teacher_cache(teacher_path, stores, cache_path, WEIGHTS, settings=InferenceSettings(
            device="cpu", precision="fp32", threads=args.threads, progress=False))
    caches = {name: TeacherCache.open(cache_path, stores=stores, teacher_path=teacher_path, terms=WEIGHTS,
                                      **({} if name == "memory" else {"memory_bytes": 64 << 20}))
              for name in ("memory", "disk")}
    if caches["memory"].on_disk or not caches["disk"].on_disk:
        raise SystemExit(f"expected the cache in memory by default and the features on disk under 64 MiB "
                         f"(on disk: {caches['memory'].on_disk}, {caches['disk'].on_disk})")

    rng = np.random.default_rng(0)
    batches = [{"rows": np.sort(rng.choice(len(patches), args.batch_size, replace=False)),
                "elements": torch.from_numpy(rng.integers(0, 8, args.batch_size))} for _ in range(args.rounds + 2)]
    steps = make_steps(patches, teacher, caches, batches, args.magnification)
    for batch in batches[:2]:  # warm-up: allocator, oneDNN kernels
        for step in steps:
            step(batch)
    load_before = os.getloadavg()[0]
    for step in steps:
        step.times.clear()
        step.cpu.clear()
    for batch in batches[2:]:  # one step of each configuration per round, on the same batch, in a shuffled order
        for index in rng.permutation(len(steps)):
            steps[index](batch)
    load_after = os.getloadavg()[0]
    timed = {step.name: step.times for step in steps}
    cpu = {step.name: step.cpu for step in steps}
    # Paired: each step over the CE-only step of the same round, so a burst of load elsewhere cancels out.
    paired = {name: statistics.median(np.divide(times, timed["ce"])) for name, times in timed.items()}

    medians = {name: statistics.median(times) for name, times in timed.items()}
    cpu_medians = {name: statistics.median(times) for name, times in cpu.items()}
    quartiles = {name: np.percentile(times, [25, 75]).tolist() for name, times in timed.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, CPU",
        "batch_size": args.batch_size,
        "student_magnification": args.magnification,
        "steps_per_config": len(next(iter(timed.values()))),
        "patches": len(patches),
        "data": "given stores" if args.stores else "synthetic",
        "cache": {"build_seconds": summary["seconds"], "disk_bytes": summary["disk_bytes"],
                  "nbytes": summary["nbytes"]},
        "median_s": medians,
        "quartiles_s": quartiles,
        "ratio_to_ce": {name: medians[name] / medians["ce"] for name in medians},
        "reference_over_cached": medians["atplus_reference"] / medians["atplus_cached"],
        "paired_ratio_to_ce": paired,
        "paired_reference_over_cached": statistics.median(
            np.divide(timed["atplus_reference"], timed["atplus_cached"])),
        "cpu_median_s": cpu_medians,
        "cpu_ratio_to_ce": {name: cpu_medians[name] / cpu_medians["ce"] for name in cpu_medians},
        "load_average": [load_before, load_after],
    }
    print(f"{args.magnification}x Student, {result['patches']} {result['data']} patches, batch {args.batch_size}, "
          f"{result['steps_per_config']} "
          f"timed steps per configuration, {result['machine']}, {os.cpu_count()} CPUs, "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"cache: {summary['disk_bytes'] / 2**20:.0f} MiB on disk "
          f"({sum(summary['nbytes'].values()) / 2**20:.0f} MiB raw), built in {summary['seconds']:.1f} s")
    print("\n| step | median ms | IQR ms | x CE-only | x CE-only, paired | CPU ms (all threads) |"
          "\n|---|---:|---:|---:|---:|---:|")
    for name in medians:
        low, high = quartiles[name]
        print(f"| {name} | {medians[name] * 1e3:.0f} | {low * 1e3:.0f}-{high * 1e3:.0f} | "
              f"{result['ratio_to_ce'][name]:.2f} | {paired[name]:.2f} | {cpu_medians[name] * 1e3:.0f} |")
    print(f"\nreference style / cached AT+: {result['reference_over_cached']:.2f}x "
          f"(paired: {result['paired_reference_over_cached']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
