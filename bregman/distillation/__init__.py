"""Distillation through a teacher layer's Bregman representation, and the baselines.

``distill(teacher, (x, y), layer, method, student, ...) -> DistillResult`` is the one call;
methods: ``"bregman"``, ``"kd"``, ``"hint"``, ``"labels"`` (see :mod:`bregman.distillation.methods`).
"""
from __future__ import annotations

from bregman.distillation.api import DistillResult, default_budget, distill, load_student
from bregman.distillation.methods import METHODS, DistilledModel, LossSettings, MethodError
from bregman.distillation.targets import TargetCache

__all__ = [
    "METHODS",
    "DistillResult",
    "DistilledModel",
    "LossSettings",
    "MethodError",
    "TargetCache",
    "default_budget",
    "distill",
    "load_student",
]
