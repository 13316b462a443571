"""The operator allowlist: a graph node calling anything outside it is refused, by name.

Also: every registry architecture exports, saves and loads back through the reader with the
outputs of the original module (so the allowlist admits what we serve).
"""
from __future__ import annotations

import json

import pytest
import torch

from bregman import UnsafeTeacherError, load_teacher
from bregman._pt2_guard import ALLOWED_OPERATORS, _check_target
from bregman.models import build_model
from tests.security._corpus import Entry, clean_pt2, members, write_zip


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return clean_pt2(tmp_path_factory.mktemp("ops") / "clean.pt2")


def _retarget(clean, path, target):
    def change(e):
        if not e.name.endswith("models/model.json"):
            return e
        doc = json.loads(e.data)
        node = next(n for n in doc["graph_module"]["graph"]["nodes"] if n["target"].startswith("torch.ops.aten.relu"))
        node["target"] = target
        return Entry(e.name, json.dumps(doc).encode())

    return write_zip(path, [change(e) for e in members(clean)])


@pytest.mark.parametrize("target,named", [
    ("torch.ops.aten.from_file.default", "aten::from_file"),        # reads any file into a tensor
    ("torch.ops.aten.save.default", "aten::save"),                  # writes a file
    ("torch.ops.aten._pin_memory.default", "aten::_pin_memory"),    # process-level memory
    ("torch.ops.aten.empty.memory_format", "aten::empty"),          # uninitialized heap memory
    ("torch.ops.aten.set_.source_Storage", "aten::set_"),           # storage swap
    ("torch.ops.aten._fused_adam.default", "aten::_fused_adam"),    # in-place optimizer kernel
    ("torch.ops.aten.relu.out", "out= overload"),
    ("torch.ops.higher_order.cond", "torch.ops.higher_order.cond"),
    ("torch.ops.prims.convert_element_type.default", "prims"),
    ("torch.os.system", "torch.os.system"),
    ("builtins.eval", "builtins.eval"),
    ("_operator.attrgetter", "_operator.attrgetter"),
    ("math.__builtins__", "math.__builtins__"),
    ("torch.ops.aten.relu.no_such_overload", "not a registered aten operator overload"),
])
def test_operator_outside_the_allowlist_is_refused_by_name(clean, tmp_path, target, named):
    with pytest.raises(UnsafeTeacherError, match="graph calls") as err:
        load_teacher(_retarget(clean, tmp_path / "op.pt2", target))
    assert named in str(err.value)


def test_allowlist_has_no_operator_that_touches_files_or_memory():
    forbidden = {"from_file", "save", "load", "_pin_memory", "pin_memory", "empty", "empty_like", "empty_strided",
                 "new_empty", "set_", "resize_", "as_strided", "_local_scalar_dense", "_fused_adam", "_fused_sgd"}
    assert not forbidden & ALLOWED_OPERATORS
    # every name on the list is a real aten operator
    assert [n for n in sorted(ALLOWED_OPERATORS) if not hasattr(torch.ops.aten, n)] == []
    _check_target("torch.ops.aten.conv2d.default")


@pytest.mark.parametrize("arch,kwargs,shape,decompose", [
    ("mlp", {"in_features": 8, "hidden": [6, 5], "num_classes": 3, "activation": "gelu", "output_activation": "log_softmax"}, (8,), False),
    ("mlp", {"in_features": 8, "hidden": [6], "num_classes": 3, "activation": "silu", "output_activation": "softmax"}, (8,), True),
    ("cnn", {"in_channels": 1, "channels": [3, 4], "hidden": 5, "batch_norm": True}, (1, 8, 8), True),
    ("resnet8", {"num_classes": 4}, (3, 8, 8), False),
    ("wrn_16_1", {"num_classes": 4}, (3, 8, 8), False),
])
def test_registry_models_load_through_the_reader(tmp_path, arch, kwargs, shape, decompose):
    # the full survey (every registry model and a user net of ~60 layer kinds, as exported and
    # after run_decompositions) built ALLOWED_OPERATORS; this keeps a fast sample of it honest
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).eval()
    ep = torch.export.export(model, (torch.randn(2, *shape),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    if decompose:
        ep = ep.run_decompositions()  # core aten: addmm, convolution, _native_batch_norm_legit_no_training...
    path = tmp_path / f"{arch}.pt2"
    torch.export.save(ep, str(path))
    x = torch.randn(3, *shape)
    assert torch.allclose(load_teacher(path).module(x), model(x), atol=1e-5)
