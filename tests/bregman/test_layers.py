"""Layer listing and taps: head(f(body(x))) == teacher(x) at every tappable layer, detected transfers."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bregman.layers import LayerError, list_layers, split_at
from bregman.models import build_model
from bregman.teachers import Teacher, load_teacher
from tests.bregman._teacher_fixtures import (
    BatchViewNet,
    ResidualNet,
    export_pt2,
    one_thread,  # noqa: F401  (fixture)
    randomize_batch_norm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = (3, 8, 8)


def _check_every_tappable_layer(teacher: Teacher, x: torch.Tensor) -> list[str]:
    expected = teacher.module(x)
    tapped = []
    for info in list_layers(teacher):
        if not info.tappable:
            continue
        split = split_at(teacher, info.path)
        a = split.body(x)
        assert a.shape == (x.shape[0], info.d), info.path
        out = split.head(split.transfer.f(a))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6, msg=f"layer {info.path}")
        tapped.append(info.path)
    return tapped


# every registry family at every tappable layer. Deeper or wider members of a family (resnet14/32/44/56/110,
# resnet32x4, wrn_16_2, wrn_40_1, wrn_28_10) are the same classes with other depth/width arguments; test_models
# checks their structure, which keeps this suite fast.
REGISTRY_CASES = [
    ("mlp", {"in_features": 6, "hidden": [5, 4], "num_classes": 3}, (6,)),
    ("cnn", {"in_channels": 1, "channels": [3, 4], "hidden": 5, "batch_norm": True}, (1, 8, 8)),
    ("cnn", {"in_channels": 3, "channels": [2, 3, 4], "hidden": 5, "activation": "tanh"}, IMAGE),
    ("resnet", {"depth": 8, "base_width": 2}, IMAGE),
    ("resnet8", {"base_width": 2}, IMAGE),
    ("resnet20", {"base_width": 1}, IMAGE),
    ("resnet8x4", {"base_width": 1}, IMAGE),
    ("wrn", {"depth": 10, "widen_factor": 2, "base_width": 2}, IMAGE),
    ("wrn_16_1", {"base_width": 2}, IMAGE),
    ("wrn_40_2", {"base_width": 1}, (3, 4, 4)),
]


@pytest.mark.parametrize(("arch", "args", "shape"), REGISTRY_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(REGISTRY_CASES)])
def test_head_of_tap_reproduces_teacher_at_every_layer(arch, args, shape):
    torch.manual_seed(0)
    model = randomize_batch_norm(build_model(arch, **args))
    teacher = Teacher.from_module(model, shape)
    tapped = _check_every_tappable_layer(teacher, torch.randn(5, *shape))
    assert len(tapped) >= 3


def test_resnet_taps_are_block_outputs_and_block_insides_are_refused():
    model = randomize_batch_norm(build_model("resnet8", base_width=2))
    layers = {info.path: info for info in list_layers(model, torch.randn(2, *IMAGE))}
    for path in ("bn1", "layer1.0", "layer2.0", "layer3.0", "avgpool", "fc"):
        assert layers[path].tappable, path
    assert layers["layer1.0"].op == "add" and layers["layer1.0"].transfer == "relu"
    assert layers["fc"].transfer == "identity"
    inside = layers["layer2.0.bn1"]
    assert not inside.tappable and "not a cut" in inside.reason and "skip" in inside.reason


def test_conv_layers_list_both_layouts_with_channels_the_default():
    model = build_model("cnn", in_channels=1, channels=[3, 4], hidden=5)
    layers = {i.path: i for i in list_layers(model, torch.randn(2, 1, 8, 8))}
    conv = layers["0"]
    assert conv.op == "conv" and conv.output_shape == (3, 8, 8) and conv.d == 192
    assert conv.representation == "channels" and conv.transfer == "relu"
    assert conv.layouts == {"flat": 192, "channels": 3} and conv.d_of("channels") == 3
    logits = layers["8"]  # a flat layer has the flat layout only
    assert logits.representation == "flat" and logits.layouts == {"flat": 10}
    split = split_at(model, "0", torch.randn(2, 1, 8, 8))
    assert split.body(torch.randn(4, 1, 8, 8)).shape == (4, 192)


def test_pt2_of_user_model_with_residual_block(tmp_path):
    torch.manual_seed(1)
    path = export_pt2(ResidualNet(), torch.randn(2, 6), tmp_path / "res.pt2")
    teacher = load_teacher(path)
    layers = {i.path: i for i in list_layers(teacher)}
    tapped = _check_every_tappable_layer(teacher, torch.randn(9, 6))
    assert set(tapped) == {"inp", "add", "out"}
    assert layers["inp"].transfer == "tanh"
    assert layers["add"].transfer == "leaky_relu" and layers["add"].transfer_params == {"negative_slope": 0.1}
    # the residual branch: its output is not the only way the rest sees its input
    assert not layers["fc1"].tappable and "skip" in layers["fc1"].reason
    assert not layers["fc2"].tappable


def test_pt2_whose_head_reads_the_batch_size(tmp_path):
    torch.manual_seed(2)
    teacher = load_teacher(export_pt2(BatchViewNet(), torch.randn(2, 1, 8, 8), tmp_path / "view.pt2"))
    tapped = _check_every_tappable_layer(teacher, torch.randn(5, 1, 8, 8))
    assert set(tapped) == {"conv", "mean", "fc"}
    head = split_at(teacher, "conv").head
    exported = torch.export.export(head, (torch.rand(3, 128),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    y = torch.rand(4, 128)
    torch.testing.assert_close(exported.module()(y), head(y))


def test_registry_model_exported_to_pt2_keeps_module_paths(tmp_path):
    model = randomize_batch_norm(build_model("resnet8", base_width=2))
    teacher = load_teacher(export_pt2(model, torch.randn(2, *IMAGE), tmp_path / "r8.pt2"))
    paths = [i.path for i in list_layers(teacher) if i.tappable]
    assert paths == ["conv1", "bn1", "layer1.0", "layer2.0", "layer3.0", "avgpool", "fc"]
    _check_every_tappable_layer(teacher, torch.randn(3, *IMAGE))


def test_detected_transfer_functions_of_every_supported_activation():
    acts = ["relu", "leaky_relu", "sigmoid", "tanh"]
    model = build_model("mlp", in_features=4, hidden=[4, 4, 4, 4], num_classes=3, activation=acts, negative_slope=0.2, output_activation="log_softmax")
    layers = list_layers(model, torch.randn(2, 4))
    assert [(i.path, i.op, i.transfer) for i in layers] == [
        ("0", "linear", "relu"), ("2", "linear", "leaky_relu"), ("4", "linear", "sigmoid"),
        ("6", "linear", "tanh"), ("8", "linear", "softmax"),
    ]
    assert layers[1].transfer_params == {"negative_slope": 0.2}
    assert all(i.tappable for i in layers)
    x = torch.randn(6, 4)
    for info in layers:
        split = split_at(model, info.path, x)
        assert split.transfer.name == info.transfer
        torch.testing.assert_close(split.head(split.transfer.f(split.body(x))), model(x), rtol=1e-5, atol=1e-5)
    softmax_out = build_model("mlp", in_features=4, hidden=[3], num_classes=3, output_activation="softmax")
    assert list_layers(softmax_out, x)[-1].transfer == "softmax"


@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_non_monotone_activations_are_refused_with_reason(act):
    model = build_model("mlp", in_features=4, hidden=[5, 3], num_classes=2, activation=["relu", act])
    layers = {i.path: i for i in list_layers(model, torch.randn(2, 4))}
    refused = layers["2"]
    assert not refused.tappable and refused.transfer == act
    assert "convex potential" in refused.reason and "neighbouring layer" in refused.reason
    assert layers["0"].tappable and layers["4"].tappable
    with pytest.raises(LayerError, match="convex potential"):
        split_at(model, "2", torch.randn(2, 4))


def test_output_with_several_consumers_is_refused():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.relu(h)) + h[:, :2]

    layers = {i.path: i for i in list_layers(TwoReaders(), torch.randn(2, 4))}
    assert not layers["a"].tappable and "2 consumers" in layers["a"].reason


def test_unknown_layer_lists_tappable_ones_and_node_names_are_aliases():
    model = build_model("mlp", in_features=4, hidden=[3], num_classes=2)
    x = torch.randn(2, 4)
    with pytest.raises(LayerError) as err:
        split_at(model, "7", x)
    assert "'0'" in str(err.value) and "'2'" in str(err.value)
    by_node = split_at(model, "linear", x)
    assert by_node.info.path == "0"


def test_head_is_frozen_but_passes_gradients_and_teacher_is_untouched():
    model = build_model("mlp", in_features=4, hidden=[3], num_classes=2)
    split = split_at(model, "0", torch.randn(2, 4))
    assert all(not p.requires_grad for p in split.head.parameters())
    assert all(p.requires_grad for p in model.parameters())
    y = torch.rand(5, 3, requires_grad=True)
    split.head(y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_split_exports_end_to_end_with_a_student(tmp_path):
    model = randomize_batch_norm(build_model("resnet8", base_width=2))
    x = torch.randn(3, *IMAGE)
    split = split_at(model, "layer2.0", x)

    class Pipeline(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = nn.Sequential(nn.Flatten(), nn.Linear(192, split.info.d))
            self.head = split.head

        def forward(self, inp):
            return self.head(torch.relu(self.student(inp)))

    pipe = Pipeline().eval()
    ep = torch.export.export(pipe, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(ep, str(tmp_path / "student.pt2"))
    loaded = torch.export.load(str(tmp_path / "student.pt2")).module()
    x5 = torch.randn(5, *IMAGE)
    torch.testing.assert_close(loaded(x5), pipe(x5))
    body_ep = torch.export.export(split.body, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.testing.assert_close(body_ep.module()(x5), split.body(x5))


def test_layer_info_to_dict_is_json():
    model = build_model("cnn", in_channels=1, channels=[2], hidden=3)
    info = list_layers(model, torch.randn(2, 1, 8, 8))[0]
    doc = json.loads(json.dumps(info.to_dict()))
    assert doc["output_shape"] == [2, 8, 8] and doc["d"] == 128 and doc["representation"] == "channels"
    assert doc["layouts"] == {"flat": 128, "channels": 2}
    assert set(doc) >= {"path", "op", "output_shape", "d", "transfer", "transfer_params", "tappable", "reason"}


def test_bare_module_needs_example_input():
    with pytest.raises(LayerError, match="example input"):
        list_layers(build_model("mlp", in_features=4, hidden=[3], num_classes=2))


def test_teacher_with_two_outputs_is_refused():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x):
            h = self.a(x)
            return h, h.sum(1)

    with pytest.raises(LayerError, match="returns 2 values"):
        list_layers(TwoHeads(), torch.randn(2, 4))
