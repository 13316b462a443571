"""Full validation of a job spec against the records, before anything is queued.

Checks: the teacher exists for this tenant and is inspected; the data set exists (or is a
built-in) and its inputs fit the teacher; the layer exists and can be tapped; the transfer is
monotone; k fits the layer and the data; a named representation job is this tenant's, finished,
and of the same teacher; a student reads the teacher's inputs and stays within the parameter
budget (``BREGKD_MAX_STUDENT_PARAMETERS``, counted without torch by
:mod:`api_schemas.param_count`). Every failure is a 422 naming the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api_schemas import DistillationSpec, RepresentationSpec
from api_schemas.param_count import parameter_count
from service.errors import clip, unprocessable
from storage.models import Dataset, Job, Teacher



@dataclass
class ValidatedJob:
    teacher: Teacher
    dataset: Dataset
    layer: dict[str, Any]
    n_components: int | None


def _teacher(db: Session, tenant: str, teacher_id: str) -> Teacher:
    t = db.get(Teacher, teacher_id)
    if t is None or t.tenant != tenant:
        raise unprocessable("teacher_id", f"teacher '{teacher_id}' not found; upload it with POST /v1/teachers")
    if t.status == "inspecting":
        raise unprocessable("teacher_id", f"teacher '{t.id}' is still being inspected; retry when its status is ready")
    if t.status != "ready":
        raise unprocessable("teacher_id", f"teacher '{t.id}' failed inspection ({t.error}); upload a loadable teacher")
    return t


def _dataset(db: Session, tenant: str, ref: str, teacher: Teacher) -> Dataset:
    d = db.get(Dataset, ref)
    if d is None or (d.tenant is not None and d.tenant != tenant):
        raise unprocessable("dataset", f"data set '{ref}' not found; name an uploaded data set's id or a built-in (GET /v1/datasets)")
    if d.status == "inspecting":
        raise unprocessable("dataset", f"data set '{d.id}' is still being inspected; retry when its status is ready")
    if d.status != "ready":
        raise unprocessable("dataset", f"data set '{d.id}' failed inspection ({d.error})")
    if teacher.input_shape is not None and d.input_shape is not None and list(d.input_shape) != list(teacher.input_shape):
        raise unprocessable(
            "dataset",
            f"data set '{d.id}' has inputs of shape {list(d.input_shape)} per example but teacher '{teacher.id}' "
            f"expects {list(teacher.input_shape)}; use a data set with matching inputs",
        )
    return d


def _layer(teacher: Teacher, path: str, field: str = "layer") -> dict[str, Any]:
    layers = teacher.layers or []
    by_path = {str(layer["path"]): layer for layer in layers}
    tappable = [p for p, layer in by_path.items() if layer.get("tappable")]
    if path not in by_path:
        raise unprocessable(
            field, f"layer '{path}' does not exist in teacher '{teacher.id}'; tappable layers: {', '.join(tappable) or 'none'}"
        )
    layer = by_path[path]
    if not layer.get("tappable"):
        reason = layer.get("reason") or "it cannot be tapped"
        raise unprocessable(
            field, f"layer '{path}' cannot be tapped: {reason}; tappable layers: {', '.join(tappable) or 'none'}"
        )
    return layer


NON_MONOTONE = ("gelu", "silu", "swish", "mish", "hardswish", "elu_nonmonotone")


def _transfer(name: str, layer: dict[str, Any], field: str = "transfer") -> str:
    """The normalized choice: ``auto``, ``listed`` or ``softmax`` (a named transfer must be the listed one)."""
    listed = layer.get("transfer")
    path = layer.get("path")
    if name in ("auto", "listed"):
        return name
    if name == "softmax":
        if listed not in (None, "identity"):
            raise unprocessable(
                field,
                f"the softmax transfer applies only at the teacher's output layer (its logits); layer "
                f"'{path}' is followed by {listed!r}: use auto or listed",
            )
        return name
    if name == listed:
        return "listed"
    if name in NON_MONOTONE:
        raise unprocessable(
            field,
            f"transfer '{name}' is not monotone, so it has no convex potential and no Bregman divergence; "
            "tap a neighbouring layer whose transfer is monotone",
        )
    raise unprocessable(
        field,
        f"layer '{path}' is followed by {listed!r}, not {name!r}: a layer's divergence is defined by its own "
        f"transfer; use auto, listed or {listed}",
    )


def _k_fits(k: int | None, layer: dict[str, Any], dataset: Dataset, max_rows: int | None, field: str = "n_components") -> None:
    if k is None:
        return
    d = int(layer.get("d") or 0)
    if d and k >= d:
        raise unprocessable(
            field, f"n_components={k} is too large for layer '{layer.get('path')}' with d={d} units; choose k between 1 and {d - 1}"
        )
    rows = dataset.n_train
    if rows is not None and max_rows is not None:
        rows = min(rows, max_rows)
    if rows is not None and k >= rows:
        raise unprocessable(field, f"n_components={k} needs more training rows than components ({rows} rows); choose k < {rows}")


def _layout(layout: str, layer: dict[str, Any], student_arch: str | None = None) -> dict[str, Any]:
    """The layer as the chosen layout sees it (its ``d`` is the row width); 422 on a layout it lacks."""
    layouts = layer.get("layouts") or {"flat": layer.get("d")}
    if layout == "auto":
        chosen = layer.get("representation") if layer.get("representation") in layouts else "flat"
        if student_arch == "mlp":
            chosen = "flat"  # an mlp student cannot predict a coefficient map
    elif layout not in layouts:
        raise unprocessable("layout", f"layer '{layer.get('path')}' has no {layout} layout (it allows "
                                      f"{', '.join(layouts)}); use layout flat")
    else:
        chosen = layout
    if chosen == "channels" and student_arch == "mlp":
        raise unprocessable(["student", "arch"], "the channels layout needs a conv student (cnn, resnet*, wrn*) that "
                                                 "predicts a coefficient map; choose one, or layout flat")
    return {**layer, "d": layouts[chosen], "layout": chosen}


def validate_representation(db: Session, tenant: str, spec: RepresentationSpec) -> ValidatedJob:
    teacher = _teacher(db, tenant, spec.teacher_id)
    dataset = _dataset(db, tenant, spec.dataset, teacher)
    layer = _layer(teacher, spec.layer)
    spec.transfer = _transfer(spec.transfer, layer)
    layer = _layout(spec.layout, layer)
    _k_fits(spec.n_components, layer, dataset, spec.budget.max_train_rows)
    return ValidatedJob(teacher, dataset, layer, spec.n_components)


def _student_outputs(spec: DistillationSpec, layer: dict[str, Any], teacher: Teacher, dataset: Dataset,
                     k: int | None) -> int:
    """The widest output any of the job's students will have: k (below d) for bregman, d for
    hint, the teacher's outputs for kd and labels."""
    d = int(layer.get("d") or 1)
    layers = teacher.layers or []
    classes = dataset.num_classes or (int(layers[-1].get("d") or 1) if layers else 1)
    widths = {"bregman": k if k is not None else max(1, d - 1), "hint": d}
    return max(widths.get(m, classes) for m in spec.methods)


def _student_fits(spec: DistillationSpec, layer: dict[str, Any], teacher: Teacher, dataset: Dataset,
                  k: int | None, max_parameters: int | None) -> None:
    student = spec.student
    shape = [int(s) for s in (teacher.input_shape or dataset.input_shape or [])]
    args = student.arguments()
    if student.arch == "mlp":
        args.setdefault("in_features", math.prod(shape) if shape else 1)
    elif shape:
        if len(shape) != 3:
            raise unprocessable(["student", "arch"], f"architecture '{student.arch}' reads images (C, H, W) but the "
                                                     f"inputs have shape {shape}: use the 'mlp' architecture")
        args.setdefault("in_channels", shape[0])
    outputs = _student_outputs(spec, layer, teacher, dataset, k)
    args.setdefault("num_classes", outputs)
    try:
        count = parameter_count(student.arch, args)
    except (TypeError, ValueError) as exc:
        raise unprocessable("student", f"the student cannot be built: {exc}") from None
    if max_parameters is not None and count > max_parameters:
        raise unprocessable(
            "student",
            f"the student ({student.arch}, {clip(student.arguments() or 'default arguments', 200)}) would have {count:,} "
            f"parameters (with {outputs} outputs), more than the limit of {max_parameters:,} "
            "(BREGKD_MAX_STUDENT_PARAMETERS); choose a smaller architecture or narrower layers",
        )


def validate_distillation(
    db: Session, tenant: str, spec: DistillationSpec, capabilities: dict[str, Any] | None = None,
    max_student_parameters: int | None = None,
) -> ValidatedJob:
    teacher = _teacher(db, tenant, spec.teacher_id)
    dataset = _dataset(db, tenant, spec.dataset, teacher)
    k = spec.n_components
    if spec.representation_job_id is not None:
        rep = db.get(Job, spec.representation_job_id)
        if rep is None or rep.tenant != tenant:
            raise unprocessable("representation_job_id", f"representation job '{spec.representation_job_id}' not found")
        if rep.kind != "representation":
            raise unprocessable("representation_job_id", f"job '{rep.id}' is a {rep.kind} job, not a representation "
                                "job; name a succeeded representation job (GET /v1/jobs?kind=representation)")
        if rep.state != "succeeded":
            raise unprocessable(
                "representation_job_id",
                f"representation job '{rep.id}' is {rep.state}; distill through a succeeded representation job",
            )
        if rep.teacher_id != teacher.id:
            raise unprocessable(
                "representation_job_id", f"representation job '{rep.id}' was fitted on teacher '{rep.teacher_id}', not '{teacher.id}'"
            )
        if k is not None:
            raise unprocessable("n_components", "k comes from the representation job; leave n_components unset")
        layer = _layer(teacher, str(rep.spec["layer"]), field="representation_job_id")
        if (rep.metrics or {}).get("layout") == "channels" and spec.student.arch == "mlp":
            raise unprocessable(["student", "arch"], f"representation job '{rep.id}' is in the channels layout: it "
                                                     "needs a conv student (cnn, resnet*, wrn*)")
    else:
        layer = _layer(teacher, str(spec.layer))
        spec.transfer = _transfer(spec.transfer, layer)
        layer = _layout(spec.layout, layer, spec.student.arch)
        _k_fits(k, layer, dataset, spec.budget.max_train_rows)
    if dataset.has_labels is False and ("labels" in spec.methods):
        raise unprocessable("methods", f"data set '{dataset.id}' has no labels; the labels method needs them")
    archs = (capabilities or {}).get("architectures")
    if archs and spec.student.arch not in archs:
        raise unprocessable(["student", "arch"], f"unknown student architecture '{spec.student.arch}'; choose one of {', '.join(archs)}")
    _student_fits(spec, layer, teacher, dataset, k, max_student_parameters)
    return ValidatedJob(teacher, dataset, layer, k)
