"""Conv students that predict a map: a registry network's trunk, a 1x1 head and its classifier.

For the channels layout (:mod:`bregman.layouts`) a ``bregman`` student predicts a k-channel
coefficient map of the tapped layer's spatial size ``(k, H, W)`` (and a ``hint`` student the
layer's C-channel map). The student is the registry network built with ``num_classes = k``,
read two ways:

- *local*: its convolutional trunk (everything before its global pooling), an adaptive average
  pooling to ``(H, W)`` when the trunk's map has another size, and a 1x1 convolution to ``k``
  channels;
- *global*: its own classifier (global pooling and the Linear layers) on the trunk's map, a k
  vector added at every position.

Why the global term: a deep teacher's map (``layer3.0`` of a ResNet) carries the image's class
at every position, because each of its units sees most of the image. The 1x1 head alone sees
only the trunk's receptive field at its position: about 9x9 pixels for the registry's ``cnn``
(two 3x3 convolutions, the second with stride 2), and its students predicted little more than
each channel's mean and reached chance through the teacher's head (``benchmarks/image_flow.py``,
200 images of the CIFAR-shaped digits, 200 steps: hint 10.7 %, bregman 10.5 %; with the
classifier term, 400 steps, 3 seeds: 17.3 % and 16.2 %, where labels reach 15.3 %: the cnn itself
is weak there; 1000 images, 3000 steps: hint 18.6 % without, 66.2 % with it). For a ResNet the
classifier is global average pooling and one Linear layer.

The student's manifest records ``map_head = {"channels": k, "size": [H, W], "flatten": bool}``
so that :func:`student_from_manifest` rebuilds it.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from bregman.models import CifarResNet, WideResNet

__all__ = ["MapStudent", "conv_trunk", "map_student"]


def conv_trunk(model: nn.Module) -> tuple[nn.Module, int, nn.Module]:
    """A registry network's convolutional part (before global pooling), its width, and its
    classifier (the rest: global pooling, flatten, the Linear layers)."""
    if isinstance(model, CifarResNet):
        trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.layer1, model.layer2, model.layer3)
        return trunk, int(model.fc.in_features), nn.Sequential(model.avgpool, model.flatten, model.fc)
    if isinstance(model, WideResNet):
        trunk = nn.Sequential(model.conv1, model.block1, model.block2, model.block3, model.bn, model.relu)
        return trunk, int(model.fc.in_features), nn.Sequential(model.avgpool, model.flatten, model.fc)
    if isinstance(model, nn.Sequential):  # the registry's cnn: conv/bn/act ..., AdaptiveAvgPool2d, ...
        layers = list(model)
        for i, m in enumerate(layers):
            if isinstance(m, nn.AdaptiveAvgPool2d):
                convs = [c for c in layers[:i] if isinstance(c, nn.Conv2d)]
                if convs:
                    return nn.Sequential(*layers[:i]), int(convs[-1].out_channels), nn.Sequential(*layers[i:])
    raise ValueError(f"{type(model).__name__} has no convolutional trunk: a map student needs a conv architecture "
                     "(cnn, resnet*, wrn*)")


class MapStudent(nn.Module):
    """``x -> 1x1 conv(pool_to(H, W)(h)) + classifier(h)`` with ``h = trunk(x)``: a
    ``(B, channels, H, W)`` map (the classifier's ``(B, channels)`` added at every position),
    flattened to ``(B, channels*H*W)`` when ``flatten`` (the order the teacher's head reads)."""

    def __init__(self, trunk: nn.Module, width: int, channels: int, size: Sequence[int], flatten: bool = False,
                 classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(tuple(int(s) for s in size))
        self.head = nn.Conv2d(width, int(channels), 1)
        self.classifier = classifier
        self.flatten = flatten

    def forward(self, x: Tensor) -> Tensor:
        h = self.trunk(x)
        local = self.pool(h) if tuple(h.shape[-2:]) != self.pool.output_size else h
        out = self.head(local)
        if self.classifier is not None:
            out = out + self.classifier(h)[:, :, None, None]
        return out.flatten(1) if self.flatten else out


def map_student(model: nn.Module, channels: int, size: Sequence[int], flatten: bool = False) -> MapStudent:
    """A :class:`MapStudent` from a freshly built registry network whose classifier outputs
    ``channels`` values (``num_classes = channels``)."""
    trunk, width, classifier = conv_trunk(model)
    return MapStudent(trunk, width, channels, size, flatten=flatten, classifier=classifier)
