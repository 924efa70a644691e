"""Patches streamed from the stores train the same model as patches read into memory."""

import numpy as np
import pandas as pd
import pytest
import torch

from wsidistill.patches.dataset import BatchSources, StorePatches, batch_loader, load_patches
from wsidistill.training.loop import TrainSettings, train

CLASSES = ["NC", "G3", "G4", "G5"]


def test_stored_rows_are_load_patches_rows_in_order(demo_stores):
    stores = demo_stores["train"]
    memory = load_patches(stores, [40, 10])
    streamed = StorePatches(stores, [40, 10])
    assert len(streamed) == len(memory) > 0
    np.testing.assert_array_equal(streamed.labels, memory.labels)
    np.testing.assert_array_equal(streamed.slide_index, memory.slide_index)
    rows = np.sort(np.random.default_rng(0).choice(len(memory), 23, replace=False))
    batch = next(iter(batch_loader(streamed, [rows], workers=1)))
    np.testing.assert_array_equal(batch["rows"].numpy(), rows)
    np.testing.assert_array_equal(batch["labels"].numpy(), memory.labels[rows])
    for name in ("40x", "10x"):
        assert batch["images"][name].dtype == torch.uint8
        np.testing.assert_array_equal(batch["images"][name].numpy(), memory.images[name][rows])
    assert streamed.nbytes == sum(images.nbytes for images in memory.images.values())


def test_one_loader_serves_several_sources_and_views(demo_stores):
    """A run's loader reads training and validation batches, each at the magnifications asked for."""
    train, val = StorePatches(demo_stores["train"], [40, 10]), StorePatches(demo_stores["val"], [10])
    memory_train, memory_val = load_patches(demo_stores["train"], [40, 10]), load_patches(demo_stores["val"], [10])
    items = [("train", np.array([0, 3, 5]), None), ("val", np.array([1, 2]), ["10x"]), ("train", np.array([4]), ["10x"])]
    batches = list(batch_loader(BatchSources(train=train, val=val), items, workers=1))
    assert [sorted(batch["images"]) for batch in batches] == [["10x", "40x"], ["10x"], ["10x"]]
    for (split, rows, names), batch in zip(items, batches):
        memory = memory_train if split == "train" else memory_val
        np.testing.assert_array_equal(batch["labels"].numpy(), memory.labels[rows])
        for name in batch["images"]:
            np.testing.assert_array_equal(batch["images"][name].numpy(), memory.images[name][rows])


def test_decoded_chunks_are_kept_within_their_budget_and_read_the_same(demo_stores, monkeypatch):
    from wsidistill.patches import dataset

    stores = demo_stores["train"]
    memory, streamed = load_patches(stores, [10]), StorePatches(stores, [10])
    block = streamed._files(0, "10x", streamed._array(0, "10x")).block((0,))
    monkeypatch.setattr(dataset, "BLOCK_CACHE_BYTES", 2 * block.nbytes)  # two chunks: every batch evicts
    rng = np.random.default_rng(1)
    for _ in range(3):
        rows = np.sort(rng.choice(len(memory), 17, replace=False))
        np.testing.assert_array_equal(streamed.read(rows)["10x"], memory.images["10x"][rows])
        assert 1 <= len(streamed._blocks) <= 2


def _train_both(demo_stores, tmp_path, capsys, **job):
    models = {}
    for path, budget in (("memory", 1e6), ("stream", 0)):
        settings = TrainSettings(epochs=2, batch_size=16, stain_jitter=0.05, memory_budget_mb=budget,
                                 loader_workers=2)
        train(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=CLASSES, arch="smallcnn",
              settings=settings, out_model=tmp_path / path / "model.pt", out_history=tmp_path / path / "h.csv",
              progress=False, **job)
        log = capsys.readouterr().out
        assert ("patches in memory" in log) == (path == "memory")
        assert ("streamed from the stores by 2 loader workers" in log) == (path == "stream")
        models[path] = torch.load(tmp_path / path / "model.pt", weights_only=False)
    a, b = models["memory"], models["stream"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["meta"]["fingerprint"] == b["meta"]["fingerprint"]  # how patches are read is not a setting of the model
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "memory/h.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "stream/h.csv").drop(columns="seconds"))


@pytest.fixture(scope="module")
def teacher(demo_stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=CLASSES, arch="smallcnn",
          settings=TrainSettings(epochs=1, batch_size=16), magnification=40, weights={"ce": 1}, seed=0,
          out_model=out / "model.pt", out_history=out / "h.csv", progress=False)
    return out / "model.pt"


def test_a_streamed_teacher_equals_one_trained_in_memory(demo_stores, tmp_path, capsys):
    """D4 elements and stain jitter are drawn as before, whichever way patches are read: same weights, bit for bit."""
    _train_both(demo_stores, tmp_path, capsys, magnification=40, weights={"ce": 1}, seed=3)


def test_a_streamed_student_distilled_on_the_fly_equals_one_trained_in_memory(demo_stores, teacher, tmp_path,
                                                                                capsys):
    """Two views (10x for the Student, 40x for the Teacher's targets) read from the stores in each worker."""
    _train_both(demo_stores, tmp_path, capsys, magnification=10, weights={"ce": 1, "fm": 0.1, "atplus": 10},
                teacher_path=teacher, method="atplus", seed=4)
