"""A training run streamed from the stores against the same run in memory, on real stores.

Each round trains one model (smallcnn, CE, D4, batch 32, 1 intra-op thread, the schema's other training
defaults) for ``--epochs`` epochs (default: ``training.epochs`` of the repository's ``config.yaml``, the demo's)
twice, in fresh processes: once with patches read into memory, once streamed by ``--workers`` loader workers
(``training.memory_budget_mb: 0``), the order alternating between rounds. Each child times

* set-up: the Trainer's constructor, which for the in-memory path reads every patch into memory (decoding kept
  JPEG tiles) and for the streamed path starts the loader workers;
* per epoch, the optimisation pass (``Trainer._optimise``: reading, augmentation, forward, backward, Adam), and
  the rest of the epoch (``Trainer.train_epoch``: precise BN over the training patches, validation on
  ``--val-stores``, the checkpoint and history written).

It prints (a) per epoch, the streamed / in-memory ratio of the seconds per step (medians over rounds), and
the ratios of the first epoch's and of the later epochs' steps; (b) the whole run a user waits for: set-up
plus every epoch, with the in-memory path's loading counted, streamed / in memory. Every ratio is against
the in-memory run of the same invocation.

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
    from wsidistill.training.loop import Trainer, TrainJob, TrainSettings

    settings = TrainSettings(epochs=args.epochs, batch_size=32, memory_budget_mb=args.budget,
                             loader_workers=args.workers, device="cpu", patience=None)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        trainer = Trainer(TrainJob(train_stores=args.stores, val_stores=args.val_stores or args.stores[:1],
                                   classes=CLASSES, magnification=args.magnification, arch="smallcnn",
                                   weights={"ce": 1}, seed=0, out_model=Path(out) / "model.pt",
                                   out_history=Path(out) / "history.csv"), settings, threads=1, progress=False)
        setup = time.perf_counter() - started
        optimise, seconds = trainer._optimise, {}

        def timed(epoch):
            started = time.perf_counter()
            result = optimise(epoch)
            seconds["optimise"] = time.perf_counter() - started
            return result

        trainer._optimise = timed
        count = -(-len(trainer.train_set) // settings.batch_size)  # steps an epoch
        steps, rest = [], []
        for _ in range(args.epochs):
            started = time.perf_counter()
            trainer.train_epoch()
            steps.append(seconds["optimise"] / count)
            rest.append(time.perf_counter() - started - seconds["optimise"])
    return {"in_memory": trainer.in_memory, "patches": len(trainer.train_set), "setup_s": setup, "step_s": steps,
            "steps": count, "rest_s": rest,
            "run_s": setup + sum(s * count for s in steps) + sum(rest)}


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
    parser.add_argument("--budget", type=float, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.epochs = args.epochs or demo_epochs()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = []
    for round_ in range(args.rounds):
        budgets = [0, 1 << 20] if round_ % 2 == 0 else [1 << 20, 0]
        for budget in budgets:
            command = [sys.executable, __file__, "--child", "--budget", str(budget), "--stores", *args.stores,
                       "--val-stores", *args.val_stores, "--magnification", str(args.magnification),
                       "--epochs", str(args.epochs), "--workers", str(args.workers)]
            run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            runs.append(run)
            print(f"round {round_} {'in memory' if run['in_memory'] else 'streamed '}: set-up {run['setup_s']:.2f} s, "
                  "s/step per epoch " + " ".join(f"{s:.3f}" for s in run["step_s"])
                  + f"; rest of epochs {sum(run['rest_s']):.2f} s; run {run['run_s']:.2f} s", flush=True)
    modes = {"streamed": [r for r in runs if not r["in_memory"]], "in memory": [r for r in runs if r["in_memory"]]}
    median = {mode: {"epochs": [statistics.median(r["step_s"][e] for r in chosen) for e in range(args.epochs)],
                     "first": statistics.median(r["step_s"][0] for r in chosen),
                     "later": statistics.median(s for r in chosen for s in r["step_s"][1:]),
                     "setup": statistics.median(r["setup_s"] for r in chosen),
                     "rest": statistics.median(sum(r["rest_s"]) for r in chosen),
                     "run": statistics.median(r["run_s"] for r in chosen)} for mode, chosen in modes.items()}
    streamed, memory = median["streamed"], median["in memory"]
    summary = {"median": median, "patches": runs[0]["patches"], "steps_per_epoch": runs[0]["steps"],
               "ratio_per_epoch": [s / m for s, m in zip(streamed["epochs"], memory["epochs"])],
               **{f"ratio_{key}": streamed[key] / memory[key] for key in ("first", "later", "run")}}
    print(f"{summary['patches']} patches at {args.magnification:g}x, {summary['steps_per_epoch']} steps an epoch, "
          f"{args.epochs} epochs, {args.rounds} rounds; medians, streamed / in memory (ratio)")
    print("(a) s/step per epoch: " + ", ".join(f"{s:.3f}/{m:.3f} ({s / m:.2f})"
                                                for s, m in zip(streamed["epochs"], memory["epochs"])))
    for phase in ("first", "later"):
        print(f"    {phase} epoch{'s' if phase == 'later' else ''}: {streamed[phase]:.3f} / {memory[phase]:.3f} s/step, "
              f"ratio {summary[f'ratio_{phase}']:.2f}")
    print(f"(b) whole run: set-up {streamed['setup']:.2f} / {memory['setup']:.2f} s (in memory: patches loaded), "
          f"precise BN, validation and checkpoints {streamed['rest']:.2f} / {memory['rest']:.2f} s, "
          f"run {streamed['run']:.2f} / {memory['run']:.2f} s, ratio {summary['ratio_run']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
