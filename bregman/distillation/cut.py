"""Where the student meets the teacher: the tapped layer, its transfer, and the frozen head.

:func:`resolve_cut` wraps :func:`bregman.layers.split_at` and adds one choice the layer listing
cannot make: at the teacher's **output** layer (the logits, whose listed transfer is the identity
and whose head is the identity), the paper treats the logits as the pre-activation of the output
distribution, i.e. uses the **softmax** transfer; the frozen head then maps probabilities back
to logits with ``log`` (logits up to a per-row shift, which changes neither the argmax nor the
softmax). ``transfer="auto"`` (the default) makes that choice at the output layer and keeps the
listed transfer elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bregman.distillation.methods import ProbabilitiesToLogits
from bregman.layers import LayerError, LayerInfo, list_layers, split_at
from bregman.transfers import Transfer, get_transfer


@dataclass
class Cut:
    """A teacher cut at one layer: ``head(transfer.f(body(x)))`` is the teacher's output.

    Attributes
    ----------
    layer : str
        The layer's path as the layer listing names it.
    body : nn.Module
        ``x -> a`` (B, d), the pre-activations.
    transfer : Transfer
        The transfer used (softmax at the output layer under ``transfer="auto"``).
    head : nn.Module
        ``f(a) -> teacher output`` (frozen; shares no parameters with the teacher).
    info : LayerInfo
    output_layer : bool
        Whether the layer is the teacher's output (logits).
    """

    layer: str
    body: nn.Module
    transfer: Transfer
    head: nn.Module
    info: LayerInfo
    output_layer: bool
    layout: str = "flat"

    @property
    def d(self) -> int:
        """The width of a representation's row: C*H*W (flat) or C (channels)."""
        return int(self.info.d_of(self.layout)) if self.layout != "flat" else int(self.info.d)

    @property
    def map_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) in the channels layout, else None."""
        return tuple(self.info.output_shape) if self.layout == "channels" else None


def _is_identity(head: nn.Module, d: int, device: torch.device) -> bool:
    probe = torch.randn(3, d, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        try:
            out = head(probe)
        except Exception:  # a head that needs another shape is not the identity
            return False
    return isinstance(out, Tensor) and out.shape == probe.shape and torch.equal(out, probe)


def default_layer(teacher: Any, example: Tensor) -> str:
    """The last tappable layer below the teacher's output layer (the penultimate), else the last.

    Why not the logits: on digits (``benchmarks/distill_table.py``) bregman and hint students
    through the penultimate layer beat those through the logits at every labelled fraction
    (2 % of the data: 90.1 % against 87.7 % test accuracy for bregman).
    """
    layers = [info for info in list_layers(teacher, example) if info.tappable]
    if not layers:
        raise LayerError("the teacher has no tappable layer; see bregman.layers.list_layers for the reasons")
    if len(layers) > 1 and layers[-1].transfer in ("identity", "softmax"):
        last = split_at(teacher, layers[-1].path, example)
        if _is_identity(last.head, int(last.info.d), example.device):  # the output layer
            return layers[-2].path
    return layers[-1].path


def resolve_cut(teacher: Any, layer: str | None, example: Tensor, transfer: str | Transfer | None = "auto",
                layout: str | None = "flat") -> Cut:
    """Cut ``teacher`` at ``layer`` (default: :func:`default_layer`) with the transfer to use.

    Parameters
    ----------
    teacher : Teacher or nn.Module
    layer : str or None
        Layer path from :func:`bregman.layers.list_layers`; None picks :func:`default_layer`.
    example : Tensor
        A batch of inputs (B, ...) on the teacher's device.
    transfer : "auto", None, "listed", "softmax"
        ``"auto"`` / None: softmax at the output layer, else the listed transfer. ``"listed"``:
        always the listed transfer. ``"softmax"``: only valid at the output layer.
    layout : "flat", "channels", "auto" or None
        How the layer's map becomes rows (:mod:`bregman.layouts`); ``"auto"`` / None: channels
        for a conv map with an element-wise transfer, else flat.
    """
    from bregman.layouts import resolve_layout

    layer = default_layer(teacher, example) if layer is None else str(layer)
    split = split_at(teacher, layer, example)
    device = example.device
    output_layer = split.transfer.name == "identity" and _is_identity(split.head, int(split.info.d), device)
    choice = "auto" if transfer is None else transfer
    if isinstance(choice, Transfer):
        choice = choice.name
    if choice not in ("auto", "listed", "softmax"):
        raise ValueError(f"transfer must be 'auto', 'listed' or 'softmax', got {transfer!r}")
    if choice == "softmax" and not output_layer:
        raise ValueError(f"the softmax transfer applies only at the teacher's output layer (its logits); layer "
                         f"{layer!r} is followed by {split.transfer.name!r}: use transfer='auto' or 'listed'")
    if output_layer and choice in ("auto", "softmax"):
        return Cut(layer, split.body, get_transfer("softmax"), ProbabilitiesToLogits(), split.info, True,
                   resolve_layout(layout, split.info.output_shape, "softmax", layer))
    return Cut(layer, split.body, split.transfer, split.head, split.info, output_layer,
               resolve_layout(layout, split.info.output_shape, split.transfer.name, layer))
