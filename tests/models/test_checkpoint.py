"""Model checkpoints: typed metadata saved as a plain dict, older dict metadata still loads."""

import pytest
import torch

from wsidistill.models import build_model
from wsidistill.models.checkpoint import CheckpointError, ModelMeta, load_model, model_view, save_model


def test_metadata_round_trips_through_a_plain_dict(tmp_path):
    torch.manual_seed(0)
    model = build_model("smallcnn", 4, output_stride=2)
    meta = ModelMeta(arch="smallcnn", num_classes=4, magnification=10, output_stride=2, classes=["a", "b", "c", "d"],
                     teacher_magnification=40, input_magnification=40, student_input="upsampled", method="atplus",
                     weights={"ce": 1.0, "atplus": 10.0}, seed=3, threads=2, settings={"lr": 1e-3})
    save_model(tmp_path / "model.pt", model.state_dict(), meta)
    stored = torch.load(tmp_path / "model.pt", weights_only=False)
    assert type(stored["meta"]) is dict and stored["meta"]["threads"] == 2  # readable without wsidistill's classes
    loaded, loaded_meta = load_model(tmp_path / "model.pt")
    assert loaded_meta == meta and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    x = torch.rand(1, 3, 16, 16)
    assert not torch.equal(model_view(x, loaded_meta), x)  # an upsampled Student sees its degraded input


def test_older_dict_metadata_loads_with_defaults(tmp_path):
    model = build_model("smallcnn", 3, output_stride=8)
    torch.save({"state_dict": model.state_dict(),
                "meta": {"arch": "smallcnn", "num_classes": 3, "output_stride": 8, "magnification": 40,
                         "a_key_of_a_later_version": 1}}, tmp_path / "old.pt")
    _, meta = load_model(tmp_path / "old.pt")
    assert (meta.input_magnification, meta.student_input, meta.threads) == (40, "native", None)
    x = torch.rand(1, 3, 8, 8)
    assert model_view(x, meta) is x


def test_metadata_without_the_network_names_the_file(tmp_path):
    torch.save({"state_dict": {}, "meta": {"arch": "smallcnn"}}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken.pt: model metadata lacks \['magnification', 'num_classes'\]"):
        load_model(tmp_path / "broken.pt")
