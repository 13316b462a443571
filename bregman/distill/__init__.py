"""Distillation through a teacher layer's Bregman representation, and the baselines.

``distill(teacher, (x, y), layer, method, student, ...) -> DistillResult`` is the one call;
methods: ``"bregman"``, ``"kd"``, ``"hint"``, ``"labels"`` (see :mod:`bregman.distill.methods`).
"""
from __future__ import annotations

from bregman.distill.api import DistillResult, default_budget, distill, load_student
from bregman.distill.methods import METHODS, DistilledModel, LossSettings, MethodError
from bregman.distill.targets import TargetCache

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
