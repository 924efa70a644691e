"""Teacher-target cache: bytes per training patch, and how far its losses are from the on-the-fly Teacher's.

Builds the cache of ``--stores`` as the workflow does (targets pooled to the grids of Students at
``--magnifications``, float16) and, with ``--baseline``, the earlier layout (every target on the Teacher's
grid, float32). Prints bytes per patch (uncompressed, as held in memory, and on disk). Then, for a
smallcnn Student at each magnification (seeded random weights) and ``--batches`` batches of random rows
and D4 elements, computes the CE + 0.1 FM + 10 AT+ loss with the cached targets and with the Teacher run
on the fly, and prints the largest relative difference of the loss and of each term, and of the AT+ maps read
from the cache (derived from the pooled features when the Teacher's are non-negative) against the Teacher's
maps pooled to the same grid (relative to the largest map value).

    python benchmarks/teacher_cache.py --stores results/patches/demo00{0,1}.zarr \\
        --teacher results/models/teacher_40x/seed0/model.pt --out /tmp/cache-bench --baseline
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from wsidistill.device import InferenceSettings
from wsidistill.distill import Distiller, teacher_targets
from wsidistill.distill.attention import align_map
from wsidistill.models import build_model
from wsidistill.models.checkpoint import load_model, student_reads
from wsidistill.patches.dataset import load_patches, to_tensor
from wsidistill.slides.grid import magnification_name
from wsidistill.training.loop import augment_pair
from wsidistill.training.teacher_cache import TeacherCache, build_teacher_cache

WEIGHTS = {"ce": 1, "fm": 0.1, "atplus": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", nargs="+", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--magnifications", type=float, nargs="+", default=[20, 10, 5])
    parser.add_argument("--out", type=Path, required=True, help="folder for the caches (deleted first)")
    parser.add_argument("--baseline", action="store_true", help="also build the float32 Teacher-grid cache")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shutil.rmtree(args.out, ignore_errors=True)
    settings = InferenceSettings(device="cpu", precision="fp32", progress=False, batch_size=args.batch_size)
    students = [{"arch": "smallcnn", "magnification": m} for m in args.magnifications]
    report = {"caches": {}, "agreement": {}}
    builds = {"pooled float16": {"students": students, "dtype": "float16"}}
    if args.baseline:
        builds["Teacher grid float32"] = {"students": (), "dtype": "float32"}
    for name, options in builds.items():
        path = args.out / (name.replace(" ", "_") + ".zarr")
        summary = build_teacher_cache(args.teacher, args.stores, path, ["fm", "atplus"], settings=settings,
                                      loader_workers=0, **options)
        report["caches"][name] = {k: summary[k] for k in ("rows", "sides", "bytes_per_patch", "disk_bytes_per_patch",
                                                         "seconds")}
        print(f"{name}: {summary['rows']} patches, {summary['bytes_per_patch'] / 2**20:.3f} MiB a patch uncompressed, "
              f"{summary['disk_bytes_per_patch'] / 2**20:.3f} MiB on disk, grids {summary['sides']}, "
              f"{summary['seconds']:.0f} s", flush=True)

    teacher, meta = load_model(args.teacher)
    path = args.out / "pooled_float16.zarr"
    rng = np.random.default_rng(0)
    for magnification in args.magnifications:
        patches = load_patches(args.stores, [meta.magnification, magnification])
        side = int(patches.images[magnification_name(magnification)].shape[1])
        stride, sides = student_reads("smallcnn", magnification, meta.magnification, side=side,
                                      teacher_stride=teacher.output_stride)
        cache = TeacherCache.open(path, stores=args.stores, teacher_path=args.teacher, terms=WEIGHTS,
                                  student_sides=sides)
        torch.manual_seed(0)
        student = build_model("smallcnn", meta.num_classes, output_stride=stride)
        distiller = Distiller(student, WEIGHTS, teacher=teacher, num_classes=meta.num_classes)
        worst: dict[str, float] = {}
        for _ in range(args.batches):
            rows = np.sort(rng.choice(len(patches), min(args.batch_size, len(patches)), replace=False))
            elements = torch.from_numpy(rng.integers(0, 8, len(rows)))
            student_view, teacher_view = augment_pair(
                [to_tensor(patches.images[magnification_name(magnification)][rows]),
                 to_tensor(patches.images[magnification_name(meta.magnification)][rows])], elements=elements)
            labels = torch.from_numpy(patches.labels[rows]).long()
            with torch.no_grad():
                fly = teacher_targets(teacher, teacher_view, WEIGHTS)
            cached = cache.read(elements, rows)
            loss_cached, terms_cached = distiller(student_view, labels, cached)
            loss_fly, terms_fly = distiller(student_view, labels, fly)
            # the AT+ maps as read (derived from the pooled features for smallcnn) against the Teacher's, pooled
            pooled = align_map(fly["atplus"], cached["atplus"].shape[-2:])
            worst["atplus map"] = max(worst.get("atplus map", 0.0),
                                      ((cached["atplus"] - pooled).abs().max() / pooled.abs().max()).item())
            for key, (a, b) in {"loss": (loss_cached.item(), loss_fly.item()),
                                **{k: (terms_cached[k], terms_fly[k]) for k in terms_fly}}.items():
                worst[key] = max(worst.get(key, 0.0), abs(a - b) / max(abs(b), 1e-12))
        report["agreement"][magnification_name(magnification)] = {"grid": list(sides["grid"]), **worst}
        print(f"{magnification_name(magnification)} Student ({sides['grid'][0]}x{sides['grid'][1]} grid): largest "
              "relative difference " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
