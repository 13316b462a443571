"""Read a layer's pre-activations over a whole data set, in batches, optionally spilled to disk.

:func:`capture_preactivations` runs a tap's ``body`` (``x -> (B, d)``) batch by batch without
gradients. Without ``chunk_rows`` it returns one ``(N, d)`` tensor. With ``chunk_rows`` it writes
the rows to safetensors files of ``chunk_rows`` rows each (``chunk_00000.safetensors`` ... plus an
index ``chunks.json``) and returns a :class:`ChunkedActivations`: a re-iterable that yields the
``(rows, d)`` chunks, loading one file at a time, which :class:`bregman.pca.BregmanPCA` ``.fit``
accepts directly. Peak memory is then bounded by one batch plus one chunk, not by N.

The inputs may be a tensor / array ``(N, *input_shape)`` or any iterable of such batches (e.g. a
generator reading a large data set from disk), so the inputs need not fit in memory either. A
memory-mapped tensor is read one batch at a time; uint8 images are scaled per batch (``scale``),
so a data set is never converted to float as a whole.

``layout="channels"`` (a conv map, :mod:`bregman.layouts`) stores one row per example and
position, ``(N*H*W, C)``, instead of one row of ``C*H*W`` values per example.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["ChunkedActivations", "capture_preactivations"]

log = logging.getLogger(__name__)

_INDEX = "chunks.json"
_KEY = "a"


class ChunkedActivations:
    """Pre-activations stored as safetensors chunks; iterating yields ``(rows, d)`` tensors.

    Every call of ``iter()`` starts again from the first chunk, so estimators can make several
    passes. Only one chunk is in memory at a time.

    Parameters
    ----------
    directory : str or Path
        Folder holding the chunk files and ``chunks.json``.
    files : list of str
        Chunk file names inside ``directory``, in row order.
    n_rows, d : int
        Total rows and the dimension of each row.
    temporary : bool
        Delete ``directory`` when this object is garbage-collected or :meth:`cleanup` is called.

    Attributes
    ----------
    n_rows, d : int
    shape : tuple (n_rows, d)
    """

    def __init__(self, directory: str | os.PathLike, files: list[str], n_rows: int, d: int, temporary: bool = False) -> None:
        self.directory = Path(directory)
        self.files = list(files)
        self.n_rows = int(n_rows)
        self.d = int(d)
        self.temporary = temporary
        self._finalizer = (
            weakref.finalize(self, shutil.rmtree, str(self.directory), True) if temporary else None
        )

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "ChunkedActivations":
        """Reopen chunks written earlier (e.g. by another worker process) from their index."""
        directory = Path(directory)
        index = directory / _INDEX
        if not index.is_file():
            raise FileNotFoundError(f"{directory} holds no {_INDEX}: not a folder of captured activations")
        meta = json.loads(index.read_text())
        return cls(directory, meta["files"], meta["n_rows"], meta["d"])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.d)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[torch.Tensor]:
        from safetensors.torch import load_file

        for name in self.files:
            yield load_file(str(self.directory / name))[_KEY]

    def to_tensor(self) -> torch.Tensor:
        """All rows in one ``(n_rows, d)`` tensor (only for data that fits in memory)."""
        return torch.cat(list(self), dim=0) if self.files else torch.empty(0, self.d)

    def cleanup(self) -> None:
        """Delete the chunk files now if they are temporary."""
        if self._finalizer is not None:
            self._finalizer()

    def __repr__(self) -> str:
        return f"ChunkedActivations(n_rows={self.n_rows}, d={self.d}, chunks={len(self.files)}, directory={str(self.directory)!r})"


def _batches(x: Any, batch_size: int) -> tuple[Iterable[torch.Tensor], int | None]:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if isinstance(x, torch.Tensor):
        n = x.shape[0]
        return (x[i : i + batch_size] for i in range(0, n, batch_size)), n
    if isinstance(x, Iterable):
        return ((torch.as_tensor(b) for b in x), None)
    raise TypeError(f"inputs must be a tensor, an array or an iterable of batches, got {type(x).__name__}")


def as_float_batch(batch: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """One input batch as float32 (a copy of just this batch), times ``scale`` when given.

    Integer images (uint8) need a scale; float inputs are only cast when not float32.
    """
    if not batch.is_floating_point():
        if scale is None:
            raise ValueError(f"the inputs have dtype {batch.dtype}: give a scale (e.g. 1/255) to turn them into floats")
        return batch.to(torch.float32) * float(scale)
    batch = batch if batch.dtype == torch.float32 else batch.to(torch.float32)
    return batch * float(scale) if scale not in (None, 1.0, 1) else batch


def _device_of(module: nn.Module) -> torch.device | None:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return None


class _ChunkWriter:
    def __init__(self, directory: Path, chunk_rows: int) -> None:
        from safetensors.torch import save_file

        self._save = save_file
        self.directory = directory
        self.chunk_rows = chunk_rows
        self.pending: list[torch.Tensor] = []
        self.pending_rows = 0
        self.files: list[str] = []

    def add(self, rows: torch.Tensor) -> None:
        self.pending.append(rows)
        self.pending_rows += rows.shape[0]
        while self.pending_rows >= self.chunk_rows:
            block = torch.cat(self.pending, dim=0)
            self._write(block[: self.chunk_rows])
            rest = block[self.chunk_rows :]
            self.pending = [rest] if rest.shape[0] else []
            self.pending_rows = rest.shape[0]

    def _write(self, block: torch.Tensor) -> None:
        name = f"chunk_{len(self.files):05d}.safetensors"
        self._save({_KEY: block.contiguous()}, str(self.directory / name))
        self.files.append(name)

    def finish(self) -> None:
        if self.pending_rows:
            self._write(torch.cat(self.pending, dim=0))
        self.pending, self.pending_rows = [], 0


@torch.no_grad()
def capture_preactivations(
    body: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: Any,
    batch_size: int = 1024,
    chunk_rows: int | None = None,
    spill_dir: str | os.PathLike | None = None,
    *,
    device: torch.device | str | None = None,
    n_rows: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    layout: str = "flat",
    map_shape: tuple[int, int, int] | None = None,
    scale: float | None = None,
) -> torch.Tensor | ChunkedActivations:
    """Run ``body`` over the inputs in batches and collect its ``(B, d)`` outputs.

    Parameters
    ----------
    body : nn.Module or callable
        Maps a batch of inputs to pre-activations ``(B, d)`` (e.g. ``split_at(...).body``).
    x : Tensor, ndarray or iterable of batches
        The inputs, ``(N, *input_shape)``, or batches of them.
    batch_size : int
        Rows per forward pass (ignored when ``x`` is already an iterable of batches).
    chunk_rows : int, optional
        Rows per spilled chunk. When given, the result is a :class:`ChunkedActivations`.
    spill_dir : str or Path, optional
        Where chunks are written (created if needed, kept afterwards). Default: a temporary folder
        deleted with the returned object.
    device : torch.device or str, optional
        Where the body runs; default: the device of the body's parameters. Outputs are stored
        on the CPU.
    n_rows : int, optional
        Number of input rows when ``x`` is an iterable of batches: lets the one-pass result be
        allocated once instead of concatenated (which needs twice the memory).
    progress : callable(rows_done, n_rows_or_None), optional
        Called after every batch (with input rows, not output rows).
    layout : {"flat", "channels"}
        ``"channels"``: the body's ``(B, C*H*W)`` output becomes ``(B*H*W, C)`` channel rows
        (needs ``map_shape``).
    map_shape : (C, H, W), optional
        The layer's per-example shape (``layout="channels"``).
    scale : float, optional
        Multiply every input batch by this after converting it to float32 (e.g. 1/255 for
        uint8 images). Integer inputs need it.

    Returns
    -------
    Tensor (N, d) on the CPU (``(N*H*W, C)`` for channels), or ChunkedActivations.
    """
    from bregman.layouts import LayoutError, rows_of_map

    if layout not in ("flat", "channels"):
        raise LayoutError(f"layout must be 'flat' or 'channels', got {layout!r}")
    if layout == "channels" and (map_shape is None or len(tuple(map_shape)) != 3):
        raise LayoutError(f"layout 'channels' needs the layer's map_shape (C, H, W), got {map_shape!r}")
    positions = int(map_shape[1]) * int(map_shape[2]) if layout == "channels" else 1
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    if isinstance(body, nn.Module):
        body.eval()
        run_device = torch.device(device) if device is not None else _device_of(body)
    else:
        run_device = torch.device(device) if device is not None else None
    batches, n_inputs = _batches(x, batch_size)
    if n_inputs is None:
        n_inputs = n_rows
    n_total = n_inputs * positions if n_inputs is not None else None

    writer: _ChunkWriter | None = None
    temporary = False
    if chunk_rows is not None:
        if spill_dir is None:
            directory = Path(tempfile.mkdtemp(prefix="bregman-activations-"))
            temporary = True
        else:
            directory = Path(spill_dir)
            directory.mkdir(parents=True, exist_ok=True)
        writer = _ChunkWriter(directory, chunk_rows)

    out: torch.Tensor | None = None
    parts: list[torch.Tensor] = []
    done = 0
    d: int | None = None
    seen = 0
    for batch in batches:
        seen += int(batch.shape[0])
        batch = as_float_batch(batch, scale)
        if run_device is not None:
            batch = batch.to(run_device, non_blocking=True)
        a = body(batch)
        if a.dim() != 2:
            raise ValueError(f"body must return (B, d) rows, got shape {tuple(a.shape)}")
        if layout == "channels":
            a = rows_of_map(a, map_shape)
        a = a.detach().to("cpu")
        d = a.shape[1]
        if writer is not None:
            writer.add(a)
        elif n_total is not None:
            if out is None:  # one allocation: no second copy at the end
                out = torch.empty((n_total, d), dtype=a.dtype)
            if done + a.shape[0] > n_total:
                raise ValueError(f"the inputs hold more than n_rows={n_total} rows")
            out[done : done + a.shape[0]] = a
        else:
            parts.append(a)
        done += a.shape[0]
        if progress is not None:
            progress(seen, n_inputs)
    if writer is not None:
        writer.finish()
        index = {"n_rows": done, "d": d or 0, "files": writer.files}
        (writer.directory / _INDEX).write_text(json.dumps(index))
        log.debug("captured %d rows of dimension %s in %d chunks", done, d, len(writer.files))
        return ChunkedActivations(writer.directory, writer.files, done, d or 0, temporary=temporary)
    if out is not None:
        if done != n_total:
            raise ValueError(f"the inputs held {done} rows, not n_rows={n_total}")
        return out
    return torch.cat(parts, dim=0) if parts else torch.empty(0, 0)
