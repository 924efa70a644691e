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


def student_reads(
    arch: str,
    magnification: float,
    teacher_magnification: float,
    *,
    side: int,
    grid: str = "native",
    upsampled: bool = False,
    teacher_stride: int = TEACHER_OUTPUT_STRIDE,
) -> tuple[int | None, dict[str, tuple[int, int]]]:
    """A Student's output stride and the grids its distillation terms read, ``(stride, sides)``.

    ``side``: the Student's patch side in px at its own ``magnification``; ``upsampled``: it reads the
    Teacher's patch pooled to its magnification and upsampled back (``student.input: upsampled``: the
    Teacher's stride and input side). ``stride``: for :func:`~wsidistill.models.build_model` (rule of
    :func:`student_output_stride`). ``sides``: ``"grid"``, its last block's ``(H, W)`` (where features and
    attention maps are matched), and ``"input"``, its input's ``(H, W)`` (where ``saliency`` is matched),
    found by running the network on a shape-only ("meta") tensor, so every backbone's rounding is its own.
    """
    if upsampled:
        stride = teacher_stride if arch not in FIXED_STRIDES else None
        side = int(round(side * teacher_magnification / magnification))
    else:
        stride = student_output_stride(arch, magnification, teacher_magnification, side=side, grid=grid,
                                       teacher_stride=teacher_stride)
    with torch.device("meta"):
        network = build_model(arch, 2, output_stride=stride).eval()
        last = list(network(torch.zeros(1, 3, side, side)).features.values())[-1]
    return stride, {"grid": tuple(last.shape[-2:]), "input": (side, side)}


@dataclass(frozen=True)
class ModelMeta:
    """What a trained model's checkpoint says about it (``model.pt``'s ``meta``, stored as a plain dict).

    Magnifications are objective powers (40 = 40x). ``input_magnification``: the patches the model
    reads (a Student with ``student_input`` "upsampled" reads the Teacher's and pools them to its own
    ``magnification``); ``patch_side``: their side in pixels. ``output_stride``: the ``smallcnn``
    stride (None for fixed-stride backbones). ``student_grid``: the Student design, ``native`` or
    ``teacher`` (:func:`student_output_stride`; None for the Teacher). ``weights``: the method's loss terms; ``settings``: the
    training settings; ``runtime``: device and precision; ``threads``: the intra-op thread count
    (``torch.get_num_threads()``) it trained with, which the float sums, and so the bits, depend on.
    ``train_patches_per_class``: labelled training patches by class name (a class with 0 was absent from the
    training split). ``fingerprint``: digest of every setting and input that shaped the weights. Checkpoints written
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
    student_grid: str | None = None
    teacher_cache: str | None = None
    method: str | None = None
    weights: dict[str, float] | None = None
    seed: int | None = None
    best_epoch: int | None = None
    val_kappa: float | None = None
    train_patches: int | None = None
    train_patches_per_class: dict[str, int] | None = None
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
