"""Full-size data sets: memory-mapped, not copied; uint8 images with a scale; hostile headers."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from bregman._mmap_data import mapped_arrays
from bregman.datasets import DatasetError, load_dataset_file
from tests.bregman._teacher_fixtures import Evil


def _anon_kib() -> int:
    """Anonymous resident memory of this process (mapped file pages are not counted)."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def _safetensors(path, arrays):
    from safetensors.numpy import save_file

    save_file(arrays, str(path))
    return path


def test_a_64_mb_safetensors_data_set_is_mapped_not_copied(tmp_path):
    x = np.random.default_rng(0).standard_normal((4096, 3, 32, 32), dtype=np.float32)  # 48 MB
    y = np.arange(4096, dtype=np.int64) % 10
    path = _safetensors(tmp_path / "big.safetensors", {"x": x, "y": y})
    del x
    before = _anon_kib()
    ds = load_dataset_file(path)
    total = float(ds.x_train.sum())  # every page read
    grown_mib = (_anon_kib() - before) / 1024
    assert ds.n_train == 4096 and ds.input_shape == (3, 32, 32)
    from safetensors.numpy import load_file

    expect = load_file(str(path))["x"]
    assert total == pytest.approx(float(expect.sum(dtype=np.float64)), rel=1e-4)
    assert torch.equal(ds.x_train[123], torch.from_numpy(expect[123]))
    assert grown_mib < 12, f"loading grew anonymous memory by {grown_mib:.0f} MiB for a 48 MiB array"


def test_uint8_images_with_a_scale_become_float32_on_disk(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (8192, 3, 32, 32), dtype=np.uint8)  # 24 MB of uint8, 96 MB as float32
    split = (np.arange(8192) >= 8000).astype(np.int64)  # the test rows are one run: both are views
    np.savez(tmp_path / "u8.npz", x=x, y=np.zeros(8192, np.int64), split=split, scale=np.float32(1 / 255))
    before = _anon_kib()
    ds = load_dataset_file(tmp_path / "u8.npz")
    grown_mib = (_anon_kib() - before) / 1024
    assert ds.x_train.dtype == torch.float32 and ds.n_train == 8000 and ds.n_test == 192
    ref = x.astype(np.float32) * np.float32(1 / 255)
    assert torch.equal(ds.x_train[:50], torch.from_numpy(ref[:50]))
    assert torch.equal(ds.x_test, torch.from_numpy(ref[8000:]))
    assert float(ds.x_train.max()) <= 1.0
    assert grown_mib < 24, f"the float conversion grew anonymous memory by {grown_mib:.0f} MiB (96 MiB of floats)"


def test_compressed_npz_is_read_by_the_fallback(tmp_path):
    x = np.random.default_rng(2).standard_normal((20, 4), dtype=np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    assert mapped_arrays(tmp_path / "c.npz") is None
    assert torch.equal(load_dataset_file(tmp_path / "c.npz").x_train, torch.from_numpy(x))


def test_uint8_without_a_scale_and_bad_scales_are_refused(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3), np.uint8))
    with pytest.raises(DatasetError, match="scale"):
        load_dataset_file(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 3), np.uint8), scale=np.array([1.0, 2.0]))
    with pytest.raises(DatasetError) as err:
        load_dataset_file(tmp_path / "b.npz")
    assert err.value.field == "scale"
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3), np.uint8), scale=np.float64(-1))
    with pytest.raises(DatasetError, match="positive"):
        load_dataset_file(tmp_path / "c.npz")


def _crafted_safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(("header", "words"), [
    ({"x": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}, "truncated"),
    ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, "byte range of 8 bytes"),
    ({"x": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, "non-negative integers"),
    ({"x": {"dtype": "PICKLE", "shape": [4], "data_offsets": [0, 16]}}, "dtype 'PICKLE'"),
    ({f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(16)}
     | {"t16": {"dtype": "U8", "shape": [0], "data_offsets": [16, 16]}}, "at most 16"),
])
def test_hostile_safetensors_headers_are_refused(tmp_path, header, words):
    """The messages are those of the one vetted header reader (bregman._safetensors_guard)."""
    path = tmp_path / "evil.safetensors"
    _crafted_safetensors(path, header, b"\0" * 16)
    with pytest.raises(DatasetError, match=words) as err:
        load_dataset_file(path)
    assert err.value.field == "file"


def test_a_header_length_past_the_file_is_refused(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}" + b"\0" * 16)
    with pytest.raises(DatasetError):
        load_dataset_file(path)


def test_a_pickled_npz_member_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "evil.npz", x=np.array([Evil(marker), None], dtype=object))
    with pytest.raises(DatasetError, match="pickle"):
        load_dataset_file(tmp_path / "evil.npz")
    assert not marker.exists()
