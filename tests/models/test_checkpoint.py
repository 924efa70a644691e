"""Model checkpoints: typed metadata saved as a plain dict, older dict metadata still loads; the Student stride
rule (native grid: the Teacher's stride, floor 4x4; and the Teacher-grid design)."""

import pytest
import torch

from wsidistill.models import build_model
from wsidistill.models.checkpoint import (
    MIN_GRID_SIDE,
    CheckpointError,
    ModelMeta,
    load_model,
    model_view,
    save_model,
    student_output_stride,
)


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


torch.set_num_threads(2)


@pytest.mark.parametrize(
    ("patch_size", "magnification", "native", "teacher"),
    [
        (256, 40, 8, 8),  # the Teacher keeps its stride
        (256, 20, 8, 4),  # 128 px: 16x16 native grid
        (256, 10, 8, 2),  # 64 px: 8x8
        (256, 5, 8, 1),  # 32 px: 4x4, the floor exactly
        (128, 5, 4, 1),  # 16 px: side / 4 = 4 < 8
        (128, 10, 8, 2),  # 32 px
        (80, 5, 2, 1),  # 10 px: side // 4 = 2
        (32, 10, 2, 2),  # 8 px: side / 4 = 2, the teacher grid coincides
        (8, 5, 1, 1),  # 1 px: never below stride 1
    ],
)
def test_smallcnn_stride_rule(patch_size, magnification, native, teacher):
    side = int(patch_size * magnification / 40)
    assert student_output_stride("smallcnn", magnification, 40, side=side) == native
    assert student_output_stride("smallcnn", magnification, 40, side=side, grid="native") == native
    assert student_output_stride("smallcnn", magnification, 40, side=side, grid="teacher") == teacher


@pytest.mark.parametrize("side", [16, 20, 24, 32, 48, 64, 128])
def test_native_grid_is_the_teachers_stride_with_a_4x4_floor(side):
    """s = min(8, side / 4) (a power of two): the built network's last-block grid is max(side / 8, 4) a side."""
    stride = student_output_stride("smallcnn", 5, 40, side=side)
    assert stride == min(8, 2 ** ((side // 4).bit_length() - 1))
    with torch.no_grad():
        grid = build_model("smallcnn", 2, output_stride=stride)(torch.zeros(1, 3, side, side)).features["block4"]
    assert grid.shape[-1] >= MIN_GRID_SIDE
    assert grid.shape[-1] == max(side // 8, side // stride)


def test_teacher_stride_is_that_of_the_teacher_model():
    assert student_output_stride("smallcnn", 10, 40, side=64, teacher_stride=16) == 16
    assert student_output_stride("smallcnn", 10, 40, side=64, teacher_stride=16, grid="teacher") == 4
    assert student_output_stride("smallcnn", 40, 40, side=256, teacher_stride=4) == 4


@pytest.mark.parametrize("arch", ["vgg16", "resnet18", "resnet34"])
def test_fixed_stride_backbones_keep_their_stride(arch):
    assert student_output_stride(arch, 5, 40, side=32) is None
    assert student_output_stride(arch, 40, 40, side=256, grid="teacher") is None
    with pytest.raises(ValueError, match=f"{arch} has a fixed output stride.*upsampled"):
        student_output_stride(arch, 5, 40, side=32, grid="teacher")


def test_unknown_grid_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['native', 'teacher'\]"):
        student_output_stride("smallcnn", 5, 40, side=32, grid="aligned")
