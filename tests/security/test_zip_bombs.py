"""Decompression bombs and lying headers in every member type; each load runs in a spawned child.

A 2 MB file inflating to 2 GiB once drove the loader to 4.4 GiB. Now each is refused with a message
naming the member and the limit, and the child's peak memory (``ru_maxrss``) stays within
``SLACK`` of a child that loads a clean file of the same kind, measured in the same run.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bregman._safe_zip import UnsafeArchiveError, ZipLimits, read_npz
from tests.security._child import run_many_in_child
from tests.security._corpus import GiB, MiB, Entry, bomb_entry, clean_pt2, members, write_zip

SLACK = 128 * MiB  # the bombs inflate to 2 GiB; refusing must cost far less than that


TEACHER = "bregman.teachers:load_teacher"
DATASET = "bregman.datasets:load_dataset_file"
MLP = {"arch": "mlp", "args": {"in_features": 8, "hidden": [6], "num_classes": 3}}
PT2_MEMBERS = ["models/model.json", "data/weights/weight_0", "data/constants/tensor_0",
               "data/sample_inputs/model.pt", "data/weights/model_weights_config.json"]


def _replace(entries, suffix, entry_for):
    return [entry_for(e.name) if e.name.endswith(suffix) else e for e in entries]


def _members_of_bytes(data):
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [Entry(i.filename, zf.read(i.filename)) for i in zf.infolist()]


def _npy_header(shape, descr="<f4"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _build(tmp):
    """The bomb corpus: name -> (loader, args, expected error type, words the message must hold)."""
    clean = clean_pt2(tmp / "clean.pt2")
    cases = {}
    for member in PT2_MEMBERS:
        for declared in ("honest", "lying"):
            # a lying header declares 4 KiB and inflates to 2 GiB regardless
            entries = _replace(members(clean), member,
                               lambda n: bomb_entry(n, 2 * GiB, declared=None if declared == "honest" else 4096))
            path = write_zip(tmp / f"{member.replace('/', '_')}-{declared}.pt2", entries)
            words = ["decompression bomb" if declared == "honest" else "inflates past", member.rsplit("/", 1)[-1]]
            cases[f"pt2:{member}:{declared}"] = (TEACHER, (str(path),), "UnsafeTeacherError", words)
    # a bomb one level down: inside the torch.save archive that holds the sample inputs
    inner = io.BytesIO()
    torch.save(((torch.zeros(2, 1, 6, 6),), {}), inner)
    nested = write_zip(tmp / "inner.pt", _replace(_members_of_bytes(inner.getvalue()), "/data/0",
                                                  lambda n: bomb_entry(n, 2 * GiB, declared=288))).read_bytes()
    path = write_zip(tmp / "nested.pt2", _replace(members(clean), "data/sample_inputs/model.pt", lambda n: Entry(n, nested)))
    cases["pt2:sample_inputs/data/0:nested"] = (TEACHER, (str(path),), "UnsafeTeacherError", ["sample inputs", "data/0"])
    # a state_dict saved by torch.save
    buf = io.BytesIO()
    torch.save({"0.weight": torch.zeros(6, 8)}, buf)
    for declared in ("honest", "lying"):
        entries = _replace(_members_of_bytes(buf.getvalue()), "/data/0",
                           lambda n: bomb_entry(n, 2 * GiB, declared=None if declared == "honest" else 192))
        path = write_zip(tmp / f"sd-{declared}.pth", entries)
        words = ["decompression bomb" if declared == "honest" else "inflates past", "data/0"]
        cases[f"torch.save:data/0:{declared}"] = (TEACHER, (str(path), MLP), "UnsafeTeacherError", words)
    # an .npz data set: 2 GiB of x_train
    header = _npy_header(((2 * GiB - 128) // 4,))
    assert len(header) == 128
    for declared in ("honest", "lying"):
        entry = bomb_entry("x_train.npy", 2 * GiB, prefix=header, declared=None if declared == "honest" else 128 + 4096)
        path = write_zip(tmp / f"x-{declared}.npz", [entry])
        # lying: the stream passes its declared 4 KiB before the array is allocated
        words = ["decompression bomb" if declared == "honest" else "inflates past", "x_train"]
        cases[f"npz:x_train.npy:{declared}"] = (DATASET, (str(path),), "DatasetError", words)
    for name, (_, args, _, _) in cases.items():
        assert Path(args[0]).stat().st_size < 3 * MiB, name  # ~2 MB files claiming 2 GiB
    ok_npz = tmp / "ok.npz"
    np.savez(ok_npz, x_train=np.zeros((64, 4), np.float32), y_train=np.zeros(64, np.int64))
    return clean, ok_npz, cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every bomb loaded in ONE spawned child after two clean loads; (baseline peak, results by case)."""
    clean, ok_npz, cases = _build(tmp_path_factory.mktemp("bombs"))
    calls = [(TEACHER, (str(clean),), {}), (DATASET, (str(ok_npz),), {})]
    calls += [(spec, args, {}) for spec, args, _, _ in cases.values()]
    results = run_many_in_child(calls)
    assert results[0].error is None and results[1].error is None, results[:2]
    return results[1].peak_bytes, dict(zip(cases, results[2:])), cases


CASES = ([f"pt2:{m}:{d}" for m in PT2_MEMBERS for d in ("honest", "lying")] + ["pt2:sample_inputs/data/0:nested"]
         + [f"torch.save:data/0:{d}" for d in ("honest", "lying")] + [f"npz:x_train.npy:{d}" for d in ("honest", "lying")])


@pytest.mark.parametrize("case", CASES)
def test_bomb_is_refused_within_memory(outcomes, case):
    baseline, results, cases = outcomes
    result = results[case]
    _, _, error_type, words = cases[case]
    assert result.error_type == error_type, result
    for word in words:
        assert word in result.error, (word, result.error)
    # ru_maxrss is a high-water mark: this bounds this case and every one before it
    assert result.peak_bytes < baseline + SLACK, (case, result.peak_bytes / MiB, baseline / MiB)


@pytest.mark.parametrize("shape,descr,body,reason", [
    ((2**40,), "<f4", b"\0" * 64, "declares shape"),           # huge shape, 64 bytes present
    ((4, 4), "<f8", b"\0" * 64, "declares shape"),             # 128 bytes claimed, 64 present
    ((4,), "|O", b"\0" * 32, "objects would need pickle"),
    ((2,), [("a", "<f4")], b"\0" * 8, "structured dtype"),
    ((-1,), "<f4", b"", "malformed shape"),
])
def test_lying_npy_headers_are_refused_before_allocating(tmp_path, shape, descr, body, reason):
    # written by hand: numpy's own writer refuses to write most of these lies
    magic = b"\x93NUMPY\x01\x00"
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (63 - (len(magic) + 2 + len(text)) % 64) + b"\n"
    header = magic + struct.pack("<H", len(text)) + text
    path = write_zip(tmp_path / "lie.npz", [Entry("x_train.npy", header + body)])
    with pytest.raises(UnsafeArchiveError, match=reason):
        read_npz(path)


def test_npz_reader_matches_numpy_on_real_files(tmp_path):
    arrays = {"x": np.random.default_rng(0).random((7, 3, 2)).astype(np.float32), "y": np.arange(7),
              "f": np.asfortranarray(np.random.default_rng(1).random((3, 5))), "b": np.array([True, False]),
              "e": np.zeros((0, 4), np.float16), "big": np.arange(300_000, dtype=">i4")}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        got = read_npz(path)
        with np.load(path) as ref:
            assert sorted(got) == sorted(ref.files)
            for k in ref.files:
                assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k


def test_member_count_and_total_limits(tmp_path):
    many = write_zip(tmp_path / "many.npz", [Entry(f"a{i}.npy", b"x") for i in range(50)])
    with pytest.raises(UnsafeArchiveError, match="declares 50 members; at most 10"):
        read_npz(many, ZipLimits(max_members=10, max_member_bytes=MiB, max_total_bytes=MiB))
    arr = np.zeros(100_000, np.float32)
    path = tmp_path / "two.npz"
    np.savez(path, x=arr, y=arr)
    with pytest.raises(UnsafeArchiveError, match="more than 500000 bytes in total"):
        read_npz(path, ZipLimits(max_members=10, max_member_bytes=10**6, max_total_bytes=500_000))
    assert ZipLimits.for_upload(4 * MiB).max_total_bytes == 4 * MiB
