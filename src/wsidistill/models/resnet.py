"""ResNet-18/34 (torchvision BasicBlock networks, built without weights) as feature classifiers."""

from __future__ import annotations

from torch import Tensor

from .base import FeatureClassifier

LAYERS = ("layer1", "layer2", "layer3", "layer4")


class ResNet(FeatureClassifier):
    """torchvision ResNet stem and ``layer1..layer4`` (features), GAP and a linear classifier.

    Module names follow torchvision, so a torchvision state dict saved locally loads into the
    backbone (its ``fc`` head is skipped). BasicBlock networks cannot be dilated: output stride 32.
    """

    nonnegative_features = True  # a BasicBlock ends with ReLU(residual + shortcut)

    def __init__(self, depth: int, num_classes: int, output_stride: int | None = None) -> None:
        if output_stride not in (None, 32):
            raise ValueError(f"resnet{depth} has a fixed output stride of 32, got {output_stride}")
        super().__init__(num_features=512, num_classes=num_classes, feature_names=LAYERS, output_stride=32)
        # Imported here, not at module level: torchvision (with the torch._dynamo its ops pull in) is ~1.5 s of the
        # start of every training, evaluation and prediction job, and only the ResNets use it.
        import torchvision.models

        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = {}
        for name in LAYERS:
            x = getattr(self, name)(x)
            features[name] = x
        return features


def resnet18(num_classes: int, output_stride: int | None = None) -> ResNet:
    """ResNet-18 (He et al., 2016)."""
    return ResNet(18, num_classes, output_stride)


def resnet34(num_classes: int, output_stride: int | None = None) -> ResNet:
    """ResNet-34 (He et al., 2016)."""
    return ResNet(34, num_classes, output_stride)
