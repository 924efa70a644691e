"""Training step streamed from the stores against in memory, on real stores, over several epochs.

Each round trains the Teacher (smallcnn, CE, D4, batch 32, 1 intra-op thread) for ``--epochs`` epochs twice,
in fresh processes: once with patches read into memory, once streamed by ``--workers`` loader workers
(``training.memory_budget_mb: 0``), the order alternating between rounds. Only the optimisation pass is
timed (``Trainer._optimise``: reading, augmentation, forward, backward, Adam), per epoch; validation is
not run. Prints each epoch's seconds per step, the medians of the first epoch (worker start-up, a cold
page cache) and of the later ones (steady state), and the streamed / in-memory ratios of those medians.

    python benchmarks/stream_step.py --stores results/patches/demo00{0,1,2,3,4}.zarr \\
        results/patches/demo0{09,10}.zarr --epochs 4 --rounds 2
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


def child(args) -> dict:
    from wsidistill.training.loop import Trainer, TrainJob, TrainSettings

    settings = TrainSettings(epochs=args.epochs, batch_size=32, memory_budget_mb=args.budget,
                             loader_workers=args.workers, device="cpu")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(TrainJob(train_stores=args.stores, val_stores=args.stores[:1], classes=CLASSES,
                                   magnification=args.magnification, arch="smallcnn", weights={"ce": 1}, seed=0,
                                   out_model=Path(out) / "model.pt", out_history=Path(out) / "history.csv"),
                          settings, threads=1, progress=False)
        steps = []
        for epoch in range(args.epochs):
            started = time.perf_counter()
            trainer._optimise(epoch)
            steps.append((time.perf_counter() - started) / len(trainer.sampler.batches))
    return {"in_memory": trainer.in_memory, "patches": len(trainer.train_set), "step_s": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", nargs="+", required=True)
    parser.add_argument("--magnification", type=float, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = []
    for round_ in range(args.rounds):
        budgets = [0, 1 << 20] if round_ % 2 == 0 else [1 << 20, 0]
        for budget in budgets:
            command = [sys.executable, __file__, "--child", "--budget", str(budget), "--stores", *args.stores,
                       "--magnification", str(args.magnification), "--epochs", str(args.epochs),
                       "--workers", str(args.workers)]
            run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            runs.append(run)
            print(f"round {round_} {'in memory' if run['in_memory'] else 'streamed'}: s/step per epoch "
                  + " ".join(f"{s:.3f}" for s in run["step_s"]), flush=True)
    summary = {}
    for mode, in_memory in (("streamed", False), ("in memory", True)):
        chosen = [r["step_s"] for r in runs if r["in_memory"] == in_memory]
        summary[mode] = {"first": statistics.median(s[0] for s in chosen),
                         "later": statistics.median(x for s in chosen for x in s[1:])}
    for phase in ("first", "later"):
        ratio = summary["streamed"][phase] / summary["in memory"][phase]
        summary[f"ratio_{phase}"] = ratio
        print(f"{phase} epoch{'s' if phase == 'later' else ''}: streamed {summary['streamed'][phase]:.3f} s/step, "
              f"in memory {summary['in memory'][phase]:.3f} s/step, ratio {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
