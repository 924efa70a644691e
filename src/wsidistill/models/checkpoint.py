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


def student_output_stride(arch: str, magnification: float, teacher_magnification: float) -> int | None:
    """Output stride that puts the Student's last-block grid on the Teacher's tissue cells.

    Only the demo's ``smallcnn`` has a configurable stride; fixed-stride
    backbones are aligned by interpolation in the loss instead.
    """
    if arch != "smallcnn":
        return None
    stride = TEACHER_OUTPUT_STRIDE * magnification / teacher_magnification
    return max(1, int(round(stride)))


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


