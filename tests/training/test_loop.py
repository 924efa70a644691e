import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from wsidistill.device import InferenceSettings
from wsidistill.distill import student_input_from
from wsidistill.evaluation.evaluate import evaluate_model
from wsidistill.evaluation.metrics import quadratic_kappa
from wsidistill.models.checkpoint import load_model
from wsidistill.patches.dataset import load_patches, to_tensor
from wsidistill.training.loop import Trainer, TrainJob, TrainSettings, train

SETTINGS = TrainSettings(epochs=4, batch_size=16, lr=1e-3)


def train_command(stores, out: Path, epochs: int) -> list[str]:
    return [str(Path(sys.executable).parent / "wsidistill"), "train-teacher",
            "--train-stores", *map(str, stores["train"]), "--val-stores", *map(str, stores["val"]),
            "--magnification", "40", "--training", f'{{"epochs": {epochs}, "batch_size": 16}}',
            "--seed", "7", "--out", str(out / "model.pt"), "--history", str(out / "history.csv"), "--threads", "1"]


def test_killed_training_resumes_from_its_last_epoch_and_matches_an_uninterrupted_run(demo_stores, tmp_path):
    uninterrupted, resumed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(train_command(demo_stores, uninterrupted, 4), check=True, capture_output=True)

    process = subprocess.Popen(train_command(demo_stores, resumed, 4), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    history = resumed / "history.csv"
    while not (history.exists() and len(pd.read_csv(history)) >= 2):
        assert process.poll() is None, "training finished before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (resumed / "checkpoint.pt").exists() and not (resumed / "model.pt").exists()
    epochs_done = torch.load(resumed / "checkpoint.pt", weights_only=False)["epoch"] + 1
    assert epochs_done >= len(pd.read_csv(history)) >= 2

    rerun = subprocess.run(train_command(demo_stores, resumed, 4), capture_output=True, text=True, check=True)
    assert f"resuming {resumed / 'model.pt'} from epoch {epochs_done}" in rerun.stdout
    assert "epoch 0:" not in rerun.stdout

    a = torch.load(uninterrupted / "model.pt", weights_only=False)
    b = torch.load(resumed / "model.pt", weights_only=False)
    assert a["meta"]["best_epoch"] == b["meta"]["best_epoch"]
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    pd.testing.assert_frame_equal(pd.read_csv(uninterrupted / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(history).drop(columns="seconds"))
    assert not (resumed / "checkpoint.pt").exists()


def test_student_distillation_writes_history_and_selects_by_validation_kappa(demo_stores, tmp_path):
    common = dict(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=["NC", "G3", "G4", "G5"],
                  arch="smallcnn", settings=SETTINGS, seed=0)
    train(magnification=40, weights={"ce": 1}, out_model=tmp_path / "t/model.pt", out_history=tmp_path / "t/h.csv",
          progress=False, **common)
    meta = train(magnification=10, weights={"ce": 1, "fm": 0.1, "atplus": 10}, teacher_path=tmp_path / "t/model.pt",
                 out_model=tmp_path / "s/model.pt", out_history=tmp_path / "s/h.csv", method="atplus",
                 progress=False, **common)
    history = pd.read_csv(tmp_path / "s/h.csv")
    assert {"train_ce", "train_fm", "train_atplus", "val_kappa"} <= set(history.columns)
    assert len(history) == SETTINGS.epochs
    assert meta.best_epoch == int(history.val_kappa.idxmax())
    assert meta.input_magnification == 10 and meta.output_stride == 2  # 8 px at 10x: min(8, 8 / 4)
    assert meta.student_grid == "native"
    assert (tmp_path / "s/h.png").stat().st_size > 1000


def test_an_upsampled_student_is_validated_and_evaluated_on_its_degraded_input(demo_stores, tmp_path):
    """It reads 40x patches but trained on them pooled to 10x and upsampled: so must every later use."""
    common = dict(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=["NC", "G3", "G4", "G5"],
                  arch="smallcnn", settings=TrainSettings(epochs=1, batch_size=16), seed=0, progress=False)
    train(magnification=40, weights={"ce": 1}, out_model=tmp_path / "t/model.pt", out_history=tmp_path / "t/h.csv",
          **common)
    meta = train(magnification=10, weights={"ce": 1}, teacher_path=tmp_path / "t/model.pt",
                 student_input="upsampled", out_model=tmp_path / "s/model.pt", out_history=tmp_path / "s/h.csv",
                 **common)
    assert meta.input_magnification == 40 and meta.student_input == "upsampled"
    assert meta.student_grid == "teacher" and meta.output_stride == 8
    model, _ = load_model(tmp_path / "s/model.pt")

    def probabilities(images, degrade):
        with torch.no_grad():
            batch = to_tensor(images)
            return torch.softmax(model(student_input_from(batch, "upsampled", 4) if degrade else batch).logits,
                                 1).numpy()

    val = load_patches(demo_stores["val"], [40])
    assert quadratic_kappa(val.labels, probabilities(val.images["40x"], True).argmax(1), 4) == pytest.approx(
        pd.read_csv(tmp_path / "s/h.csv").val_kappa.iloc[0])

    evaluate_model(tmp_path / "s/model.pt", demo_stores["test"][:1], tmp_path / "p.zarr", tmp_path / "m.json",
                   settings=InferenceSettings(device="cpu", progress=False))
    store = demo_stores["test"][0]
    images = zarr.open_group(str(store), mode="r")["40x/images"][:]
    stored = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")[store.stem]["probabilities"][:]
    np.testing.assert_allclose(stored, probabilities(images, True), atol=1e-5)
    assert not np.allclose(stored, probabilities(images, False), atol=1e-3)


def test_a_checkpoint_of_other_settings_is_discarded_and_the_rerun_equals_a_clean_run(demo_stores, tmp_path, capsys):
    """A job stopped after epoch 0 at lr 0.01, rerun at lr 0.001: trains from scratch, as if never started."""
    common = dict(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=["NC", "G3", "G4", "G5"],
                  magnification=40, arch="smallcnn", weights={"ce": 1}, seed=5)
    old, new = TrainSettings(epochs=2, batch_size=16, lr=1e-2), TrainSettings(epochs=2, batch_size=16, lr=1e-3)
    job = dict(out_model=tmp_path / "job/model.pt", out_history=tmp_path / "job/history.csv", **common)
    stopped = Trainer(TrainJob(**job), old, progress=False)
    stopped.resume()
    stopped.train_epoch()  # the checkpoint of epoch 0 is written; the job is "killed" here
    assert (tmp_path / "job/checkpoint.pt").exists() and not (tmp_path / "job/model.pt").exists()
    capsys.readouterr()

    meta = train(settings=new, progress=False, **job)
    log = capsys.readouterr().out
    assert f"discarding {tmp_path / 'job/checkpoint.pt'}" in log and "(changed: settings)" in log
    assert "resuming" not in log and "epoch 0:" in log
    clean = train(settings=new, progress=False, out_model=tmp_path / "clean/model.pt",
                  out_history=tmp_path / "clean/history.csv", **common)
    assert meta.settings["lr"] == 1e-3 and meta.fingerprint == clean.fingerprint
    a = torch.load(tmp_path / "clean/model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "job/model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "clean/history.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "job/history.csv").drop(columns="seconds"))

    # Raising `epochs` keeps the checkpoint: no schedule depends on it, so the resumed run equals the clean one.
    job = dict(out_model=tmp_path / "longer/model.pt", out_history=tmp_path / "longer/history.csv", **common)
    one_epoch = Trainer(TrainJob(**job), TrainSettings(epochs=1, batch_size=16, lr=1e-3), progress=False)
    one_epoch.resume()
    one_epoch.train_epoch()
    capsys.readouterr()
    train(settings=new, progress=False, **job)
    assert f"resuming {tmp_path / 'longer/model.pt'} from epoch 1" in capsys.readouterr().out
    c = torch.load(tmp_path / "longer/model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[name], c[name]) for name in a)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_fingerprint_covers_the_inputs_and_the_thread_count(demo_stores, tmp_path, restore_threads):
    common = dict(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=["NC", "G3", "G4", "G5"],
                  magnification=40, arch="smallcnn", weights={"ce": 1}, seed=5, out_model=tmp_path / "m.pt",
                  out_history=tmp_path / "h.csv")
    settings = TrainSettings(epochs=1, batch_size=16)
    reference = Trainer(TrainJob(**common), settings, progress=False)
    other_val = Trainer(TrainJob(**{**common, "val_stores": demo_stores["test"]}), settings, progress=False)
    other_seed = Trainer(TrainJob(**{**common, "seed": 6}), settings, progress=False)
    two_threads = Trainer(TrainJob(**common), settings, threads=2, progress=False)
    for other, key in ((other_val, "val_stores"), (other_seed, "seed"), (two_threads, "runtime")):
        assert other.fingerprint != reference.fingerprint
        assert [k for k in reference.provenance if reference.provenance[k] != other.provenance[k]] == [key]


def test_the_model_records_its_thread_count(demo_stores, tmp_path, restore_threads):
    meta = train(train_stores=demo_stores["train"], val_stores=demo_stores["val"][:1],
                 classes=["NC", "G3", "G4", "G5"], magnification=40, arch="smallcnn", weights={"ce": 1}, seed=0,
                 settings=TrainSettings(epochs=1, batch_size=16), threads=2, progress=False,
                 out_model=tmp_path / "m.pt", out_history=tmp_path / "h.csv")
    assert meta.threads == 2 and load_model(tmp_path / "m.pt")[1].threads == 2
