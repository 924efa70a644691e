"""SmallCNN: a small CPU-friendly network for the demo, with a settable output stride."""

from __future__ import annotations

from torch import Tensor, nn

from .base import FeatureClassifier

CHANNELS = (32, 64, 128, 256)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(FeatureClassifier):
    """Stem (3x3 conv, 32 channels) and four blocks ``block1..block4`` (32, 64, 128, 256 channels).

    Each block is ``[MaxPool2d(2)] -> conv-BN-ReLU``; the first ``log2(output_stride)`` blocks start
    with the 2x max-pool, so ``output_stride`` (1, 2, 4, 8 or 16) is the ratio of input size to the
    last block's grid. A Student's stride follows
    :func:`~wsidistill.models.checkpoint.student_output_stride`: by default the Teacher's (8), so a
    5x Student on 32 px costs about 1/64 of the 40x Teacher on 256 px and has a 4x4 grid; or, in the
    ``teacher`` grid design, ``s_t * m_s / m_t``, so both grids tile the same tissue cells.
    """

    nonnegative_features = True  # every block ends with conv-BN-ReLU

    def __init__(self, num_classes: int, output_stride: int | None = None) -> None:
        output_stride = 8 if output_stride is None else output_stride
        downsamplings = output_stride.bit_length() - 1
        if output_stride < 1 or 2**downsamplings != output_stride or downsamplings > len(CHANNELS):
            raise ValueError(f"smallcnn output_stride must be 1, 2, 4, 8 or 16, got {output_stride}")
        names = tuple(f"block{i + 1}" for i in range(len(CHANNELS)))
        super().__init__(
            num_features=CHANNELS[-1],
            num_classes=num_classes,
            feature_names=names,
            output_stride=output_stride,
        )
        self.stem = conv_bn_relu(3, CHANNELS[0])
        blocks = []
        in_channels = CHANNELS[0]
        for i, out_channels in enumerate(CHANNELS):
            pool = [nn.MaxPool2d(2)] if i < downsamplings else []
            blocks.append(nn.Sequential(*pool, conv_bn_relu(in_channels, out_channels)))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        features = {}
        for name, block in zip(self.feature_names, self.blocks):
            x = block(x)
            features[name] = x
        return features
