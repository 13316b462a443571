"""Parameter counts of the registry architectures, in pure Python (no torch).

The API bounds a job's student by its parameter count before anything is queued, and it must
not import torch; these formulas mirror the builders of ``bregman/models.py`` layer by layer
(``tests/service/test_limits_param_count.py`` holds them against
``bregman.models.count_parameters(build_model(...))``). Buffers (BatchNorm running statistics)
are not parameters, as in ``count_parameters``.

``ARCH_ARGUMENTS`` lists the arguments each builder takes (the same test compares it with the
builders' signatures); :func:`parameter_count` fills in the builders' defaults.
"""
from __future__ import annotations

from typing import Any, Mapping

_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
_WRN_FIXED = ((16, 1), (16, 2), (40, 1), (40, 2), (28, 10))

#: arch -> the builder's arguments (``bregman.models.ARCHITECTURES``)
ARCH_ARGUMENTS: dict[str, frozenset[str]] = {
    "mlp": frozenset({"in_features", "hidden", "num_classes", "activation", "negative_slope", "output_activation"}),
    "cnn": frozenset({"in_channels", "num_classes", "channels", "hidden", "activation", "negative_slope", "batch_norm"}),
    "resnet": frozenset({"depth", "num_classes", "in_channels", "base_width", "width"}),
    **{f"resnet{d}": frozenset({"num_classes", "in_channels", "base_width"}) for d in _RESNET_DEPTHS},
    "resnet8x4": frozenset({"num_classes", "in_channels", "base_width"}),
    "resnet32x4": frozenset({"num_classes", "in_channels", "base_width"}),
    "wrn": frozenset({"depth", "widen_factor", "num_classes", "in_channels", "base_width", "dropout"}),
    **{f"wrn_{d}_{k}": frozenset({"num_classes", "in_channels", "base_width", "dropout"}) for d, k in _WRN_FIXED},
}

#: (depth, width) of the fixed ResNets and (depth, widen_factor) of the fixed WRNs
_RESNET_FIXED = {**{f"resnet{d}": (d, 1) for d in _RESNET_DEPTHS}, "resnet8x4": (8, 4), "resnet32x4": (32, 4)}
_WRN_NAMED = {f"wrn_{d}_{k}": (d, k) for d, k in _WRN_FIXED}


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _conv(i: int, o: int, k: int, bias: bool) -> int:
    return i * o * k * k + (o if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers


def _mlp(in_features: int, hidden: Any = (64,), num_classes: int = 10, **_: Any) -> int:
    if isinstance(hidden, int):
        raise ValueError("mlp's hidden is a list of widths, e.g. [64, 32]")
    total, width = 0, int(in_features)
    for h in hidden:
        total += _linear(width, int(h))
        width = int(h)
    return total + _linear(width, int(num_classes))


def _cnn(in_channels: int = 1, num_classes: int = 10, channels: Any = (16, 32), hidden: Any = 64,
         batch_norm: bool = False, **_: Any) -> int:
    if not isinstance(hidden, int):
        raise ValueError("cnn's hidden is one width (an integer), e.g. 64")
    if not channels:
        raise ValueError("cnn's channels must list at least one convolution width")
    total, width = 0, int(in_channels)
    for c in channels:
        total += _conv(width, int(c), 3, bias=not batch_norm) + (_bn(int(c)) if batch_norm else 0)
        width = int(c)
    return total + _linear(width * 4, int(hidden)) + _linear(int(hidden), int(num_classes))


def _resnet(depth: int = 20, num_classes: int = 10, in_channels: int = 3, base_width: int = 16, width: int = 1) -> int:
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, ...), got {depth}")
    n = (depth - 2) // 6
    stem = base_width * (4 if width > 1 else 1)
    total = _conv(in_channels, stem, 3, bias=False) + _bn(stem)
    in_planes = stem
    for i, planes in enumerate((base_width * width, 2 * base_width * width, 4 * base_width * width)):
        stride2 = i > 0  # the first block of stages 2 and 3
        # block 1 may project; blocks 2..n map planes -> planes
        for j, cin in ((0, in_planes), (1, planes)):
            blocks = 1 if j == 0 else n - 1
            one = _conv(cin, planes, 3, False) + _bn(planes) + _conv(planes, planes, 3, False) + _bn(planes)
            if j == 0 and (stride2 or cin != planes):
                one += _conv(cin, planes, 1, False) + _bn(planes)
            total += blocks * one
        in_planes = planes
    return total + _linear(in_planes, num_classes)


def _wrn(depth: int = 16, widen_factor: int = 2, num_classes: int = 10, in_channels: int = 3,
         base_width: int = 16, dropout: float = 0.0) -> int:
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
    n = (depth - 4) // 6
    widths = (base_width, base_width * widen_factor, 2 * base_width * widen_factor, 4 * base_width * widen_factor)
    total = _conv(in_channels, widths[0], 3, bias=False)
    in_planes = widths[0]
    for i, planes in enumerate(widths[1:]):
        for j, cin in ((0, in_planes), (1, planes)):
            blocks = 1 if j == 0 else n - 1
            stride = 2 if (i > 0 and j == 0) else 1
            one = _bn(cin) + _conv(cin, planes, 3, False) + _bn(planes) + _conv(planes, planes, 3, False)
            if not (cin == planes and stride == 1):
                one += _conv(cin, planes, 1, False)
            total += blocks * one
        in_planes = planes
    return total + _bn(in_planes) + _linear(in_planes, num_classes)


def parameter_count(arch: str, args: Mapping[str, Any]) -> int:
    """Scalar parameters of ``build_model(arch, **args)``; ValueError for an unknown arch or
    arguments the builder does not take or cannot build from."""
    if arch not in ARCH_ARGUMENTS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCH_ARGUMENTS))}")
    unknown = sorted(set(args) - ARCH_ARGUMENTS[arch])
    if unknown:
        raise ValueError(f"architecture {arch!r} takes no argument(s) {unknown}; it takes {sorted(ARCH_ARGUMENTS[arch])}")
    args = dict(args)
    if arch == "mlp":
        if "in_features" not in args:
            raise ValueError("mlp needs in_features")
        return _mlp(**args)
    if arch == "cnn":
        return _cnn(**args)
    if arch == "resnet":
        return _resnet(**args)
    if arch in _RESNET_FIXED:
        depth, width = _RESNET_FIXED[arch]
        return _resnet(depth, width=width, **args)
    if arch == "wrn":
        return _wrn(**args)
    depth, k = _WRN_NAMED[arch]
    return _wrn(depth, k, **args)
