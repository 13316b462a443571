"""How good and how cheap a student is, next to its teacher.

Quality: accuracy on labelled data, top-1 agreement with the teacher and the KL divergence from
the teacher's output distribution. Cost: parameter counts and CPU latency (median of repeated
single-batch forwards).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import Tensor, nn

from bregman.distillation.losses import kl_to_teacher
from bregman.training import check_labels, predict


def parameter_count(*modules: nn.Module | None) -> int:
    """Number of distinct parameters and buffers in the modules (shared tensors counted once).

    Buffers count because an imported layer holds its mean and directions as buffers: they are
    part of what the deployed model stores.
    """
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) in seen or not t.is_floating_point():
                continue
            seen.add(id(t))
            total += t.numel()
    return total


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, example: Tensor, *, repeats: int = 30, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of ``model(example)`` on the CPU, in eval mode.

    A copy of the model is timed, so the caller's model keeps its device and mode.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = example.detach().cpu()
    for _ in range(warmup):
        cpu_model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cpu_model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def quality_metrics(outputs: Tensor, y: Tensor | None = None, teacher_outputs: Tensor | None = None,
                    *, prefix: str = "") -> dict[str, float]:
    """Accuracy (with labels), agreement and KL to the teacher (with teacher outputs).

    ``outputs`` and ``teacher_outputs`` are logits (N, C) (any shift per row is harmless).
    """
    metrics: dict[str, float] = {}
    pred = outputs.argmax(1)
    if y is not None:
        y = check_labels(y, outputs.shape[1]).to(pred.device)
        metrics[prefix + "accuracy"] = float((pred == y).float().mean())
    if teacher_outputs is not None:
        if teacher_outputs.shape != outputs.shape:
            raise ValueError(
                f"teacher outputs have shape {tuple(teacher_outputs.shape)}, the model's {tuple(outputs.shape)}")
        teacher_outputs = teacher_outputs.to(outputs.device)
        metrics[prefix + "agreement"] = float((pred == teacher_outputs.argmax(1)).float().mean())
        metrics[prefix + "kl_to_teacher"] = float(kl_to_teacher(outputs, teacher_outputs).mean())
        if y is not None:
            metrics[prefix + "teacher_accuracy"] = float((teacher_outputs.argmax(1) == y).float().mean())
    return metrics


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    teacher: nn.Module | None = None,
    teacher_outputs: Tensor | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """Quality metrics of ``model`` on ``(x, y)``; pass the teacher (or its outputs) for agreement/KL."""
    outputs = predict(model, x, batch_size=batch_size, device=device)
    if teacher_outputs is None and teacher is not None:
        teacher_outputs = predict(teacher, x, batch_size=batch_size, device=device)
    return quality_metrics(outputs, y, teacher_outputs, prefix=prefix)


def cost_metrics(model: nn.Module, teacher: nn.Module, example: Tensor, *, student: nn.Module | None = None,
                 repeats: int = 30) -> dict[str, float]:
    """Parameter counts and CPU latency (ms, one batch ``example``) of the model and the teacher.

    ``model`` is the deployed pipeline (for ``bregman``: student, imported layer and teacher
    head); ``student`` the trainable network alone, when it differs.
    """
    metrics = {
        "parameters": float(parameter_count(model)),
        "teacher_parameters": float(parameter_count(teacher)),
        "latency_ms": cpu_latency_ms(model, example, repeats=repeats),
        "teacher_latency_ms": cpu_latency_ms(teacher, example, repeats=repeats),
        "latency_batch_size": float(example.shape[0]),
    }
    if student is not None:
        metrics["student_parameters"] = float(parameter_count(student))
    metrics["parameter_ratio"] = metrics["parameters"] / max(metrics["teacher_parameters"], 1.0)
    return metrics
