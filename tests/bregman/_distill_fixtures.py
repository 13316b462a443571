"""Shared data for the distillation tests: digits and a small teacher trained once per session.

Imported as ``tests.bregman._distill_fixtures`` (pytest runs from the repository root)."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch

from bregman.datasets import load_builtin
from bregman.models import build_model
from bregman.training import seeded, train_classifier


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny networks train faster on one thread, and the test machine's 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def digits():
    return load_builtin("digits")


@functools.lru_cache(maxsize=1)
def digits_teacher() -> torch.nn.Module:
    """MLP 64 → 64 → 32 → 10 (ReLU) trained on the digits training split (94.4 % test accuracy)."""
    ds = digits()
    with seeded(0):
        teacher = build_model("mlp", in_features=64, hidden=[64, 32], num_classes=10)
    with one_thread():
        train_classifier(teacher, ds.x_train, ds.y_train, epochs=15, batch_size=64, lr=3e-3, seed=0)
    return teacher.eval()


def transfer_subset(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ds = digits()
    idx = torch.randperm(ds.x_train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return ds.x_train[idx], ds.y_train[idx]


@functools.lru_cache(maxsize=1)
def digits_teacher_wrapped():
    """The same teacher as a :class:`bregman.teachers.Teacher` (its graph is analysed once)."""
    from bregman.teachers import Teacher

    return Teacher.from_module(digits_teacher(), (64,))
