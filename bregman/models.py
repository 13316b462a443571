"""The architecture registry: the networks the distillation literature uses, written here.

Every builder returns a plain ``nn.Module`` that ``torch.export`` can export with a dynamic batch
dimension. Inputs are batches of per-example shapes: an MLP takes ``(B, in_features)``, the CNN
and the ResNets take ``(B, C, H, W)``.

- ``"mlp"``: an ``nn.Sequential`` of ``Linear`` / activation modules, so layer paths are indices
  (``"0"`` is the first Linear, ``"2"`` the second, ...). ``activation`` may be one name for all
  hidden layers or one name per hidden layer; ``output_activation`` may add a softmax or
  log-softmax after the logits.
- ``"cnn"``: a small ``nn.Sequential`` CNN (3x3 convolutions, the second with stride 2, adaptive
  average pooling to 2x2, then a hidden Linear). Works on inputs as small as 1x8x8 (digits).
- ``"resnet8"`` ... ``"resnet110"``, ``"resnet8x4"``, ``"resnet32x4"``: CIFAR ResNets (He et al.
  2016, 6n+2 layers of 3x3 basic blocks in three stages of 16/32/64 channels times ``width``;
  1x1 convolution + BN shortcut where the shape changes, as in the distillation benchmarks of
  Tian et al. 2020). ``base_width`` shrinks them for tests.
- ``"wrn_16_1"``, ``"wrn_16_2"``, ``"wrn_40_1"``, ``"wrn_40_2"``, ``"wrn"``: wide ResNets
  (Zagoruyko & Komodakis 2016), pre-activation blocks, depth 6n+4, widths 16, 16k, 32k, 64k.

``build_model_from_manifest`` validates the ``{"arch": ..., "args": {...}}`` part of a teacher
manifest (unknown architecture, unknown or missing arguments) with :class:`ManifestError`.

A manifest comes from a user, so its size is known before any memory is spent on it:
:func:`build_model` refuses more than :data:`MAX_LAYERS` layers (``hidden``/``channels``
entries, ResNet/WRN depth) and, with ``device="meta"``, builds the module without allocating a
single weight (every parameter is a shape only), so the parameter count and the state dict's
names and shapes can be compared with a limit and with the uploaded weights first.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ACTIVATIONS",
    "ManifestError",
    "build_model",
    "build_model_from_manifest",
    "count_parameters",
    "MAX_LAYERS",
    "make_activation",
]


class ManifestError(ValueError):
    """A model manifest names an unknown architecture or gives arguments it does not take."""


def _leaky_relu(negative_slope: float = 0.01) -> nn.Module:
    return nn.LeakyReLU(negative_slope)


# activation name -> module factory; "leaky_relu" takes negative_slope
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": _leaky_relu,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

_OUTPUT_ACTIVATIONS = ("softmax", "log_softmax")


def make_activation(name: str, negative_slope: float = 0.01) -> nn.Module:
    """Return a fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ManifestError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    if name == "leaky_relu":
        return _leaky_relu(negative_slope)
    return ACTIVATIONS[name]()


def _output_activation(name: str | None) -> list[nn.Module]:
    if name is None:
        return []
    if name == "softmax":
        return [nn.Softmax(dim=-1)]
    if name == "log_softmax":
        return [nn.LogSoftmax(dim=-1)]
    raise ManifestError(f"unknown output_activation {name!r}; choose None or one of {list(_OUTPUT_ACTIVATIONS)}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ManifestError(f"{name} must be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------- MLP
def mlp(
    in_features: int,
    hidden: Sequence[int] = (64,),
    num_classes: int = 10,
    activation: str | Sequence[str] = "relu",
    negative_slope: float = 0.01,
    output_activation: str | None = None,
) -> nn.Sequential:
    """Multi-layer perceptron as ``nn.Sequential(Linear, act, Linear, act, ..., Linear)``.

    Parameters
    ----------
    in_features : int
        Size of one input example (e.g. 64 for flattened 8x8 digits).
    hidden : sequence of int
        Widths of the hidden layers (may be empty: a linear classifier).
    num_classes : int
        Number of outputs (logits).
    activation : str or sequence of str
        One activation name for every hidden layer, or one per hidden layer.
    negative_slope : float
        Slope of ``"leaky_relu"`` for negative inputs.
    output_activation : {None, "softmax", "log_softmax"}
        Optional transfer after the logits.
    """
    _positive_int("in_features", in_features)
    _positive_int("num_classes", num_classes)
    hidden = [_positive_int("hidden[i]", h) for h in hidden]
    acts = [activation] * len(hidden) if isinstance(activation, str) else list(activation)
    if len(acts) != len(hidden):
        raise ManifestError(
            f"activation lists {len(acts)} names but hidden has {len(hidden)} layers; give one name or one per layer"
        )
    layers: list[nn.Module] = []
    width = in_features
    for h, act in zip(hidden, acts):
        layers += [nn.Linear(width, h), make_activation(act, negative_slope)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    layers += _output_activation(output_activation)
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------- CNN
def cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    activation: str = "relu",
    negative_slope: float = 0.01,
    batch_norm: bool = False,
) -> nn.Sequential:
    """Small CNN: 3x3 conv (stride 1), 3x3 conv (stride 2), ..., avg-pool to 2x2, Linear, Linear.

    Parameters
    ----------
    in_channels : int
        Channels of the input images (1 for digits, 3 for CIFAR).
    num_classes : int
        Number of outputs.
    channels : sequence of int
        Output channels of each convolution; every convolution after the first has stride 2.
    hidden : int
        Width of the hidden fully connected layer.
    activation : str
        Activation after every convolution and the hidden Linear.
    batch_norm : bool
        Put a BatchNorm2d between each convolution and its activation.
    """
    _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    _positive_int("hidden", hidden)
    if not channels:
        raise ManifestError("channels must list at least one convolution width")
    layers: list[nn.Module] = []
    width = in_channels
    for i, c in enumerate(channels):
        _positive_int("channels[i]", c)
        layers.append(nn.Conv2d(width, c, 3, stride=1 if i == 0 else 2, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c))
        layers.append(make_activation(activation, negative_slope))
        width = c
    layers += [
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 4, hidden),
        make_activation(activation, negative_slope),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


# -------------------------------------------------------------------------------- CIFAR ResNet
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images: stem conv, three stages of ``n`` basic blocks, pool, Linear.

    Parameters
    ----------
    depth : int
        6n + 2 (8, 14, 20, 32, 44, 56, 110).
    num_classes, in_channels : int
        Outputs and input channels.
    base_width : int
        Channels of the first stage (16 in the papers); the stages have base_width x (1, 2, 4) x
        ``width``.
    width : int
        Width multiplier of the stages (4 for resnet8x4 / resnet32x4; the stem stays at
        4 x base_width as in those models).
    """

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, base_width: int = 16, width: int = 1
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ManifestError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        stem = base_width * (4 if width > 1 else 1)
        widths = [base_width * width, 2 * base_width * width, 4 * base_width * width]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        in_planes = stem
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


# --------------------------------------------------------------------------------- Wide ResNet
class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(o)))))
        # as in the reference code: a projection shortcut reads the activated input
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-k: depth = 6n + 4; stages of 16k, 32k, 64k channels; final BN-ReLU, pool, Linear.

    Parameters
    ----------
    depth : int
        6n + 4 (10, 16, 22, 28, 40, ...).
    widen_factor : int
        k, the width multiplier.
    base_width : int
        16 in the paper; smaller for tests.
    dropout : float
        Dropout between the convolutions of a block (identity in eval mode).
    """

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
        base_width: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ManifestError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        _positive_int("widen_factor", widen_factor)
        n = (depth - 4) // 6
        widths = [base_width, base_width * widen_factor, 2 * base_width * widen_factor, 4 * base_width * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))


def _init_conv_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _resnet(depth: int, width: int = 1) -> Callable[..., CifarResNet]:
    def build(num_classes: int = 10, in_channels: int = 3, base_width: int = 16) -> CifarResNet:
        return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, base_width=base_width, width=width)

    build.__doc__ = f"CIFAR ResNet-{depth}" + (f" with stage width x{width}" if width > 1 else "")
    return build


def _wrn(depth: int, k: int) -> Callable[..., WideResNet]:
    def build(num_classes: int = 10, in_channels: int = 3, base_width: int = 16, dropout: float = 0.0) -> WideResNet:
        return WideResNet(depth, k, num_classes=num_classes, in_channels=in_channels, base_width=base_width, dropout=dropout)

    build.__doc__ = f"Wide ResNet WRN-{depth}-{k}"
    return build


def resnet(
    depth: int = 20, num_classes: int = 10, in_channels: int = 3, base_width: int = 16, width: int = 1
) -> CifarResNet:
    """CIFAR ResNet of any depth 6n+2 (see :class:`CifarResNet`)."""
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, base_width=base_width, width=width)


def wrn(
    depth: int = 16,
    widen_factor: int = 2,
    num_classes: int = 10,
    in_channels: int = 3,
    base_width: int = 16,
    dropout: float = 0.0,
) -> WideResNet:
    """Wide ResNet of any depth 6n+4 and width (see :class:`WideResNet`)."""
    return WideResNet(depth, widen_factor, num_classes, in_channels, base_width, dropout)


# name -> builder(**args) -> nn.Module
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
    **{f"resnet{d}": _resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet(8, 4),
    "resnet32x4": _resnet(32, 4),
    "wrn": wrn,
    **{f"wrn_{d}_{k}": _wrn(d, k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2), (28, 10))},
}


def _check_args(arch: str, builder: Callable[..., nn.Module], args: dict[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ManifestError(f"architecture {arch!r} takes no argument(s) {unknown}; it takes {sorted(params)}")
    missing = sorted(
        name for name, p in params.items() if p.default is inspect.Parameter.empty and name not in args
    )
    if missing:
        raise ManifestError(f"architecture {arch!r} needs argument(s) {missing}")


#: most layers a manifest may ask for: entries of ``hidden`` / ``channels`` and the depth of a
#: ResNet or WRN (resnet1202, the deepest in the literature, is the largest we allow). Bounds the
#: time to build even a weightless (meta) model: about 50 us per module.
MAX_LAYERS = 1202


def _check_size_args(arch: str, args: dict[str, Any]) -> None:
    for key in ("hidden", "channels", "activation"):
        value = args.get(key)
        if isinstance(value, (list, tuple)) and len(value) > MAX_LAYERS:
            raise ManifestError(f"{key} lists {len(value)} layers; at most {MAX_LAYERS} are allowed")
    depth = args.get("depth")
    if isinstance(depth, int) and depth > MAX_LAYERS:
        raise ManifestError(f"depth {depth} is above the limit of {MAX_LAYERS}")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def build_model(arch: str, *, device: str | torch.device | None = None, **kwargs: Any) -> nn.Module:
    """Build a registry architecture with its arguments, in eval mode.

    Parameters
    ----------
    device : None, "cpu", "meta", ...
        Where the parameters are created; ``"meta"`` allocates none (shapes only), for checking a
        manifest's size and state-dict layout before paying for it.

    Raises
    ------
    ManifestError
        Unknown architecture (the message lists the known ones), arguments it does not take, or
        more than :data:`MAX_LAYERS` layers.
    """
    builder = ARCHITECTURES.get(arch)
    if builder is None:
        raise ManifestError(f"unknown architecture {arch!r}; known architectures: {sorted(ARCHITECTURES)}")
    _check_args(arch, builder, kwargs)
    _check_size_args(arch, kwargs)
    try:
        if device is None:
            model = builder(**kwargs)
        else:
            with torch.device(device):
                model = builder(**kwargs)
    except ManifestError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # e.g. a list where an int belongs
        raise ManifestError(f"architecture {arch!r} cannot be built from args {_short(kwargs)}: {_short(exc)}") from None
    return model.eval()


def build_model_from_manifest(manifest: dict[str, Any], device: str | torch.device | None = None) -> nn.Module:
    """Build the model a manifest ``{"arch": ..., "args": {...}, ...}`` names (other keys ignored here)."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"a manifest must be a JSON object, got {type(manifest).__name__}")
    if "arch" not in manifest:
        raise ManifestError(f"manifest has no 'arch'; known architectures: {sorted(ARCHITECTURES)}")
    args = manifest.get("args", {})
    if not isinstance(args, dict):
        raise ManifestError(f"manifest 'args' must be a JSON object, got {type(args).__name__}")
    return build_model(manifest["arch"], device=device, **args)


def default_input_shape(arch: str, args: dict[str, Any]) -> tuple[int, ...] | None:
    """The per-example input shape implied by the arguments, where they imply one (MLP only)."""
    if arch == "mlp" and "in_features" in args:
        return (int(args["in_features"]),)
    return None


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (buffers such as BN statistics are not counted)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))
