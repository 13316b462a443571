"""Formats are recognized from content, never names; pickles are refused without being read."""
from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from service.sniff import PickleRefused, SniffError, sniff_dataset, sniff_teacher


def test_pt2_program(tmp_path):
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(2, 3),))
    path = tmp_path / "weights.safetensors"  # a misleading name
    torch.export.save(program, str(path))
    assert sniff_teacher(path) == "pt2"


def test_state_dict_zip(tmp_path):
    path = tmp_path / "model.pt2"
    torch.save(torch.nn.Linear(3, 2).state_dict(), str(path))
    assert sniff_teacher(path) == "state_dict"


def test_safetensors(tmp_path):
    path = tmp_path / "x.bin"
    save_file({"w": torch.zeros(2, 2)}, str(path))
    assert sniff_teacher(path) == "safetensors"
    assert sniff_dataset(path) == "safetensors"


@pytest.mark.parametrize("payload", [
    pickle.dumps({"a": 1}, protocol=2),
    pickle.dumps({"a": 1}, protocol=4),
    pickle.dumps({"a": 1}, protocol=5),
])
def test_pickle_refused(tmp_path, payload):
    path = tmp_path / "model.pt"
    path.write_bytes(payload)
    with pytest.raises(PickleRefused, match="pickle"):
        sniff_teacher(path)
    with pytest.raises(PickleRefused):
        sniff_dataset(path)


def test_legacy_torch_save_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, str(path), _use_new_zipfile_serialization=False)
    with pytest.raises(PickleRefused):
        sniff_teacher(path)


def test_other_zip_and_garbage(tmp_path):
    path = tmp_path / "a.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(SniffError, match="neither a torch.export"):
        sniff_teacher(path)
    garbage = tmp_path / "g.pt2"
    garbage.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(SniffError, match="unrecognized"):
        sniff_teacher(garbage)
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    with pytest.raises(SniffError, match="empty"):
        sniff_teacher(empty)
    # a safetensors-like length prefix with a non-JSON header is not safetensors
    fake = tmp_path / "f"
    fake.write_bytes((20).to_bytes(8, "little") + b"x" * 40)
    with pytest.raises(SniffError):
        sniff_teacher(fake)


def test_npz(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((2, 3)))
    path = tmp_path / "d.safetensors"
    path.write_bytes(buf.getvalue())
    assert sniff_dataset(path) == "npz"


def test_whole_pickled_model_is_told_to_resave_before_any_manifest(tmp_path):
    # torch.save(model) is a zip with data.pkl, like a state_dict; its pickle names nn.Module classes
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), str(path))
    with pytest.raises(PickleRefused) as err:
        sniff_teacher(path)
    message = str(err.value)
    assert "whole pickled model" in message and "torch.nn.modules.container.Sequential" in message
    assert "torch.export.save" in message and "state_dict" in message


def test_torchscript_is_refused_at_upload(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    with pytest.raises(SniffError, match="TorchScript"):
        sniff_teacher(path)


def test_hostile_zip_is_refused_at_upload(tmp_path):
    import stat

    path = tmp_path / "link.npz"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("x_train.npy")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(SniffError, match="symbolic link"):
        sniff_dataset(path)


def test_sniffing_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, service.sniff, bregman._sniff; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
