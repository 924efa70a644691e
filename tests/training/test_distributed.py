"""Two processes under torchrun (gloo, CPU) train the model one process trains with the same global batch."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import torch

from wsidistill.training.distributed import Distributed

#: How close "the same" is. Two processes compute the same sums in another order: gradients all-reduced
#: over two half batches, batch statistics as sums and sums of squares over two halves (not batch
#: norm's two-pass variance), precise-BN averages combined from two ranks' averages. At the default
#: learning rate Adam amplifies those float32 roundings within an epoch into differences that depend on
#: the data (on the demo stores: 1e-4 relative in the loss, 0.1-0.2 in BN running means, in either
#: direction) and that no peer run bounds reliably (one process on two threads rounds the same way on
#: these small patches). So the runs train with a small learning rate: the weights move (the loss falls
#: about 5% in the epoch) but rounding stays at rounding's size. Measured: loss 1e-6 relative, parameters
#: and BN statistics 2e-4; with learning rate 0 every tensor agrees to 2e-7. A wrong split (a rank
#: training on other rows, per-rank batch statistics, an unscaled last batch) changes the training itself
#: and exceeds these bounds.
TRAINING = '{"epochs": 1, "batch_size": 16, "stain_jitter": 0.05, "lr": 1e-5, "weight_decay": 0.0}'
LOSS_TOLERANCE, STATE_TOLERANCE = 1e-5, 2e-3


def command(stores, out, *, launcher):
    return [*launcher, "-m", "wsidistill.cli", "train-teacher",
            "--train-stores", *map(str, stores["train"]), "--val-stores", *map(str, stores["val"]),
            "--magnification", "40", "--training", TRAINING,
            "--device", "cpu", "--seed", "2", "--out", str(out / "model.pt"), "--history", str(out / "history.csv"),
            "--threads", "1"]


def difference(a: dict, b: dict) -> float:
    """Largest ``|a - b| / (1 + |b|)`` over every float tensor of two state dicts."""
    return max(((a[k] - b[k]).abs() / (1 + b[k].abs())).max().item() for k in b if b[k].is_floating_point())


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(demo_stores, tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs = {"one": dict(launcher=[sys.executable]), "two": dict(launcher=torchrun)}
    for name, how in runs.items():
        done = subprocess.run(command(demo_stores, tmp_path / name, **how), env=environment, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        if name == "two":
            assert done.stdout.count("epoch 0:") == 1  # only rank 0 reports (and writes)

    loss = {name: pd.read_csv(tmp_path / name / "history.csv").train_loss.to_numpy() for name in runs}
    models = {name: torch.load(tmp_path / name / "model.pt", weights_only=False) for name in runs}
    one, two = (models[name]["state_dict"] for name in runs)
    assert np.abs(loss["two"] - loss["one"]).max() <= LOSS_TOLERANCE * loss["one"].max()
    assert difference(two, one) <= STATE_TOLERANCE
    for name, tensor in one.items():
        if not tensor.is_floating_point():  # batch counts of the precise-BN recalibration, summed over ranks
            assert torch.equal(two[name], tensor), name
    assert models["two"]["meta"]["best_epoch"] == models["one"]["meta"]["best_epoch"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["history.csv", "history.png", "model.pt"]


def test_ranks_come_from_torchrun_or_slurm():
    assert Distributed.from_environment({}) == Distributed()
    assert Distributed.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Distributed(3, 4, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}
    assert Distributed.from_environment(slurm) == Distributed(5, 8, 1)
    # the batch script itself (several tasks allocated, no srun step) is one process
    assert Distributed.from_environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) == Distributed()
    shares = [Distributed(r, 3).share(7) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(7))
