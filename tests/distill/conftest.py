"""Tiny networks for the distillation tests."""

import pytest
import torch
from torch import Tensor, nn

from wsidistill.models import FeatureClassifier

torch.set_num_threads(2)


class PointwiseNet(FeatureClassifier):
    """Two 1x1-conv blocks (tanh, then linear: signed activations), GAP, linear head.

    Every layer acts per pixel, so the network commutes exactly with flips and rotations.
    """

    def __init__(self, num_classes: int = 3, channels: tuple[int, int] = (4, 6)) -> None:
        super().__init__(
            num_features=channels[1], num_classes=num_classes, feature_names=("block1", "block2"), output_stride=1
        )
        self.block1 = nn.Sequential(nn.Conv2d(3, channels[0], 1), nn.Tanh())
        self.block2 = nn.Conv2d(channels[0], channels[1], 1)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        first = self.block1(x)
        return {"block1": first, "block2": self.block2(first)}


@pytest.fixture
def pointwise_net():
    def make(seed: int = 0, **kwargs) -> PointwiseNet:
        torch.manual_seed(seed)
        return PointwiseNet(**kwargs).double()

    return make
