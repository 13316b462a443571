"""The torch-free parameter counts (``api_schemas.param_count``) against the built models."""
from __future__ import annotations

import inspect

import pytest

from api_schemas import StudentSpec
from api_schemas.jobs import StudentArgs
from api_schemas.param_count import ARCH_ARGUMENTS, parameter_count
from bregman.models import ARCHITECTURES, build_model, count_parameters


def test_the_argument_table_is_the_builders_signatures():
    assert set(ARCH_ARGUMENTS) == set(ARCHITECTURES)
    for arch, builder in ARCHITECTURES.items():
        assert ARCH_ARGUMENTS[arch] == set(inspect.signature(builder).parameters), arch
    # the student spec knows every builder argument, and nothing else
    assert set(StudentArgs.model_fields) == set().union(*ARCH_ARGUMENTS.values())
    assert set(StudentSpec.model_fields) == set(StudentArgs.model_fields) | {"arch", "args"}


CONFIGS = [
    ("mlp", {"in_features": 64, "hidden": [32, 16], "num_classes": 10}),
    ("mlp", {"in_features": 5, "hidden": [], "num_classes": 3}),
    ("mlp", {"in_features": 784, "hidden": [300, 100], "num_classes": 10, "activation": ["relu", "tanh"]}),
    ("cnn", {}),
    ("cnn", {"in_channels": 3, "channels": [8, 16, 32], "hidden": 20, "batch_norm": True, "num_classes": 7}),
    ("resnet8", {}),
    ("resnet20", {"num_classes": 100, "base_width": 4}),
    ("resnet8x4", {}),
    ("resnet32x4", {"base_width": 4}),
    ("resnet", {"depth": 14, "width": 2, "base_width": 4, "in_channels": 1}),
    ("wrn_16_1", {}),
    ("wrn_40_2", {"base_width": 4}),
    ("wrn", {"depth": 10, "widen_factor": 3, "base_width": 8}),
    ("wrn_28_10", {"base_width": 2, "num_classes": 5}),
]


@pytest.mark.parametrize("arch, args", CONFIGS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CONFIGS)])
def test_counts_match_the_built_models(arch, args):
    assert parameter_count(arch, args) == count_parameters(build_model(arch, **args))


@pytest.mark.parametrize("arch, args, words", [
    ("resnet", {"depth": 9}, "6n+2"),
    ("wrn", {"depth": 12}, "6n+4"),
    ("cnn", {"channels": []}, "at least one"),
    ("mlp", {"hidden": [3]}, "in_features"),
    ("resnet8", {"depth": 8}, "takes no argument"),
    ("vit", {}, "unknown architecture"),
])
def test_what_the_builders_refuse_is_refused(arch, args, words):
    with pytest.raises(ValueError, match=words.replace("+", r"\+")):
        parameter_count(arch, args)
