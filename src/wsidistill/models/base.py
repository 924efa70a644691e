"""Common contract of every network in the project.

A network is a stack of convolutional stages followed by global average pooling (GAP) and one
linear classifier. ``forward`` returns the logits and every stage's output, ordered shallow to
deep; the last entry is the last convolutional block before pooling, where Grad-CAM/AT+ maps and
feature matching are taken. Because the head is GAP + linear, the Grad-CAM channel weights of the
last block have a closed form (see :mod:`wsidistill.distill.attention`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    """Logits ``(B, num_classes)`` and stage outputs ``{name: (B, K, H, W)}``, shallow to deep."""

    logits: Tensor
    features: dict[str, Tensor]


class FeatureClassifier(nn.Module):
    """Convolutional stages, global average pooling, linear ``classifier``.

    Subclasses build their stages and implement :meth:`forward_features`, and set
    :attr:`nonnegative_features` when the last block ends with a ReLU.
    """

    #: The last block's output is >= 0 everywhere (it ends with a ReLU). Its AT+ maps are then linear in it,
    #: ``M^c = sum_k ReLU(a_k^c) A_k``, so they commute with area pooling (a Teacher-target cache derives them
    #: from the pooled features instead of storing them: :mod:`wsidistill.training.teacher_cache`).
    nonnegative_features: bool = False

    def __init__(
        self,
        *,
        num_features: int,
        num_classes: int,
        feature_names: tuple[str, ...],
        output_stride: int,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.feature_names = feature_names
        self.output_stride = output_stride
        self.classifier = nn.Linear(num_features, num_classes)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Stage outputs keyed by ``feature_names``, in that order."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.forward_features(x)
        pooled = features[self.feature_names[-1]].mean(dim=(-2, -1))
        return ModelOutput(self.classifier(pooled), features)


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint into ``model`` (nothing is ever downloaded).

    The file holds a state dict or ``{"model": state_dict}``. A checkpoint of the same network
    loads entirely. A backbone checkpoint (for instance torchvision ImageNet weights saved to disk,
    whose module names the VGG and ResNet families keep) loads too: entries with no counterpart in
    the model (a foreign head such as torchvision's ``fc.*``) and a classifier of another shape are
    skipped with a warning. Every non-classifier parameter and buffer must load, else ValueError.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and not k.startswith("classifier.")]
    if missing:
        raise ValueError(f"checkpoint {path} lacks or mis-shapes {len(missing)} entries, e.g. {missing[:5]}")
    skipped = sorted(set(state) - set(usable))
    if skipped:
        warnings.warn(f"checkpoint {path}: skipped {skipped[:5]}{'...' if len(skipped) > 5 else ''}", stacklevel=2)
    model.load_state_dict(usable, strict=False)
