"""A manifest's model is sized before it is built: a 10 KB weights file cannot make the loader
allocate the 2.4 GB that ``"hidden": [8000000]`` would need (issue 11, finding 3).

The attacks run in the sandbox child (:mod:`workers.sandbox`), whose peak resident memory
(``VmHWM``, see :mod:`workers.sandbox`) is compared with a child that refuses a one-line manifest."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from bregman.models import MAX_LAYERS, build_model
from bregman.teachers import (
    DEFAULT_MAX_PARAMETERS,
    TeacherFormatError,
    load_teacher,
    max_teacher_parameters,
    validate_manifest,
)
from workers.sandbox import SandboxFailure, SandboxLimits, run_in_sandbox

MiB = 1024**2
LIMITS = SandboxLimits(memory_bytes=2048 * MiB, time_s=120)
DIGITS_ARGS = {"in_features": 64, "hidden": [32], "num_classes": 10}


def _refused_in_child(path, manifest) -> SandboxFailure:
    with pytest.raises(SandboxFailure) as err:
        run_in_sandbox("workers.sandbox:inspect_teacher_file", {"path": str(path), "manifest": manifest},
                       what="loading the teacher", limits=LIMITS)
    return err.value


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """10 KB of real safetensors weights of a 64-32-10 MLP."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_file(build_model("mlp", **DIGITS_ARGS).state_dict(), str(path))
    assert path.stat().st_size < 16 * 1024
    return path


@pytest.fixture(scope="module")
def baseline_peak(small_weights) -> int:
    """Peak memory of a child that walks the same path (meta model, meta forward pass, header
    comparison) for a 33-wide layer and refuses it: interpreter, torch and the code it imports."""
    failure = _refused_in_child(small_weights, {"arch": "mlp", "args": {**DIGITS_ARGS, "hidden": [33]}})
    assert failure.kind == "invalid" and "expects (33, 64)" in str(failure)
    return failure.peak_rss_bytes


def test_eight_million_hidden_units_are_refused_before_anything_is_built(small_weights, baseline_peak):
    manifest = {"arch": "mlp", "args": {**DIGITS_ARGS, "hidden": [8_000_000]}}
    failure = _refused_in_child(small_weights, manifest)
    assert failure.kind == "invalid"
    assert "600,000,010 parameters" in str(failure) and "limit of 200,000,000" in str(failure)
    assert "BREGKD_MAX_TEACHER_PARAMETERS" in str(failure)
    # building it would take 2.4 GB; the refusal costs what refusing a bad arch name costs
    assert failure.peak_rss_bytes < 400 * MiB  # torch alone is ~300 MiB; building it would be 2.4 GB
    assert failure.peak_rss_bytes < baseline_peak + 16 * MiB, (failure.peak_rss_bytes, baseline_peak)


def test_a_model_under_the_limit_is_compared_with_the_header_before_it_is_built(small_weights, baseline_peak):
    # 75 M parameters (300 MB) pass the limit, but the 10 KB file's shapes say otherwise
    manifest = {"arch": "mlp", "args": {**DIGITS_ARGS, "hidden": [1_000_000]}}
    failure = _refused_in_child(small_weights, manifest)
    assert failure.kind == "invalid"
    assert "'0.weight' has shape (32, 64) but the architecture expects (1000000, 64)" in str(failure)
    # the 300 MB model is never allocated: the same peak as for the 33-wide one
    assert failure.peak_rss_bytes < baseline_peak + 16 * MiB, (failure.peak_rss_bytes, baseline_peak)


def test_the_parameter_limit_comes_from_the_argument_or_the_environment(small_weights, monkeypatch):
    manifest = {"arch": "mlp", "args": DIGITS_ARGS}
    n = 64 * 32 + 32 + 32 * 10 + 10
    assert validate_manifest(manifest, max_parameters=n)["input_shape"] == [64]
    with pytest.raises(TeacherFormatError, match=f"{n:,} parameters, more than the limit of {n - 1:,}"):
        validate_manifest(manifest, max_parameters=n - 1)
    assert max_teacher_parameters() == DEFAULT_MAX_PARAMETERS == 200_000_000
    monkeypatch.setenv("BREGKD_MAX_TEACHER_PARAMETERS", str(n - 1))
    with pytest.raises(TeacherFormatError, match="more than the limit"):
        load_teacher(small_weights, manifest)
    monkeypatch.setenv("BREGKD_MAX_TEACHER_PARAMETERS", str(n))
    assert load_teacher(small_weights, manifest).parameter_count == n


@pytest.mark.parametrize("args, pattern", [
    ({**DIGITS_ARGS, "hidden": [1] * 100_000}, f"100000 layers; at most {MAX_LAYERS}"),
    ({"depth": 600_002, "base_width": 1}, f"depth 600002 is above the limit of {MAX_LAYERS}"),
])
def test_layer_counts_are_bounded_before_building(args, pattern):
    arch = "mlp" if "in_features" in args else "resnet"
    manifest = {"arch": arch, "args": args, "input_shape": [64] if arch == "mlp" else [3, 32, 32]}
    with pytest.raises(TeacherFormatError, match=pattern):
        validate_manifest(manifest)


def test_input_and_activation_sizes_are_bounded_on_the_meta_device():
    with pytest.raises(TeacherFormatError, match="values per example"):
        validate_manifest({"arch": "cnn", "args": {"in_channels": 1}, "input_shape": [1, 4096, 4097]})
    # 64 channels of 2048 x 2048 per example: 0.5 G activation values, refused without computing
    with pytest.raises(TeacherFormatError, match="layers output .* more than the limit"):
        validate_manifest({"arch": "cnn", "args": {"in_channels": 1, "channels": [64]}, "input_shape": [1, 2048, 2048]})
    with pytest.raises(TeacherFormatError, match="does not accept inputs of input_shape \\[9\\]"):
        validate_manifest({"arch": "mlp", "args": DIGITS_ARGS, "input_shape": [9]})


def test_weights_are_copied_into_the_checked_model(tmp_path):
    """Built on meta, then filled from the file one tensor at a time: the same network, float16
    weights widened to float32, and a BatchNorm counter that the file may leave out set to 0."""
    torch.manual_seed(1)
    model = build_model("cnn", in_channels=1, channels=[3, 4], hidden=5, batch_norm=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file({k: v.half() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    manifest = {"arch": "cnn", "args": {"in_channels": 1, "channels": [3, 4], "hidden": 5, "batch_norm": True},
                "input_shape": [1, 8, 8]}
    teacher = load_teacher(tmp_path / "w.safetensors", manifest)
    reference = build_model("cnn", in_channels=1, channels=[3, 4], hidden=5, batch_norm=True)
    reference.load_state_dict({k: v.half().float() for k, v in state.items()}, strict=False)
    reference.eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(teacher.module(x), reference(x))
    loaded = teacher.module.state_dict()
    assert all(v.device.type == "cpu" for v in loaded.values())
    assert all(int(v) == 0 for k, v in loaded.items() if k.endswith("num_batches_tracked"))


def test_a_manifest_in_the_metadata_is_parsed_never_opened_as_a_path(tmp_path):
    """A server path in the safetensors metadata must not make the worker read that file."""
    server_file = tmp_path / "server-manifest.json"
    server_file.write_text(json.dumps({"arch": "mlp", "args": DIGITS_ARGS}))
    path = tmp_path / "w.safetensors"
    save_file(build_model("mlp", **DIGITS_ARGS).state_dict(), str(path), metadata={"manifest": str(server_file)})
    with pytest.raises(TeacherFormatError, match="not valid JSON"):
        load_teacher(path)
    save_file(build_model("mlp", **DIGITS_ARGS).state_dict(), str(path),
              metadata={"manifest": json.dumps({"arch": "mlp", "args": DIGITS_ARGS})})
    assert load_teacher(path).input_shape == (64,)
