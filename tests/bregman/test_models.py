"""The architecture registry: builders, arguments, manifests, sizes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bregman.models import (
    ARCHITECTURES,
    ManifestError,
    build_model,
    build_model_from_manifest,
    count_parameters,
)
from tests.bregman._teacher_fixtures import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_lists_the_literature_architectures():
    for name in ("mlp", "cnn", "resnet8", "resnet20", "resnet32", "resnet56", "wrn_16_2", "wrn_40_2"):
        assert name in ARCHITECTURES


@pytest.mark.parametrize("arch", sorted(a for a in ARCHITECTURES if a not in ("mlp", "cnn")))
def test_every_resnet_builds_and_runs_on_tiny_inputs(arch):
    model = build_model(arch, base_width=1, num_classes=5)
    assert not model.training
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5)


@pytest.mark.parametrize(
    ("arch", "blocks_per_stage"), [("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet56", 9), ("resnet110", 18)]
)
def test_resnet_depth_is_6n_plus_2(arch, blocks_per_stage):
    model = build_model(arch, base_width=1)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [blocks_per_stage] * 3
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
    assert len(convs) + 1 == int(arch.removeprefix("resnet"))  # + the final Linear


@pytest.mark.parametrize(("arch", "blocks", "widths"), [("wrn_16_2", 2, (32, 64, 128)), ("wrn_40_2", 6, (32, 64, 128)), ("wrn_28_10", 4, (160, 320, 640))])
def test_wide_resnet_depth_and_width(arch, blocks, widths):
    model = build_model(arch)
    stages = [model.block1, model.block2, model.block3]
    assert [len(s) for s in stages] == [blocks] * 3
    assert tuple(s[-1].conv2.out_channels for s in stages) == widths


def test_parameter_counts_match_the_papers():
    # ResNet-20 has 0.27M parameters (He et al. 2016); WRN-40-2 2.2M (Zagoruyko & Komodakis 2016)
    assert 0.26e6 < count_parameters(build_model("resnet20")) < 0.28e6
    assert 2.1e6 < count_parameters(build_model("wrn_40_2")) < 2.3e6


def test_mlp_is_a_sequential_with_index_paths():
    model = build_model("mlp", in_features=64, hidden=[32, 16], num_classes=10, activation=["relu", "tanh"])
    assert isinstance(model, nn.Sequential)
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "Tanh", "Linear"]
    assert model(torch.randn(3, 64)).shape == (3, 10)


def test_mlp_output_activation_and_leaky_slope():
    model = build_model("mlp", in_features=4, hidden=[3], num_classes=2, activation="leaky_relu", negative_slope=0.3, output_activation="log_softmax")
    assert model[1].negative_slope == 0.3
    assert isinstance(model[-1], nn.LogSoftmax)


def test_cnn_accepts_digits_shaped_inputs():
    model = build_model("cnn", in_channels=1, num_classes=10)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert build_model("cnn", in_channels=3, batch_norm=True)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ManifestError) as err:
        build_model("vgg16")
    assert "vgg16" in str(err.value) and "resnet20" in str(err.value) and "mlp" in str(err.value)


def test_unknown_and_missing_arguments_are_named():
    with pytest.raises(ManifestError, match="width_mult"):
        build_model("resnet20", width_mult=2)
    with pytest.raises(ManifestError, match="in_features"):
        build_model("mlp", hidden=[3])
    with pytest.raises(ManifestError, match="activation"):
        build_model("mlp", in_features=3, hidden=[3, 3], activation=["relu"])
    with pytest.raises(ManifestError, match="swish"):
        build_model("mlp", in_features=3, hidden=[3], activation="swish")
    with pytest.raises(ManifestError, match="6n\\+2"):
        build_model("resnet", depth=10)


def test_build_from_manifest():
    model = build_model_from_manifest({"arch": "mlp", "args": {"in_features": 5, "hidden": [4], "num_classes": 3}})
    assert model(torch.randn(2, 5)).shape == (2, 3)
    with pytest.raises(ManifestError, match="arch"):
        build_model_from_manifest({"args": {}})
    with pytest.raises(ManifestError, match="args"):
        build_model_from_manifest({"arch": "mlp", "args": [1, 2]})


def test_count_parameters_trainable_only():
    model = build_model("mlp", in_features=3, hidden=[2], num_classes=2)
    total = count_parameters(model)
    assert total == 3 * 2 + 2 + 2 * 2 + 2
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - 6
