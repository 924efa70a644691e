"""Cost table: both Student designs, FLOPs against their definition, ratios to the Teacher, Markdown."""

import pytest
import torch

from wsidistill.cli import main
from wsidistill.models import build_model
from wsidistill.models.checkpoint import student_output_stride
from wsidistill.report import cost

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    """Throughput is measured, not asserted: one small batch keeps the test short."""
    monkeypatch.setattr(cost, "BATCH", 2)
    monkeypatch.setattr(cost, "REPEATS", 1)


def smallcnn_gflops(side: int, stride: int, classes: int = 4) -> float:
    """FLOPs by definition: 2 * k^2 * C_in * C_out * H * W per 3x3 convolution (multiply-adds counted as two),
    plus the linear head; the first log2(stride) blocks halve the grid before their convolution."""
    flops, size, channels = 2 * 9 * 3 * 32 * side * side, side, 32
    for i, out in enumerate((32, 64, 128, 256)):
        if 2**i < stride:
            size //= 2
        flops += 2 * 9 * channels * out * size * size
        channels = out
    return (flops + 2 * 256 * classes) / 1e9


@pytest.mark.parametrize(("side", "stride"), [(256, 8), (32, 8), (32, 1), (16, 4)])
def test_forward_gflops_matches_the_definition(side, stride):
    model = build_model("smallcnn", 4, output_stride=stride)
    assert cost.forward_gflops(model, side) == pytest.approx(smallcnn_gflops(side, stride), rel=1e-9)


def test_design_frame_native_students_cut_flops_with_the_pixels():
    """Acceptance (issue 16): 256 px at 40x on smallcnn, FLOP ratios >= 3.5x at 20x, 14x at 10x, 50x at 5x."""
    frame = cost.design_frame("smallcnn", 256, [40, 20, 10, 5])
    assert frame.model.tolist() == ["teacher_40x"] + [f"student_{m}x" for m in (20, 20, 10, 10, 5, 5)]
    assert frame.design.tolist() == ["Teacher"] + ["native", "teacher"] * 3
    native = frame[frame.design == "native"].set_index("magnification")
    assert native.grid.tolist() == ["16x16", "8x8", "4x4"]
    assert (native.output_stride == 8).all()
    assert native.flop_ratio_vs_teacher[20] >= 3.5 and native.flop_ratio_vs_teacher[10] >= 14
    assert native.flop_ratio_vs_teacher[5] >= 50
    teacher_grid = frame[frame.design == "teacher"]
    assert (teacher_grid.grid == "32x32").all() and (teacher_grid.flop_ratio_vs_teacher < 2).all()
    expected = smallcnn_gflops(256, 8) / smallcnn_gflops(32, 8)
    assert native.flop_ratio_vs_teacher[5] == pytest.approx(expected, rel=1e-9)
    assert native.pixel_ratio_vs_teacher.tolist() == [4, 16, 64]
    assert (frame.cpu_patches_per_second > 0).all() and frame.cpu_speedup_vs_teacher.iloc[0] == 1


def test_fixed_stride_backbones_have_only_the_native_design():
    frame = cost.design_frame("resnet18", 64, [40, 10])
    assert frame.design.tolist() == ["Teacher", "native"]
    assert frame.grid.tolist() == ["2x2", "1x1"]  # 16 px at stride 32: below the 4x4 floor, as documented


def save_checkpoint(path, *, magnification, patch_side, stride, grid, student_input="native"):
    model = build_model("smallcnn", 4, output_stride=stride)
    meta = {"arch": "smallcnn", "num_classes": 4, "magnification": magnification, "teacher_magnification": 40,
            "output_stride": stride, "patch_side": patch_side, "input_magnification": magnification,
            "student_input": student_input}
    if grid is not None:
        meta["student_grid"] = grid
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def test_cost_frame_of_trained_models_shows_both_designs_and_marks_the_trained_one(tmp_path):
    teacher = save_checkpoint(tmp_path / "t.pt", magnification=40, patch_side=64, stride=8, grid=None)
    native = save_checkpoint(tmp_path / "n.pt", magnification=5, patch_side=8,
                             stride=student_output_stride("smallcnn", 5, 40, side=8), grid="native")
    legacy = save_checkpoint(tmp_path / "l.pt", magnification=10, patch_side=16, stride=2, grid=None)
    upsampled = save_checkpoint(tmp_path / "u.pt", magnification=10, patch_side=64, stride=8, grid="teacher",
                                student_input="upsampled")
    frame = cost.cost_frame({"teacher_40x": teacher, "ce_5x": native, "old_10x": legacy, "up_10x": upsampled}, [])
    rows = list(zip(frame.model, frame.design, frame.trained, frame.grid))
    assert rows == [
        ("teacher_40x", "Teacher", True, "8x8"),
        ("ce_5x", "native", True, "4x4"),  # 8 px: stride min(8, 8 / 4) = 2
        ("ce_5x", "teacher", False, "8x8"),
        ("old_10x", "native", False, "4x4"),  # 16 px: stride min(8, 4) = 4
        ("old_10x", "teacher", True, "8x8"),  # no student_grid: checkpoints before the native design
        ("up_10x", "native", False, "4x4"),
        ("up_10x", "teacher", False, "8x8"),
        ("up_10x", "upsampled", True, "8x8"),
    ]
    assert frame.pixel_ratio_vs_teacher.tolist() == [1, 64, 64, 16, 16, 16, 16, 1]


def test_cli_writes_csv_and_markdown_without_trained_models(tmp_path):
    main(["cost", "--arch", "smallcnn", "--patch-size", "64", "--magnifications", "40", "10",
          "--csv", str(tmp_path / "cost.csv"), "--md", str(tmp_path / "cost.md")])
    text = (tmp_path / "cost.md").read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert "FLOP ratio" in header and "measured CPU speed-up" in header and "trained" not in header
    assert any(line.startswith("| student_10x | native ") and "| 4x4 " in line for line in lines)
    assert (tmp_path / "cost.csv").read_text().startswith("model,magnification,design")
