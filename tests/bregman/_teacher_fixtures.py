"""Shared helpers for the teacher / layer / capture / data set tests: small teachers, files, payloads."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from bregman.models import build_model


@pytest.fixture
def one_thread():
    """Tiny tensors run fastest single-threaded; OpenMP spinning on a busy 2-core machine costs 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN layers non-trivial statistics so that a cut through them is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


MLP_MANIFEST = {"arch": "mlp", "args": {"in_features": 8, "hidden": [6, 5], "num_classes": 3}, "input_shape": [8]}


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(MLP_MANIFEST["arch"], **MLP_MANIFEST["args"])


class Evil:
    """A pickle payload: unpickling it writes ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def evil_pickle_bytes(target: Path) -> bytes:
    return pickle.dumps(Evil(target))


def rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None]) -> Path:
    """Copy a zip archive member by member; ``edit(name, data)`` returns new bytes (None: keep)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            new = edit(info.filename, data)
            zout.writestr(info.filename, data if new is None else new)
    return dst


def export_pt2(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The README's recipe: export with a dynamic batch and save."""
    ep = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(ep, str(path))
    return path


def edit_json_member(suffix: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes | None]:
    def edit(name: str, data: bytes) -> bytes | None:
        if not name.endswith(suffix):
            return None
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


class ResidualNet(nn.Module):
    """A user-written model with a residual block (not from our registry)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        r = self.fc2(torch.relu(self.fc1(h)))
        h = torch.nn.functional.leaky_relu(h + r, 0.1)
        return self.out(h)


class BatchViewNet(nn.Module):
    """Reads the batch size (x.shape[0]) after the first layer: the head must recompute it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = h.view(x.shape[0], 2, 4, 2, 8).mean(3)
        return torch.softmax(self.fc(h.reshape(h.shape[0], -1)), dim=-1)


def save_state_dict(module: nn.Module, path: Path) -> Path:
    torch.save(module.state_dict(), str(path))
    return path


def bytes_of(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()

