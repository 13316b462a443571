"""How a layer's pre-activations become the rows of a Bregman PCA: ``flat`` or ``channels``.

- ``"flat"``: one row per example, ``d = C*H*W`` for a conv map (every value its own unit).
- ``"channels"`` (conv maps only): one row per example *and spatial position*, ``d = C``. The
  transfer acts element-wise, so the layer's divergence is the sum over positions of the
  per-position divergences, and a Bregman PCA of these rows is a Bregman PCA of the same layer
  with one set of directions shared by every position (a 1x1 convolution). For a 64-channel
  8x8 map that is d = 64 instead of 4096, and 64x as many rows.

The cut's body still returns ``(B, C*H*W)`` in the map's ``(C, H, W)`` order; this module turns
such blocks into channel rows (``(B*H*W, C)``, example-major then position) and coefficient rows
back into maps ``(B, k, H, W)``.

:func:`default_layout` is the layout used when none is asked for: ``channels`` for a 3-D map
with an element-wise transfer, else ``flat``.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

__all__ = [
    "LAYOUTS", "LayoutError", "ChannelRows", "available_layouts", "default_layout", "layout_dims", "map_of_rows",
    "resolve_layout", "rows_of_map", "sample_rows",
]

LAYOUTS = ("flat", "channels")
#: rows (example x position) a channel-layout fit uses by default: 3.2 M rows of a 64-channel
#: 8x8 map over 50,000 images are subsampled to this many (a seeded random choice); the
#: coefficients are always computed at every position. 65,536 rows of d = 64 are still 1,000 per
#: unit; the fit's cost is linear in the rows (benchmarks/image_flow.py: CPU seconds per outer
#: iteration, 32,000 rows x 64, k = 16: see the speed table).
DEFAULT_FIT_ROWS = 65_536


class LayoutError(ValueError):
    """A layout that does not apply to the layer; the message says which does."""


def available_layouts(output_shape: Sequence[int], transfer: str | None) -> list[str]:
    """The layouts a layer of this per-example shape and transfer can be represented in."""
    if len(tuple(output_shape)) == 3 and transfer not in (None, "softmax"):
        return ["flat", "channels"]
    return ["flat"]


def default_layout(output_shape: Sequence[int], transfer: str | None) -> str:
    """``channels`` for conv maps (C, H, W) with an element-wise transfer, else ``flat``."""
    return "channels" if "channels" in available_layouts(output_shape, transfer) else "flat"


def layout_dims(output_shape: Sequence[int]) -> dict[str, int]:
    """The row width ``d`` of each layout the shape allows (``{"flat": C*H*W, "channels": C}``)."""
    shape = tuple(int(s) for s in output_shape)
    dims = {"flat": math.prod(shape)}
    if len(shape) == 3:
        dims["channels"] = shape[0]
    return dims


def resolve_layout(layout: str | None, output_shape: Sequence[int], transfer: str | None, layer: str = "") -> str:
    """``layout`` checked against the layer (None or ``"auto"``: :func:`default_layout`)."""
    if layout in (None, "auto"):
        return default_layout(output_shape, transfer)
    if layout not in LAYOUTS:
        raise LayoutError(f"layout must be 'flat', 'channels' or 'auto', got {layout!r}")
    allowed = available_layouts(output_shape, transfer)
    if layout not in allowed:
        shape = list(output_shape)
        why = ("its transfer (softmax) couples the units of an example" if transfer == "softmax"
               else f"its output of shape {shape} is not a (C, H, W) map")
        raise LayoutError(f"layer {layer!r} cannot use the channels layout: {why}; use layout 'flat'")
    return layout


def rows_of_map(a: Tensor, map_shape: Sequence[int]) -> Tensor:
    """``(B, C*H*W)`` (or ``(B, C, H, W)``) pre-activations to channel rows ``(B*H*W, C)``."""
    c, h, w = (int(s) for s in map_shape)
    return a.reshape(a.shape[0], c, h * w).transpose(1, 2).reshape(-1, c)


def map_of_rows(rows: Tensor, spatial: Sequence[int]) -> Tensor:
    """Channel rows ``(B*H*W, k)`` back to a map ``(B, k, H, W)``."""
    h, w = (int(s) for s in spatial)
    k = rows.shape[1]
    return rows.reshape(-1, h * w, k).transpose(1, 2).reshape(-1, k, h, w)


class ChannelRows:
    """Channel rows of flat captured activations (a tensor or chunks), re-iterable.

    Each ``iter()`` yields the rows of one chunk at a time (``(rows*H*W, C)``), so a fit over
    :class:`bregman.capture.ChunkedActivations` stays one chunk in memory.
    """

    def __init__(self, flat: Any, map_shape: Sequence[int]) -> None:
        self.flat = flat
        self.map_shape = tuple(int(s) for s in map_shape)
        positions = self.map_shape[1] * self.map_shape[2]
        n = getattr(flat, "n_rows", None) if not isinstance(flat, Tensor) else None
        if n is None:  # a tensor, or a list of chunks
            n = int(flat.shape[0]) if isinstance(flat, Tensor) else sum(int(c.shape[0]) for c in flat)
        self.n_rows = int(n) * positions
        self.d = self.map_shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.d)

    def __iter__(self) -> Iterator[Tensor]:
        chunks = [self.flat] if isinstance(self.flat, Tensor) else self.flat
        for chunk in chunks:
            yield rows_of_map(torch.as_tensor(chunk), self.map_shape)


def sample_rows(flat: Any, map_shape: Sequence[int], max_rows: int | None, seed: int = 0) -> Tensor:
    """At most ``max_rows`` channel rows of flat activations, for the fit (all rows when fewer).

    The rows are a seeded random choice of (example, position) pairs, read chunk by chunk, so
    the captured activations need not fit in memory.
    """
    rows_all = ChannelRows(flat, map_shape)
    if max_rows is None or rows_all.n_rows <= max_rows:
        return torch.cat(list(rows_all)) if not isinstance(flat, Tensor) else rows_of_map(flat, map_shape)
    if max_rows < 1:
        raise LayoutError(f"fit_rows must be a positive integer, got {max_rows}")
    gen = torch.Generator().manual_seed(int(seed))
    keep = torch.randperm(rows_all.n_rows, generator=gen)[:max_rows].sort().values
    out, start = [], 0
    for rows in rows_all:
        stop = start + rows.shape[0]
        lo, hi = torch.searchsorted(keep, torch.tensor([start, stop]))
        if hi > lo:
            out.append(rows[keep[lo:hi] - start])
        start = stop
    return torch.cat(out)
