"""Networks: every model maps images to :class:`ModelOutput` (logits and ordered stage features)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .base import FeatureClassifier, ModelOutput, load_pretrained
from .resnet import resnet18, resnet34
from .smallcnn import SmallCNN
from .vgg import VGG16

MODELS: dict[str, Callable[..., FeatureClassifier]] = {
    "smallcnn": SmallCNN,
    "vgg16": VGG16,
    "resnet18": resnet18,
    "resnet34": resnet34,
}


def build_model(
    name: str,
    num_classes: int,
    *,
    pretrained: str | Path | None = None,
    output_stride: int | None = None,
) -> nn.Module:
    """Build the network ``name`` (a key of :data:`MODELS`), optionally loading a local checkpoint.

    ``output_stride`` is honoured by ``smallcnn`` (default 8); the VGG16 (16) and ResNet (32)
    families have a fixed stride and accept ``None`` or that value.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    model = MODELS[name](num_classes, output_stride=output_stride)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


__all__ = ["MODELS", "FeatureClassifier", "ModelOutput", "build_model", "load_pretrained"]
