"""Model checkpoints: saving and loading a trained model with its typed metadata (:class:`ModelMeta`),
the view of a patch it reads, and the Student stride rule."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..device import Runtime
from ..distill.inputs import student_input_from
from ..errors import InputError
from ..io import atomic_path
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


@dataclass(frozen=True)
class ModelMeta:
    """What a trained model's checkpoint says about it (``model.pt``'s ``meta``, stored as a plain dict).

    Magnifications are objective powers (40 = 40x). ``input_magnification``: the patches the model
    reads (a Student with ``student_input`` "upsampled" reads the Teacher's and pools them to its own
    ``magnification``); ``patch_side``: their side in pixels. ``output_stride``: the ``smallcnn``
    stride (None for fixed-stride backbones). ``weights``: the method's loss terms; ``settings``: the
    training settings; ``runtime``: device and precision; ``threads``: the intra-op thread count
    (``torch.get_num_threads()``) it trained with, which the float sums, and so the bits, depend on.
    ``fingerprint``: digest of every setting and input that shaped the weights. Checkpoints written
    before a field existed load with its default.
    """

    arch: str
    num_classes: int
    magnification: float
    output_stride: int | None = None
    classes: list[str] | None = None
    pretrained: str | None = None
    teacher_magnification: float | None = None
    input_magnification: float | None = None
    patch_side: int | None = None
    student_input: str = "native"
    teacher_cache: str | None = None
    method: str | None = None
    weights: dict[str, float] | None = None
    seed: int | None = None
    best_epoch: int | None = None
    val_kappa: float | None = None
    train_patches: int | None = None
    val_patches: int | None = None
    settings: dict | None = None
    runtime: dict | None = None
    threads: int | None = None
    fingerprint: str | None = None
    wsidistill_version: str | None = None

    def __post_init__(self) -> None:
        if self.input_magnification is None:
            object.__setattr__(self, "input_magnification", self.magnification)

    @classmethod
    def from_dict(cls, meta: dict, path: str | Path = "checkpoint") -> ModelMeta:
        """From a checkpoint's ``meta`` dict; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        missing = sorted({"arch", "num_classes", "magnification"} - set(meta))
        if missing:
            raise CheckpointError(f"{path}: model metadata lacks {missing}; retrain the model to rewrite it")
        return cls(**{k: v for k, v in meta.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


class CheckpointError(InputError, ValueError):
    """A model checkpoint that cannot be read; the message names the file."""


def save_model(path: str | Path, state_dict: dict, meta: ModelMeta) -> None:
    """Write ``{"state_dict", "meta"}`` to ``path`` atomically; ``meta`` is stored as a plain dict."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, "meta": meta.to_dict()}, tmp)


def load_model(path: str | Path, runtime: Runtime | None = None) -> tuple[torch.nn.Module, ModelMeta]:
    """The trained network of checkpoint ``path`` in eval mode on ``runtime``'s device, and its metadata."""
    runtime = runtime or Runtime(torch.device("cpu"))
    checkpoint = torch.load(path, map_location=runtime.device, weights_only=False)
    meta = ModelMeta.from_dict(checkpoint["meta"], path)
    model = build_model(meta.arch, meta.num_classes, output_stride=meta.output_stride)
    model.load_state_dict(checkpoint["state_dict"])
    return runtime.place(model).eval(), meta


def model_view(batch: torch.Tensor, meta: ModelMeta) -> torch.Tensor:
    """A batch read at ``meta.input_magnification``, degraded as the model's training input was.

    An upsampled Student reads the Teacher's patches but trained on them average-pooled to its own
    magnification and upsampled back; validation, evaluation and attention must see the same.
    """
    if meta.student_input != "upsampled":
        return batch
    return student_input_from(batch, "upsampled", meta.input_magnification / meta.magnification)
