"""Which layers of a teacher can be represented, and taps that cut the teacher at one of them.

:func:`list_layers` reports, for every candidate layer (linear, convolution, normalisation,
residual sum, pooling), its path, op, per-example output shape, the transfer function that follows
it, and whether it can be tapped (with the reason when not).

:func:`split_at` cuts the teacher at a layer into

- ``body``: ``x -> a``, the layer's pre-activations, flattened to ``(B, d)``;
- ``transfer``: the layer's transfer function ``f`` (a :class:`bregman.transfers.Transfer`);
- ``head``: ``f(a) -> teacher(x)``, the frozen rest of the teacher,

so that ``head(transfer.f(body(x))) == teacher(x)``. Both are ``torch.fx.GraphModule``\\ s of ATen
operators holding their own frozen copies of the weights; they can be exported with
``torch.export`` (alone or inside a larger module such as student -> exported layer -> head).

Representation of convolutional layers: the body always returns a conv map of shape
``(C, H, W)`` flattened to its ``C*H*W`` values per example, and the head un-flattens it. A
representation of the map uses one of two layouts (:mod:`bregman.layouts`): ``"flat"``, one row
of ``d = C*H*W`` values per example, or ``"channels"``, one row of ``d = C`` values per example
and position (the default for conv maps with an element-wise transfer: a Bregman PCA of the same
layer with directions shared by every position, exported as a 1x1 convolution). Element-wise
transfers (ReLU, sigmoid, ...) act on every value alike, so both views are exact.

Paths: the module path of the module that computes the pre-activation (``"0"``, ``"2"`` in an
``nn.Sequential``; ``"bn1"``, ``"layer3.2"`` (a residual block's sum) in a ResNet). Where a module
computes several candidate layers, or none (functional code), the graph node's name is the path.
Node names are accepted by :func:`split_at` as aliases.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bregman._graph import Candidate, LayerError, TeacherGraph, export_module, flat_dim
from bregman.teachers import Teacher

__all__ = ["LayerError", "LayerInfo", "Split", "list_layers", "split_at", "teacher_graph"]


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer of a teacher.

    Attributes
    ----------
    path : str
        Module path (or graph node name) to pass to :func:`split_at`.
    node : str
        Name of the graph node holding the pre-activations.
    op : str
        ``"linear"``, ``"conv"``, ``"batch_norm"``, ``"layer_norm"``, ``"group_norm"``, ``"add"``
        (residual sum) or ``"pool"``.
    module_type : str
        Class name of the module computing it (empty for functional code).
    output_shape : tuple of int
        Per-example shape of the pre-activations.
    d : int
        Dimension of the representation (product of ``output_shape``).
    transfer : str or None
        Transfer function that follows (``"identity"`` at the logits or before a non-activation),
        or the detected activation name when it cannot be used (e.g. ``"gelu"``); None when no
        single consumer follows.
    transfer_params : dict
        E.g. ``{"negative_slope": 0.2}``.
    tappable : bool
    reason : str or None
        Why the layer cannot be tapped.
    representation : str
        The default layout: ``"channels"`` for a conv map with an element-wise transfer, else
        ``"flat"`` (a (B, d) matrix).
    layouts : dict
        The row width d of every layout the layer allows, e.g. ``{"flat": 4096, "channels": 64}``.
    """

    path: str
    node: str
    op: str
    module_type: str
    output_shape: tuple[int, ...]
    d: int
    transfer: str | None
    transfer_params: dict[str, Any]
    tappable: bool
    reason: str | None
    representation: str = "flat"
    layouts: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_shape"] = list(self.output_shape)
        return out

    def d_of(self, layout: str) -> int:
        """The row width in ``layout`` (``flat``: d; ``channels``: C)."""
        return int((self.layouts or {"flat": self.d})[layout])


@dataclass
class Split:
    """A teacher cut at one layer: ``head(transfer.f(body(x))) == teacher(x)``."""

    body: nn.Module
    transfer: Any
    head: nn.Module
    info: LayerInfo

    def teacher_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's output recomputed through the cut (for checks)."""
        return self.head(self.transfer.f(self.body(x)))


def _info(c: Candidate) -> LayerInfo:
    transfer: str | None
    params: dict[str, Any] = {}
    if c.plan is not None:
        transfer, params = c.plan.transfer_name, dict(c.plan.transfer_params)
    else:
        transfer = _detected_activation(c)
    from bregman.layouts import available_layouts, default_layout, layout_dims

    dims = layout_dims(c.output_shape)
    allowed = available_layouts(c.output_shape, transfer)
    return LayerInfo(
        path=c.path,
        node=c.node.name,
        op=c.op,
        module_type=c.module_type,
        output_shape=tuple(c.output_shape),
        d=flat_dim(c.output_shape),
        transfer=transfer,
        transfer_params=params,
        tappable=c.plan is not None,
        reason=c.reason,
        representation=default_layout(c.output_shape, transfer),
        layouts={name: dims[name] for name in allowed},
    )


def _detected_activation(c: Candidate) -> str | None:
    from bregman._graph import _ACTIVATIONS, _UNSUPPORTED_ACTIVATIONS

    users = list(c.node.users)
    if len(users) != 1:
        return None
    target = users[0].target
    return _ACTIVATIONS.get(target) or _UNSUPPORTED_ACTIVATIONS.get(target) or "identity"


def teacher_graph(teacher_or_module: Teacher | nn.Module, example_input: torch.Tensor | None = None) -> TeacherGraph:
    """The analysed graph of a teacher (cached on a :class:`Teacher`; a bare module is exported anew)."""
    if isinstance(teacher_or_module, Teacher):
        if teacher_or_module._graph is None:
            teacher_or_module._graph = TeacherGraph(teacher_or_module.exported_program())
        return teacher_or_module._graph
    if isinstance(teacher_or_module, torch.export.ExportedProgram):
        return TeacherGraph(teacher_or_module)
    if not isinstance(teacher_or_module, nn.Module):
        raise TypeError(f"expected a Teacher, an nn.Module or an ExportedProgram, got {type(teacher_or_module).__name__}")
    if example_input is None:
        raise LayerError("listing the layers of a bare module needs an example input batch (B, *input_shape)")
    return TeacherGraph(export_module(teacher_or_module, example_input))


def list_layers(teacher_or_module: Teacher | nn.Module, example_input: torch.Tensor | None = None) -> list[LayerInfo]:
    """Every candidate layer of the teacher, in graph order, tappable or not (with the reason).

    Parameters
    ----------
    teacher_or_module : Teacher, nn.Module or ExportedProgram
    example_input : Tensor, optional
        A batch ``(B, *input_shape)``; needed for a bare module, ignored for a :class:`Teacher`.
    """
    return [_info(c) for c in teacher_graph(teacher_or_module, example_input).candidates]


def split_at(
    teacher_or_module: Teacher | nn.Module, layer: str, example_input: torch.Tensor | None = None
) -> Split:
    """Cut the teacher at ``layer`` into body, transfer and frozen head.

    Raises
    ------
    LayerError
        Unknown layer (the message lists the tappable ones) or a layer that cannot be tapped
        (the message gives the reason).
    """
    from bregman.transfers import get_transfer

    graph = teacher_graph(teacher_or_module, example_input)
    by_name = {c.path: c for c in graph.candidates}
    for c in graph.candidates:
        by_name.setdefault(c.node.name, c)
    cand = by_name.get(str(layer))
    if cand is None:
        valid = [c.path for c in graph.candidates if c.plan is not None]
        raise LayerError(f"unknown layer {layer!r}; tappable layers: {valid}")
    if cand.plan is None:
        raise LayerError(f"layer {layer!r} cannot be tapped: {cand.reason}")
    plan = cand.plan
    body, head = graph.build_body(plan), graph.build_head(plan)
    device = _device_of(teacher_or_module)
    if device is not None:  # the graph may come from a program loaded on the CPU
        body, head = body.to(device), head.to(device)
    return Split(
        body=body,
        transfer=get_transfer(plan.transfer_name, **plan.transfer_params),
        head=head,
        info=_info(cand),
    )


def _device_of(teacher_or_module: Any) -> torch.device | None:
    if isinstance(teacher_or_module, Teacher):
        return teacher_or_module.device
    if isinstance(teacher_or_module, nn.Module):
        for t in list(teacher_or_module.parameters()) + list(teacher_or_module.buffers()):
            return t.device
    return None
