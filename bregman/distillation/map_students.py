"""Conv students that predict a map: a registry network's convolutional trunk + a 1x1 head.

For the channels layout (:mod:`bregman.layouts`) a ``bregman`` student predicts a k-channel
coefficient map of the tapped layer's spatial size ``(k, H, W)`` (and a ``hint`` student the
layer's C-channel map): the registry architecture's convolutional trunk (everything before its
global pooling), an adaptive average pooling to ``(H, W)`` when the trunk's map has another
size, and a 1x1 convolution to ``k`` channels. The student's manifest records
``map_head = {"channels": k, "size": [H, W]}`` so that :func:`student_from_manifest` rebuilds it.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from bregman.models import CifarResNet, WideResNet

__all__ = ["MapStudent", "conv_trunk", "map_student"]


def conv_trunk(model: nn.Module) -> tuple[nn.Module, int]:
    """The convolutional part of a registry network (before global pooling) and its width."""
    if isinstance(model, CifarResNet):
        trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.layer1, model.layer2, model.layer3)
        return trunk, int(model.fc.in_features)
    if isinstance(model, WideResNet):
        trunk = nn.Sequential(model.conv1, model.block1, model.block2, model.block3, model.bn, model.relu)
        return trunk, int(model.fc.in_features)
    if isinstance(model, nn.Sequential):  # the registry's cnn: conv/bn/act ..., AdaptiveAvgPool2d, ...
        layers = list(model)
        for i, m in enumerate(layers):
            if isinstance(m, nn.AdaptiveAvgPool2d):
                convs = [c for c in layers[:i] if isinstance(c, nn.Conv2d)]
                if convs:
                    return nn.Sequential(*layers[:i]), int(convs[-1].out_channels)
    raise ValueError(f"{type(model).__name__} has no convolutional trunk: a map student needs a conv architecture "
                     "(cnn, resnet*, wrn*)")


class MapStudent(nn.Module):
    """``x -> 1x1 conv(pool_to(H, W)(trunk(x)))``: a ``(B, channels, H, W)`` map, flattened to
    ``(B, channels*H*W)`` when ``flatten`` (the order the teacher's head reads)."""

    def __init__(self, trunk: nn.Module, width: int, channels: int, size: Sequence[int], flatten: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(tuple(int(s) for s in size))
        self.head = nn.Conv2d(width, int(channels), 1)
        self.flatten = flatten

    def forward(self, x: Tensor) -> Tensor:
        h = self.trunk(x)
        if tuple(h.shape[-2:]) != self.pool.output_size:
            h = self.pool(h)
        out = self.head(h)
        return out.flatten(1) if self.flatten else out


def map_student(model: nn.Module, channels: int, size: Sequence[int], flatten: bool = False) -> MapStudent:
    """A :class:`MapStudent` from a freshly built registry network (its classifier is dropped)."""
    trunk, width = conv_trunk(model)
    return MapStudent(trunk, width, channels, size, flatten=flatten)
