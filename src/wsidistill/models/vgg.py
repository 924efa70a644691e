"""VGG16 cut into the five convolutional blocks of the reference code (cvblab/kd_resolution)."""

from __future__ import annotations

from torch import Tensor, nn

from .base import FeatureClassifier

# torchvision's VGG16 configuration "D": channels per 3x3 conv, "M" = 2x2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# End index (exclusive) of block1..block5 in ``features``: the reference's slices
# features[0:5], [5:10], [10:17], [17:24], [24:29].
BLOCK_ENDS = (5, 10, 17, 24, 29)


def vgg16_features() -> nn.Sequential:
    """Conv/ReLU/max-pool layers numbered as torchvision's ``vgg16().features``, up to index 28."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers[: BLOCK_ENDS[-1]])


class VGG16(FeatureClassifier):
    """VGG16 backbone, GAP and a linear classifier, as in the reference.

    Blocks 1-4 end with their max-pool; block5 is conv-ReLU-conv-ReLU-conv: the reference keeps
    ``features[24:29]``, dropping VGG16's last ReLU and max-pool, so block5 activations are signed
    and the output stride is 16. Layer indices follow torchvision, so a torchvision VGG16 state dict
    saved locally loads into the backbone.
    """

    def __init__(self, num_classes: int, output_stride: int | None = None) -> None:
        if output_stride not in (None, 16):
            raise ValueError(f"vgg16 has a fixed output stride of 16, got {output_stride}")
        super().__init__(
            num_features=512,
            num_classes=num_classes,
            feature_names=tuple(f"block{i + 1}" for i in range(len(BLOCK_ENDS))),
            output_stride=16,
        )
        self.features = vgg16_features()
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        features = {}
        start = 0
        for name, end in zip(self.feature_names, BLOCK_ENDS):
            x = self.features[start:end](x)
            features[name] = x
            start = end
        return features
