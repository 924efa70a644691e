"""A training run streamed from the stores against the same run in memory, on real stores.

Each round, in a fresh process, trains one model (smallcnn, CE, D4, batch 32, 1 intra-op thread, the schema's
other training defaults) for ``--epochs`` epochs (default: ``training.epochs`` of the repository's
``config.yaml``, the demo's) twice: once with patches read into memory, once streamed by ``--workers`` loader
workers (``training.memory_budget_mb: 0``). The two runs' epochs are interleaved (which run goes first
alternates by round and by epoch), so each pair of epochs meets the same load on a shared machine. It times

* set-up: the Trainer's constructor, which for the in-memory path reads every patch into memory (decoding kept
  JPEG tiles) and for the streamed path starts the loader workers;
* per epoch, the optimisation pass (``Trainer._optimise``: reading, augmentation, forward, backward, Adam), and
  the rest of the epoch (``Trainer.train_epoch``: precise BN over the training patches, validation on
  ``--val-stores``, the checkpoint and history written).

It prints (a) per epoch, the streamed / in-memory ratio of the seconds per step (medians over rounds), and
the ratios of the first epoch's and of the later epochs' steps; (b) the whole run a user waits for: set-up
plus every epoch, with the in-memory path's loading counted, streamed / in memory. Every ratio is paired:
streamed over the in-memory run of the same round (same process), median over rounds.

    python benchmarks/stream_step.py --stores results/patches/demo00{0,1,2,3,4}.zarr \\
        results/patches/demo0{09,10}.zarr --val-stores results/patches/demo00{5,6,7}.zarr \\
        --magnification 40 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ["NC", "G3", "G4", "G5"]


def demo_epochs() -> int:
    import yaml

    return int(yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["training"]["epochs"])


def child(args) -> dict:
    """Both runs in this process, epochs interleaved (the first run's epoch e, then the second's, the order
    alternating each epoch), so that each pair of epochs meets the same load on a shared machine."""
    import torch

    from wsidistill.models import build_model
    from wsidistill.patches.dataset import StorePatches
    from wsidistill.training.loop import Trainer, TrainJob, TrainSettings

    # Warm the process up first (allocator, kernels for this input size), or the run that goes first pays it.
    torch.set_num_threads(1)
    side = StorePatches(args.stores[:1], [args.magnification]).shapes[f"{args.magnification:g}x"][0]
    model = build_model("smallcnn", len(CLASSES))
    for _ in range(3):
        model(torch.rand(32, 3, side, side)).logits.sum().backward()
    order = [0, 1 << 20] if args.round % 2 == 0 else [1 << 20, 0]  # memory budgets: streamed, in memory
    runs, trainers = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for budget in order:
            settings = TrainSettings(epochs=args.epochs, batch_size=32, memory_budget_mb=budget,
                                     loader_workers=args.workers, device="cpu", patience=None)
            started = time.perf_counter()
            trainer = Trainer(TrainJob(train_stores=args.stores, val_stores=args.val_stores or args.stores[:1],
                                       classes=CLASSES, magnification=args.magnification, arch="smallcnn",
                                       weights={"ce": 1}, seed=0, out_model=Path(out) / str(budget) / "model.pt",
                                       out_history=Path(out) / str(budget) / "history.csv"),
                              settings, threads=1, progress=False)
            mode = "in memory" if trainer.in_memory else "streamed"
            runs[mode] = {"setup_s": time.perf_counter() - started, "optimise_s": [], "rest_s": []}
            trainers[mode] = trainer
            optimise = trainer._optimise

            def timed(epoch, optimise=optimise, run=runs[mode]):
                started = time.perf_counter()
                result = optimise(epoch)
                run["optimise_s"].append(time.perf_counter() - started)
                return result

            trainer._optimise = timed
        for epoch in range(args.epochs):
            modes = list(trainers) if epoch % 2 == 0 else list(trainers)[::-1]
            for mode in modes:
                started = time.perf_counter()
                trainers[mode].train_epoch()
                runs[mode]["rest_s"].append(time.perf_counter() - started - runs[mode]["optimise_s"][-1])
    steps = -(-len(trainers["streamed"].train_set) // 32)
    for run in runs.values():
        run["step_s"] = [s / steps for s in run["optimise_s"]]
        run["run_s"] = run["setup_s"] + sum(run["optimise_s"]) + sum(run["rest_s"])
    return {"patches": len(trainers["streamed"].train_set), "steps": steps, "first": list(trainers), **runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", nargs="+", required=True, help="training stores")
    parser.add_argument("--val-stores", nargs="*", default=[], help="validation stores (default: the first store)")
    parser.add_argument("--magnification", type=float, default=40)
    parser.add_argument("--epochs", type=int, default=None, help="default: config.yaml's training.epochs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.epochs = args.epochs or demo_epochs()
    if args.child:
        print(json.dumps(child(args)))
        return
    rounds = []
    for round_ in range(args.rounds):
        command = [sys.executable, __file__, "--child", "--round", str(round_), "--stores", *args.stores,
                   "--val-stores", *args.val_stores, "--magnification", str(args.magnification),
                   "--epochs", str(args.epochs), "--workers", str(args.workers)]
        run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rounds.append(run)
        for mode in run["first"]:
            r = run[mode]
            print(f"round {round_} {mode:9}: set-up {r['setup_s']:.2f} s, s/step per epoch "
                  + " ".join(f"{s:.3f}" for s in r["step_s"])
                  + f"; rest of epochs {sum(r['rest_s']):.2f} s; run {r['run_s']:.2f} s", flush=True)
    paired = [[r["streamed"]["step_s"][e] / r["in memory"]["step_s"][e] for r in rounds] for e in range(args.epochs)]
    median = {mode: {"epochs": [statistics.median(r[mode]["step_s"][e] for r in rounds) for e in range(args.epochs)],
                     "first": statistics.median(r[mode]["step_s"][0] for r in rounds),
                     "later": statistics.median(s for r in rounds for s in r[mode]["step_s"][1:]),
                     "setup": statistics.median(r[mode]["setup_s"] for r in rounds),
                     "rest": statistics.median(sum(r[mode]["rest_s"]) for r in rounds),
                     "run": statistics.median(r[mode]["run_s"] for r in rounds)} for mode in ("streamed", "in memory")}
    streamed, memory = median["streamed"], median["in memory"]
    summary = {"median": median, "patches": rounds[0]["patches"], "steps_per_epoch": rounds[0]["steps"],
               "paired_ratio_per_epoch": [statistics.median(p) for p in paired],
               "paired_ratio_first": statistics.median(paired[0]),
               "paired_ratio_later": statistics.median(x for p in paired[1:] for x in p),
               "paired_ratio_run": statistics.median(r["streamed"]["run_s"] / r["in memory"]["run_s"] for r in rounds)}
    print(f"{summary['patches']} patches at {args.magnification:g}x, {summary['steps_per_epoch']} steps an epoch, "
          f"{args.epochs} epochs, {args.rounds} rounds; medians over rounds, streamed / in memory, "
          "(paired ratio: median over rounds of the ratio within a round)")
    print("(a) s/step per epoch: " + ", ".join(f"{s:.3f}/{m:.3f} ({r:.2f})" for s, m, r in zip(
        streamed["epochs"], memory["epochs"], summary["paired_ratio_per_epoch"])))
    for phase in ("first", "later"):
        print(f"    {phase} epoch{'s' if phase == 'later' else ''}: {streamed[phase]:.3f} / {memory[phase]:.3f} s/step, "
              f"paired ratio {summary[f'paired_ratio_{phase}']:.2f}")
    print(f"(b) whole run: set-up {streamed['setup']:.2f} / {memory['setup']:.2f} s (in memory: patches loaded), "
          f"precise BN, validation and checkpoints {streamed['rest']:.2f} / {memory['rest']:.2f} s, "
          f"run {streamed['run']:.2f} / {memory['run']:.2f} s, paired ratio {summary['paired_ratio_run']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                                         "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
