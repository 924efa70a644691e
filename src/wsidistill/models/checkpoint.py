"""Model checkpoints: loading a trained model with its metadata, the view of a patch it reads, and
the Student stride rule."""

from __future__ import annotations

from pathlib import Path

import torch

from ..device import Runtime
from ..distill.inputs import student_input_from
from . import build_model

#: Output stride of the Teacher's last block (smallcnn's default).
TEACHER_OUTPUT_STRIDE = 8
#: Student designs: ``native`` (the default) keeps the Teacher's stride on the native low-magnification
#: patch, so its last-block grid shrinks with the magnification; ``teacher`` drops max-pools so that the
#: grid stays the Teacher's.
STUDENT_GRIDS = ("native", "teacher")
#: No native-design Student's last-block grid goes below this many cells a side.
MIN_GRID_SIDE = 4
#: Architectures whose output stride cannot be changed, with that stride.
FIXED_STRIDES = {"vgg16": 16, "resnet18": 32, "resnet34": 32}


def student_output_stride(
    arch: str,
    magnification: float,
    teacher_magnification: float,
    *,
    side: int,
    grid: str = "native",
    teacher_stride: int = TEACHER_OUTPUT_STRIDE,
) -> int | None:
    """Output stride of a Student's last block, for :func:`~wsidistill.models.build_model`.

    ``side``: the Student's patch side in px at its own ``magnification`` (native input), e.g. 32 px
    for a 256 px Teacher patch at 40x read at 5x. ``teacher_stride``: the Teacher's output stride.

    - ``grid="native"`` (default): ``s = min(s_teacher, side / 4)``, rounded down to a power of two
      (at least 1): the Teacher's stride, so the Student's FLOPs fall with its pixels, except that the
      grid never drops below 4x4. 256 px at 40x with ``s_teacher = 8``: 20x 128 px -> 8 (16x16), 10x
      64 px -> 8 (8x8), 5x 32 px -> 8 (4x4); 128 px at 40x: 5x 16 px -> 4 (4x4).
    - ``grid="teacher"``: ``s = s_teacher * m_student / m_teacher`` (at least 1): the Student drops
      max-pools so that its grid is the Teacher's and both tile the same tissue cells (cost: its
      late blocks run at the Teacher's grid, so FLOPs fall far less than pixels).

    The Teacher itself (``magnification >= teacher_magnification``) keeps ``teacher_stride``.
    Fixed-stride backbones (``vgg16``: 16, ``resnet18/34``: 32) keep their stride and return None:
    under ``native`` their grid is ``side / stride``, which can fall below the 4x4 floor (VGG16 on
    32 px: 2x2; ResNet: 1x1; the losses pool the Teacher's maps to any grid and stay finite at 1x1).
    They cannot realise ``teacher`` on native input: ValueError, naming ``student.input: upsampled``
    (the Teacher's input size, hence its grid) as the way to get it.
    """
    if grid not in STUDENT_GRIDS:
        raise ValueError(f"student grid must be one of {list(STUDENT_GRIDS)}, got {grid!r}")
    if arch in FIXED_STRIDES:
        if grid == "teacher" and magnification < teacher_magnification:
            raise ValueError(f"{arch} has a fixed output stride ({FIXED_STRIDES[arch]}): student.grid 'teacher' "
                             "needs student.input 'upsampled', or use student.grid 'native'")
        return None
    if magnification >= teacher_magnification:
        return teacher_stride
    if grid == "teacher":
        return max(1, int(round(teacher_stride * magnification / teacher_magnification)))
    floor_stride = max(1, side // MIN_GRID_SIDE)
    return min(teacher_stride, 2 ** (floor_stride.bit_length() - 1))


def load_model(path: str | Path, runtime: Runtime | None = None) -> tuple[torch.nn.Module, dict]:
    runtime = runtime or Runtime(torch.device("cpu"))
    checkpoint = torch.load(path, map_location=runtime.device, weights_only=False)
    meta = checkpoint["meta"]
    model = build_model(meta["arch"], meta["num_classes"], output_stride=meta.get("output_stride"))
    model.load_state_dict(checkpoint["state_dict"])
    return runtime.place(model).eval(), meta


def model_view(batch: torch.Tensor, meta: dict) -> torch.Tensor:
    """A batch read at ``meta["input_magnification"]``, degraded as the model's training input was.

    An upsampled Student reads the Teacher's patches but trained on them average-pooled to its own
    magnification and upsampled back; validation, evaluation and attention must see the same.
    """
    if meta["student_input"] != "upsampled":
        return batch
    return student_input_from(batch, "upsampled", meta["input_magnification"] / meta["magnification"])


