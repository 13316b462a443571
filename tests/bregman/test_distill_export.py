"""Saved students: the torch.export pipeline runs without this project and equals the in-process model."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from bregman.distillation import distill, load_student
from tests.bregman._distill_fixtures import digits, digits_teacher_wrapped, one_thread, transfer_subset


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    with one_thread():
        x, y = transfer_subset(150)
        result = distill(digits_teacher_wrapped(), (x, y), layer="2", method="bregman", n_components=4,
                         epochs=10, batch_size=32, measure_latency=False)
        out = tmp_path_factory.mktemp("student")
        record = result.save(out)
    return result, out, record


def test_files_and_manifest(saved):
    result, out, record = saved
    for name in ("student.safetensors", "student.json", "student.pt2", "metrics.json",
                 "layer/layer.safetensors", "layer/layer.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "student.json").read_text())
    assert manifest["arch"] == "mlp" and manifest["args"]["num_classes"] == 4
    assert manifest["method"] == "bregman" and manifest["k"] == 4 and manifest["layer"] == "2"
    assert manifest["transfer"]["name"] == "relu"
    assert manifest["metrics"]["transfer_agreement"] == pytest.approx(result.metrics["transfer_agreement"])
    # ONNX: written and checked with onnx.checker; test_onnx_runs_in_onnxruntime runs it
    assert record["onnx"]["written"] and record["onnx"]["checked"], record["onnx"]
    assert (out / "student.onnx").is_file()


def test_pt2_runs_in_a_process_without_bregman(saved, tmp_path):
    result, out, _ = saved
    x = digits().x_test[:37]  # a batch size the export never saw
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        program = torch.export.load({str(out / 'student.pt2')!r})
        y = program.module()(torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True))
        torch.save(y, {str(tmp_path / 'y.pt')!r})
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('bregman', 'tests'))
        assert not loaded, loaded
        code = program.graph_module.code
        assert 'bregman' not in code, code
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    with torch.no_grad():
        want = result.model(x)
    assert got.shape == (37, 10)
    assert torch.allclose(got, want, atol=1e-5)


def test_load_student_rebuilds_the_network(saved):
    result, out, _ = saved
    student, manifest = load_student(out)
    x = digits().x_test[:8]
    with torch.no_grad():
        assert torch.equal(student(x), result.student(x))
    assert manifest["k"] == 4
    with pytest.raises(ValueError, match="not a saved student"):
        load_student(out / "layer")


def test_student_manifest_versions(saved, tmp_path):
    """format_version 2: a flat version-1 student still loads; a version-1 map student (saved
    before map students carried the classifier term) and a newer version are refused with what
    to do, not with a state-dict error."""
    import shutil

    result, out, _ = saved
    assert json.loads((out / "student.json").read_text())["format_version"] == 2

    def variant(name, edit):
        d = tmp_path / name
        shutil.copytree(out, d)
        manifest = json.loads((d / "student.json").read_text())
        edit(manifest)
        (d / "student.json").write_text(json.dumps(manifest))
        return d

    old_flat = variant("v1", lambda m: m.update(format_version=1))
    student, _ = load_student(old_flat)
    x = digits().x_test[:4]
    with torch.no_grad():
        assert torch.equal(student(x), result.student(x))
    unversioned = variant("none", lambda m: m.pop("format_version"))
    load_student(unversioned)  # before versioning: format 1
    old_map = variant("v1map", lambda m: m.update(format_version=1, map_head={"channels": 4, "size": [2, 2],
                                                                            "flatten": False}))
    with pytest.raises(ValueError, match="run the distillation again"):
        load_student(old_map)
    with pytest.raises(ValueError, match="upgrade the package"):
        load_student(variant("v9", lambda m: m.update(format_version=9)))
    with pytest.raises(ValueError, match="positive integer"):
        load_student(variant("bad", lambda m: m.update(format_version="2")))


def test_onnx_runs_in_onnxruntime_and_equals_the_model(saved):
    """The ONNX student is run, not only checked: onnxruntime's outputs equal the in-process
    pipeline's on a batch size the export never saw."""
    import numpy as np
    import onnxruntime

    result, out, _ = saved
    x = digits().x_test[:37]
    session = onnxruntime.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, {name: x.numpy().astype(np.float32)})
    with torch.no_grad():
        want = result.model(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_pt2_holds_two_example_rows_not_the_storage_of_the_data_set(tmp_path):
    """The example batch is a view of the transfer set (a memory-mapped data set): torch.export.save
    keeps the example inputs, and a view would carry its whole storage (the 50,000-image benchmark
    wrote a 586 MiB student.pt2, the training images inside, and peaked 1.2 GiB above its run)."""
    from bregman.distillation.export import export_program

    data = torch.randn(20_000, 64)  # 5 MB; the rows below are a view of it
    model = torch.nn.Sequential(torch.nn.Linear(64, 3))
    path = export_program(model, data[:2], tmp_path / "student.pt2")
    assert path.stat().st_size < 1_000_000, path.stat().st_size
    program = torch.export.load(str(path))
    args, _ = program.example_inputs
    assert args[0].untyped_storage().nbytes() == 2 * 64 * 4
    assert not any(bytes(data[5000:5001].numpy().tobytes()) in chunk for chunk in [path.read_bytes()])


def test_distill_result_does_not_keep_a_view_of_the_transfer_set():
    with one_thread():
        x, y = transfer_subset(150)
        result = distill(digits_teacher_wrapped(), (x, y), method="labels", epochs=1, batch_size=64,
                         measure_latency=False)
    assert result.example_input.shape[0] == 2
    assert result.example_input.untyped_storage().nbytes() == result.example_input[:2].numel() * 4
