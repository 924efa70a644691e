"""Memory and time of training and of the Teacher-cache build as the cohort grows (issue 18).

    .venv/bin/python benchmarks/scale.py                                   # 1x, 4x, 16x the demo's patches
    .venv/bin/python benchmarks/scale.py --side 256                        # at the demo's 256 px (slower)
    .venv/bin/python benchmarks/scale.py --demo-stores results/patches/demo0*.zarr   # + streamed vs in memory

Synthetic stores (smooth colour fields whose tint follows the label, ``--side`` px at 40x, default 128,
Blosc-LZ4 chunks of 2 MiB as extraction writes them; 200 patches a slide) at each multiple of
``--base-patches`` (default 415: the demo's labelled training patches at its 256 px field of view). Every measurement runs in a fresh child process, so its
peak RSS is its own:

* ``train``: one epoch of Teacher training (smallcnn, batch 32, D4, 1 intra-op thread) with patches
  streamed from the stores (``memory_budget_mb: 0``, ``loader_workers`` workers) and, for reference,
  read into memory. Seconds of the epoch's training pass, of its validation (precise-BN recalibration
  over the training set, then one 200-patch validation store), peak RSS of the training process
  (``ru_maxrss``) and of its process tree (sampled every 50 ms: RSS of the workers included, pages
  they share with the parent counted twice). The loader's throughput (batches/s of the same epoch's
  DataLoader alone) against the model step's (batches/s of forward, backward and Adam step on a batch
  in memory): the loader keeps up when its rate is above the step's.
* ``cache``: the Teacher-cache build (``build_teacher_cache``, terms ``atplus``, so the cache stays
  small on disk: AT+ maps are 4 KiB a patch and element) on the first ``--cache-fraction`` of each
  cohort: seconds and peak RSS.
* ``--demo-stores``: the training step on real stores (the demo's kept JPEG tiles at 40x), streamed
  against in memory, in alternating rounds.

Prints a Markdown table of the figures and their ratios to 1x measured in the same run; ``--json``
writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = ["NC", "G3", "G4", "G5"]
SIDE = 128
PER_SLIDE = 200


def write_cohort(root: Path, patches: int, seed: int, side: int = SIDE) -> list[str]:
    """``patches`` labelled 40x patches of ``side`` px in stores of PER_SLIDE, written through the store layout's
    writers."""
    import zarr

    from wsidistill.patches import store
    from wsidistill.patches.extract import CHUNK_BYTES, PATCH_CODEC
    from wsidistill.patches.zarr_io import PatchWriter, chunk_files

    rng = np.random.default_rng(seed)
    tints = np.array([[230, 200, 220], [200, 120, 170], [150, 80, 150], [90, 40, 110]], np.float32)
    paths = []
    for index, start in enumerate(range(0, patches, PER_SLIDE)):
        n = min(PER_SLIDE, patches - start)
        path = root / f"slide{index:04d}.zarr"
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        labels = rng.integers(0, len(CLASSES), n).astype(np.int8)
        group.create_array(store.COORDS, data=np.stack([np.arange(n) * side, np.zeros(n, np.int64)], axis=1))
        group.create_array(store.LABELS, data=labels)
        rows = int(np.clip(CHUNK_BYTES // (side * side * 3), 1, 4096))
        images = group.create_group("40x").create_array(store.IMAGES, shape=(n, side, side, 3), dtype=np.uint8,
                                                          chunks=(rows, side, side, 3), compressors=PATCH_CODEC)
        coarse = rng.normal(0, 25, (n, side // 16, side // 16, 3)).astype(np.float32)
        field = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2) + tints[labels][:, None, None, :]
        pixels = (field + rng.normal(0, 8, field.shape)).clip(0, 255).astype(np.uint8)
        with PatchWriter({"40x": images}, path) as writer:
            writer.append({"40x": pixels})
        attributes = store.StoreAttributes(
            slide_id=f"synthetic{index:04d}", source_path="synthetic", mpp=0.25, mpp_source="synthetic",
            objective_power=40.0, objective_power_source="synthetic", classes=CLASSES, magnifications=["40x"],
            skipped_magnifications=[], teacher_magnification=40.0, patch_size=side, patch_sizes={"40x": side},
            cell_level0=side, grid={"columns": n, "rows": 1}, thumbnail_downsample=1.0, min_label_fraction=0.5,
            tissue_method="synthetic")
        group.attrs.update({**attributes.to_dict(), store.CHUNK_FILES: chunk_files(path)})
        paths.append(str(path))
    return paths


def child_train(args) -> dict:
    import torch

    from wsidistill.patches.dataset import to_tensor
    from wsidistill.training.loop import Trainer, TrainJob, TrainSettings, augment_pair

    settings = TrainSettings(epochs=1, batch_size=32, memory_budget_mb=args.budget, loader_workers=args.workers,
                             device="cpu")
    out = Path(args.out)
    started = time.perf_counter()
    trainer = Trainer(TrainJob(train_stores=args.stores, val_stores=args.val, classes=CLASSES, magnification=40,
                               arch="smallcnn", weights={"ce": 1}, seed=0, out_model=out / "model.pt",
                               out_history=out / "history.csv"), settings, threads=1, progress=False)
    setup = time.perf_counter() - started
    seconds = {}

    def timed(name, method):
        def run(*a):
            started = time.perf_counter()
            result = method(*a)
            seconds[name] = time.perf_counter() - started
            return result
        return run

    optimise, epoch_batches = trainer._optimise, []

    def optimise_recording(epoch):
        result = optimise(epoch)
        epoch_batches[:] = trainer.sampler.batches  # the run's loader reads validation next
        return result

    trainer._optimise, trainer.validate = timed("epoch", optimise_recording), timed("validate", trainer.validate)
    trainer.train_epoch()
    epoch, validate = seconds["epoch"], seconds["validate"]
    batches = len(epoch_batches)
    # the loader alone over the same epoch's batches
    trainer.sampler.batches = epoch_batches
    started = time.perf_counter()
    for _ in trainer.loader:
        pass
    loader = time.perf_counter() - started
    # the model step alone, on one batch in memory
    batch = next(iter(trainer.loader))
    model, optimizer = trainer.distiller, trainer.optimizer
    steps = min(batches, 10)
    started = time.perf_counter()
    for _ in range(steps):
        view = augment_pair([to_tensor(batch["images"]["40x"])], elements=torch.randint(0, 8, (len(batch["rows"]),)))[0]
        loss, _ = model(view, batch["labels"], None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    step = (time.perf_counter() - started) / steps
    if args.save_model:
        trainer.finish()
    return {"patches": len(trainer.train_set), "in_memory": trainer.in_memory, "setup_s": setup,
            "epoch_s": epoch, "validate_s": validate, "batches": batches, "step_s": epoch / batches,
            "loader_batches_per_s": batches / loader, "model_batches_per_s": 1 / step,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_cache(args) -> dict:
    from wsidistill.device import InferenceSettings
    from wsidistill.training.teacher_cache import build_teacher_cache

    settings = InferenceSettings(batch_size=64, device="cpu", precision="fp32", progress=False)
    summary = build_teacher_cache(args.teacher, args.stores, args.out, ["atplus"], settings=settings,
                                  loader_workers=args.workers)
    return {"patches": summary["rows"], "seconds": summary["seconds"], "disk_mb": summary["disk_bytes"] / 2**20,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(argv: list[str]) -> dict:
    """Run this script's child command; return its JSON and the peak RSS of its process tree (sampled)."""
    import psutil

    process = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    peak, parent = 0, psutil.Process(process.pid)
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = process.communicate()
    done.set()
    thread.join()
    if process.returncode:
        raise SystemExit(f"child {argv[0]} failed ({process.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "tree_peak_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-patches", type=int, default=415, help="1x: the demo's labelled training patches")
    parser.add_argument("--side", type=int, default=SIDE, help="patch side in px at 40x")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=2, help="training.loader_workers")
    parser.add_argument("--cache-fraction", type=float, default=0.25)
    parser.add_argument("--demo-stores", nargs="*", default=[])
    parser.add_argument("--demo-rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, help="where the synthetic stores go (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="wsidistill-scale-"))
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count(), "train": {},
                     "train_in_memory": {}, "cache": {}, "demo": []}
    val = write_cohort(root / "val", PER_SLIDE, seed=99, side=args.side)
    teacher = root / "teacher"
    for scale in args.scales:
        started = time.perf_counter()
        stores = write_cohort(root / f"x{scale}", args.base_patches * scale, seed=scale, side=args.side)
        print(f"{scale}x: {args.base_patches * scale} patches written in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
        common = ["--stores", *stores, "--val", *val, "--workers", str(args.workers)]
        first = scale == args.scales[0]
        results["train"][scale] = run_child(["_train", *common, "--budget", "0", "--out", str(root / f"m{scale}"),
                                             *(["--save-model"] if first else [])])
        if first:
            (teacher / "model.pt").parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / f"m{scale}" / "model.pt", teacher / "model.pt")
        results["train_in_memory"][scale] = run_child(["_train", *common, "--budget", "1e9",
                                                       "--out", str(root / f"mm{scale}")])
        subset = stores[: max(1, round(len(stores) * args.cache_fraction))]
        results["cache"][scale] = run_child(["_cache", "--stores", *subset, "--teacher", str(teacher / "model.pt"),
                                             "--workers", str(args.workers), "--out", str(root / f"cache{scale}.zarr")])
        print(json.dumps({k: results[k][scale] for k in ("train", "train_in_memory", "cache")}), file=sys.stderr,
              flush=True)
    for _ in range(args.demo_rounds if args.demo_stores else 0):
        for budget in ("0", "1e9"):
            results["demo"].append(run_child(["_train", "--stores", *args.demo_stores, "--val", *val, "--workers",
                                               str(args.workers), "--budget", budget, "--out", str(root / "demo")]))
    print(report(results, args.scales))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(results: dict, scales: list[int]) -> str:
    base = scales[0]
    lines = ["| cohort | patches | path | epoch s (x 1x) | s/step | validate s | peak RSS MiB (x 1x) | tree peak MiB "
             "| loader / step batches/s |", "|---|---|---|---|---|---|---|---|---|"]
    for key, path in (("train", "streamed"), ("train_in_memory", "in memory")):
        for scale in scales:
            r, r0 = results[key][scale], results[key][base]
            lines.append(f"| {scale}x | {r['patches']} | {path} | {r['epoch_s']:.1f} ({r['epoch_s'] / r0['epoch_s']:.2f}) "
                         f"| {r['step_s']:.3f} | {r['validate_s']:.1f} | {r['maxrss_mb']:.0f} "
                         f"({r['maxrss_mb'] / r0['maxrss_mb']:.2f}) | {r['tree_peak_mb']:.0f} "
                         f"| {r['loader_batches_per_s']:.1f} / {r['model_batches_per_s']:.1f} |")
    lines += ["", "| cache build | patches | s (x 1x) | peak RSS MiB (x 1x) | tree peak MiB | disk MiB |",
              "|---|---|---|---|---|---|"]
    for scale in scales:
        r, r0 = results["cache"][scale], results["cache"][base]
        lines.append(f"| {scale}x | {r['patches']} | {r['seconds']:.1f} ({r['seconds'] / r0['seconds']:.2f}) | "
                     f"{r['maxrss_mb']:.0f} ({r['maxrss_mb'] / r0['maxrss_mb']:.2f}) | {r['tree_peak_mb']:.0f} | "
                     f"{r['disk_mb']:.0f} |")
    if results["demo"]:
        streamed = [r["step_s"] for r in results["demo"] if not r["in_memory"]]
        memory = [r["step_s"] for r in results["demo"] if r["in_memory"]]
        ratios = [s / m for s, m in zip(streamed, memory)]
        lines += ["", f"demo stores ({results['demo'][0]['patches']} patches): streamed step "
                      f"{np.median(streamed):.3f} s, in memory {np.median(memory):.3f} s, paired ratio median "
                      f"{np.median(ratios):.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})"]
    return "\n".join(lines)


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["_train", "_cache"])
    parser.add_argument("--stores", nargs="+", required=True)
    parser.add_argument("--val", nargs="*", default=[])
    parser.add_argument("--teacher")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--save-model", action="store_true")
    args = parser.parse_args(argv)
    result = child_train(args) if args.command == "_train" else child_cache(args)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        child_main(sys.argv[1:])
    else:
        main()
