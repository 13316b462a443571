"""Teachers for the end-to-end tests: small MLPs trained on the built-in digits, saved as files."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def train_digits_mlp(activation: str = "leaky_relu", hidden: tuple[int, ...] = (32,), epochs: int = 5) -> nn.Module:
    from bregman.datasets import load_builtin
    from bregman.models import build_model
    from bregman.training import train_classifier

    ds = load_builtin("digits")
    model = build_model("mlp", in_features=64, hidden=list(hidden), num_classes=10, activation=activation)
    train_classifier(model, ds.x_train, ds.y_train, epochs=epochs, batch_size=64, lr=3e-3, seed=0)
    return model.eval()


def save_pt2(model: nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.randn(2, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def gelu_teacher() -> nn.Module:
    """An untrained MLP whose hidden layer feeds a GELU (non-monotone: not tappable)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10)).eval()
