"""Issue 17, kinds 7 and 8 at training: a class no training patch shows is warned about and recorded in the
checkpoint (evaluation and comparison.md repeat it); a training store without a labelled patch is one line."""

import warnings

import numpy as np
import pytest
import zarr

from wsidistill.errors import UnlabelledSlideError
from wsidistill.evaluation.splits import class_counts
from wsidistill.models.checkpoint import load_model
from wsidistill.training.loop import TrainSettings, train

SETTINGS = TrainSettings(epochs=1, batch_size=32)


def test_a_class_absent_from_the_training_split_is_warned_and_recorded(demo_stores, tmp_path):
    classes = ["NC", "G3", "G4", "G5", "G6"]  # no store labels a patch G6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = train(train_stores=demo_stores["train"], val_stores=demo_stores["val"], classes=classes,
                     magnification=40, arch="smallcnn", weights={"ce": 1}, settings=SETTINGS, seed=0,
                     out_model=tmp_path / "t/model.pt", out_history=tmp_path / "t/h.csv", progress=False)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("class 'G6' has no labelled patch in the train split") for m in messages)
    assert any(m.startswith("class 'G6' has no labelled patch in the val split") for m in messages)
    labels = np.concatenate([zarr.open_group(str(s), mode="r")["labels"][:] for s in demo_stores["train"]])
    assert meta.train_patches_per_class == class_counts(labels, classes)
    assert meta.train_patches_per_class["G6"] == 0 and sum(meta.train_patches_per_class.values()) == meta.train_patches
    assert load_model(tmp_path / "t/model.pt")[1].train_patches_per_class == meta.train_patches_per_class


def test_a_training_store_without_a_labelled_patch_is_one_line(demo_stores, tmp_path):
    """A store extracted as a test slide (no annotations) and moved to the train split without re-extraction."""
    import shutil

    unlabelled = tmp_path / "moved.zarr"
    shutil.copytree(demo_stores["test"][0], unlabelled)
    labels = zarr.open_group(str(unlabelled), mode="r+")["labels"]
    labels[:] = -1
    with pytest.raises(UnlabelledSlideError, match=f"training stores without a labelled patch: {unlabelled}\\. "):
        train(train_stores=[demo_stores["train"][0], unlabelled], val_stores=demo_stores["val"],
              classes=["NC", "G3", "G4", "G5"], magnification=40, arch="smallcnn", weights={"ce": 1},
              settings=SETTINGS, seed=0, out_model=tmp_path / "t/model.pt", out_history=tmp_path / "t/h.csv",
              progress=False)
