"""Distillation through a teacher layer's Bregman representation, and the baselines.

``distill(teacher, (x, y), layer, method, student, ...) -> DistillResult`` is the one call;
methods: ``"bregman"``, ``"kd"``, ``"hint"``, ``"labels"`` (see :mod:`bregman.distillation.methods`),
and ``"auto"``, which trains them all and keeps the best on validation (:mod:`bregman.distillation.select`).
"""
from __future__ import annotations

from bregman.distillation.api import DistillResult, default_budget, distill, load_student
from bregman.distillation.methods import METHOD_CHOICES, METHODS, DistilledModel, LossSettings, MethodError
from bregman.distillation.settings import TrainSettings
from bregman.distillation.targets import TargetCache

__all__ = [
    "METHODS",
    "METHOD_CHOICES",
    "DistillResult",
    "DistilledModel",
    "LossSettings",
    "MethodError",
    "TargetCache",
    "TrainSettings",
    "default_budget",
    "distill",
    "load_student",
]
