"""Students from the architecture registry, with the output width a method asks for.

A student spec is ``{"arch": "mlp", "hidden": [32]}`` (arguments inline) or
``{"arch": "mlp", "args": {"hidden": [32]}}``. The input size/channels and the output width
(``num_classes`` in every registry builder) are filled in here: the output width is k for
``bregman``, the layer width d for ``hint`` and the teacher's number of outputs otherwise.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from bregman.models import ARCHITECTURES, build_model
from bregman.training import seeded

DEFAULT_STUDENT: dict[str, Any] = {"arch": "mlp", "hidden": [32]}



class StudentSpecError(ValueError):
    """A student spec names an unknown architecture or arguments that contradict the task."""


def normalize_spec(spec: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``(arch, args)`` from either spec form; the arguments are copied."""
    spec = dict(DEFAULT_STUDENT if spec is None else spec)
    if not isinstance(spec, dict):
        raise StudentSpecError(f"a student spec must be a dict like {DEFAULT_STUDENT}, got {type(spec).__name__}")
    arch = spec.pop("arch", None)
    if arch is None:
        raise StudentSpecError(f"the student spec has no 'arch'; known architectures: {sorted(ARCHITECTURES)}")
    if arch not in ARCHITECTURES:
        raise StudentSpecError(f"unknown student architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    args = dict(spec.pop("args", {}) or {})
    overlap = sorted(set(args) & set(spec))
    if overlap:
        raise StudentSpecError(f"student argument(s) {overlap} given both inline and under 'args': give them once")
    args.update(spec)
    return arch, args


class FlattenInput(nn.Sequential):
    """An MLP student on image-shaped inputs: flatten (B, ...) to (B, prod(...)) first."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__(nn.Flatten(), mlp)


def student_args(arch: str, args: dict[str, Any], input_shape: Sequence[int], out_features: int) -> dict[str, Any]:
    """The builder arguments with the input size and the output width filled in (and checked)."""
    args = dict(args)
    input_shape = tuple(int(s) for s in input_shape)
    if "num_classes" in args and int(args["num_classes"]) != out_features:
        raise StudentSpecError(
            f"the student's num_classes={args['num_classes']} contradicts the method, whose student must output "
            f"{out_features} values: leave num_classes out of the spec")
    args["num_classes"] = int(out_features)
    if arch == "mlp":
        in_features = math.prod(input_shape)
        if "in_features" in args and int(args["in_features"]) != in_features:
            raise StudentSpecError(f"the student's in_features={args['in_features']} does not match the inputs "
                                   f"{input_shape} ({in_features} values): leave in_features out of the spec")
        args["in_features"] = in_features
    else:
        if len(input_shape) != 3:
            raise StudentSpecError(f"architecture {arch!r} reads images (C, H, W) but the inputs have shape "
                                   f"{input_shape}: use the 'mlp' architecture for flat inputs")
        if "in_channels" in args and int(args["in_channels"]) != input_shape[0]:
            raise StudentSpecError(f"the student's in_channels={args['in_channels']} does not match the inputs' "
                                   f"{input_shape[0]} channels: leave in_channels out of the spec")
        args["in_channels"] = input_shape[0]
    return args


def build_student(spec: dict[str, Any] | None, input_shape: Sequence[int], out_features: int, *,
                  seed: int = 0, device: torch.device | str | None = None,
                  map_head: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build a freshly initialized student (weights seeded by ``seed``).

    Returns the module and its manifest ``{"arch": ..., "args": {...}, "flatten_input": bool}``;
    :func:`student_from_manifest` rebuilds the same module from it. ``map_head``
    (``{"channels": k, "size": [H, W], "flatten": bool}``, the channels layout) makes a conv
    student predict a map (:mod:`bregman.distillation.map_students`).
    """
    arch, args = normalize_spec(spec)
    if map_head is not None and arch == "mlp":
        raise StudentSpecError("the channels layout needs a conv student (cnn, resnet*, wrn*) that predicts a "
                               "coefficient map; use one of those, or layout 'flat' for an mlp student")
    args = student_args(arch, args, input_shape, out_features)
    manifest = {"arch": arch, "args": args, "flatten_input": arch == "mlp" and len(tuple(input_shape)) > 1}
    if map_head is not None:
        manifest["map_head"] = dict(map_head)
    with seeded(seed, device):
        module = student_from_manifest(manifest)
    if device is not None:
        module.to(device)
    return module, manifest


def student_from_manifest(manifest: dict[str, Any]) -> nn.Module:
    """The (untrained) student module a manifest from :func:`build_student` describes."""
    try:
        module = build_model(manifest["arch"], **manifest["args"])
    except ValueError as exc:
        raise StudentSpecError(f"cannot build the student: {exc}") from exc
    if manifest.get("flatten_input"):
        module = FlattenInput(module)
    if manifest.get("map_head"):
        from bregman.distillation.map_students import map_student

        module = map_student(module, **manifest["map_head"])
    return module
