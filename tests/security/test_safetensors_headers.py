"""Lying safetensors headers are refused from the first ``8 + header_len`` bytes, before
``safetensors`` parses anything and before a tensor is allocated (issue 11: "safetensors headers
bounded before parsing"), for teachers and for data sets."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file

from bregman._safetensors_guard import MAX_HEADER_BYTES, SafetensorsHeaderError, iter_tensors, read_header
from bregman.datasets import DatasetError, load_dataset_file
from bregman.teachers import TeacherFormatError, load_teacher
from workers.sandbox import SandboxFailure, SandboxLimits, run_in_sandbox

MiB = 1024**2
LIMITS = SandboxLimits(memory_bytes=2048 * MiB, time_s=120)
MANIFEST = {"arch": "mlp", "args": {"in_features": 2, "hidden": [], "num_classes": 2}}


def craft(path, header: dict | bytes, data: bytes = b"", header_len: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def entry(dtype: str, shape: list, start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def test_a_consistent_file_reads_as_safetensors_reads_it(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64)}
    np_save_file(arrays, str(tmp_path / "ok.safetensors"), metadata={"note": "hi"})
    header = read_header(tmp_path / "ok.safetensors")
    assert header.metadata == {"note": "hi"} and header.tensors["a"].shape == (2, 3)
    assert header.nbytes == 6 * 4 + 4 * 8
    ours = dict(iter_tensors(header, framework="np"))
    theirs = np_load_file(str(tmp_path / "ok.safetensors"))
    assert set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name, header, data, header_len, pattern", [
    ("huge-length", b"{}", b"", 2**40, f"claims {2**40} bytes; at most {MAX_HEADER_BYTES}"),
    ("past-the-end", b'{"a": 1}', b"", 4096, "claims 4096 bytes but the file has only"),
    ("deep", b"[" * 5000 + b"]" * 5000, b"", None, "nested deeper than 3"),
    ("not-json", b"{\xff\xfe", b"", None, "not valid UTF-8 JSON"),
    ("duplicate", b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                  b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4, None, "names 'a' twice"),
    ("lying-shape", {"w": entry("F32", [100_000, 100_000], 0, 16)}, b"\0" * 16, None,
     r"shape \[100000, 100000\] \(40000000000 bytes\) but a byte range of 16"),
    ("huge-dim", {"w": entry("F32", [2**50, 0], 0, 0)}, b"", None, "below 2\\*\\*40"),
    ("unknown-dtype", {"w": entry("F4", [2], 0, 1)}, b"\0", None, "dtype 'F4'"),
    ("extra-key", {"w": {**entry("F32", [1], 0, 4), "code": "x"}}, b"\0" * 4, None, "exactly dtype, shape and data_offsets"),
    ("overlap", {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\0" * 12, None, "overlaps"),
    ("gap", {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, b"\0" * 12, None, "leaves a gap"),
    ("truncated", {"a": entry("F32", [4], 0, 16)}, b"\0" * 8, None, "the file is truncated"),
    ("trailing", {"a": entry("F32", [1], 0, 4)}, b"\0" * 4 + b"PK\x03\x04hidden", None, "belong to no tensor"),
    ("metadata-object", {"__metadata__": {"manifest": {"arch": "mlp"}}}, b"", None, "string values"),
    ("metadata-many", {"__metadata__": {str(i): "x" for i in range(65)}}, b"", None, "at most 64"),
])
def test_lying_headers_are_refused_with_the_reason(tmp_path, name, header, data, header_len, pattern):
    path = craft(tmp_path / f"{name}.safetensors", header, data, header_len)
    with pytest.raises(SafetensorsHeaderError, match=pattern):
        read_header(path)


def test_a_lying_teacher_header_is_refused_in_the_child_without_allocating(tmp_path):
    # declares a 40 GB weight in a 100-byte file
    path = craft(tmp_path / "liar.safetensors",
                 {"0.weight": entry("F32", [100_000, 100_000], 0, 16), "0.bias": entry("F32", [2], 16, 24)}, b"\0" * 24)
    with pytest.raises(TeacherFormatError, match="safetensors file cannot be used: .*40000000000 bytes"):
        load_teacher(path, MANIFEST)
    with pytest.raises(SandboxFailure) as err:
        run_in_sandbox("workers.sandbox:inspect_teacher_file", {"path": str(path), "manifest": MANIFEST},
                       what="loading the teacher", limits=LIMITS)
    assert err.value.kind == "invalid" and "40000000000 bytes" in str(err.value)
    assert str(tmp_path) not in str(err.value)
    assert err.value.peak_rss_bytes < 400 * MiB  # an interpreter with torch imported, nothing allocated


def test_a_lying_data_set_header_is_refused_in_the_child_without_allocating(tmp_path):
    path = craft(tmp_path / "liar.safetensors", {"x": entry("F32", [10**9, 64], 0, 256)}, b"\0" * 256)
    with pytest.raises(SandboxFailure) as err:
        run_in_sandbox("workers.sandbox:inspect_dataset_file", {"path": str(path)}, what="loading the data set",
                       limits=LIMITS)
    assert err.value.kind == "invalid" and "the safetensors file cannot be used" in str(err.value)
    assert "256000000000 bytes" in str(err.value)
    assert err.value.peak_rss_bytes < 400 * MiB  # an interpreter with torch imported, nothing allocated


def test_data_set_arrays_are_checked_from_the_header_before_reading(tmp_path):
    path = tmp_path / "d.safetensors"
    np_save_file({"x": np.zeros((4, 2), np.float32), "payload": np.zeros(3, np.uint8)}, str(path))
    with pytest.raises(DatasetError, match="unexpected arrays \\['payload', 'x'\\]"):
        load_dataset_file(path)
    np_save_file({"x": np.zeros((4, 2), np.uint8)}, str(path))
    with pytest.raises(DatasetError, match="x: inputs have dtype uint8"):
        load_dataset_file(path)
    np_save_file({"x": np.zeros((4, 2), np.float32), "y": np.zeros((4, 1), np.int64)}, str(path))
    with pytest.raises(DatasetError, match="y: has dtype int64 and shape \\[4, 1\\]"):
        load_dataset_file(path)
    np_save_file({"x": np.ones((4, 2), np.float16), "y": np.arange(4), "split": np.array([0, 0, 0, 1])}, str(path))
    ds = load_dataset_file(path)
    assert ds.n_train == 3 and ds.n_test == 1 and ds.x_train.dtype == torch.float32 and ds.num_classes == 4
