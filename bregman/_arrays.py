"""Input conversion and validation for the Bregman estimators.

Turns what a user passes (a torch tensor, a numpy array, a numpy memmap, a list of chunks or
any re-iterable of chunks) into torch row blocks on one device and dtype, with errors that
say what is wrong and what to do. Private: use :class:`bregman.pca.BregmanPCA`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["InputValidationError", "to_tensor_2d", "RowSource", "working_dtype", "output_like"]

#: Work-block size (rows × width) for in-memory data. The fit's element-wise passes (the
#: divergence, f, the Hessian diagonal; a dozen per Newton step) dominate its time, and on
#: blocks that stay in cache and reuse freed memory they run 1.5x faster than on 2^23-element
#: blocks (fit_speed workload d, one thread: 18.1 s against 27.0 s; 2^18: 18.8 s).
_DEFAULT_BLOCK_ELEMENTS = 1 << 20
#: Work-block size for streamed data (chunks, memmaps). The solver keeps a dozen or so
#: block-sized temporaries alive, so this, not the chunk size, sets the fit's memory; at
#: 2^19 elements (≈ 500 rows of a 512-wide layer) a chunked fit measured no slower.
_STREAM_BLOCK_ELEMENTS = 1 << 19


class InputValidationError(ValueError):
    """The data passed to an estimator cannot be used as it is; the message says why."""


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    return f"{type(x).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "") + (
        f" and dtype {dtype}" if dtype is not None else ""
    )


def working_dtype(dtype: Any, *, name: str = "A") -> torch.dtype:
    """The float dtype computations use for input of ``dtype`` (float16/bfloat16 -> float32)."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float64):
            return dtype
        if dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        kind = "complex" if dtype.is_complex else ("boolean" if dtype == torch.bool else "integer")
        raise InputValidationError(
            f"{name} has {kind} dtype {dtype}; pass real floating-point data (float32 or float64), "
            f"e.g. {name}.float()"
        )
    np_dtype = np.dtype(dtype)
    if np_dtype in (np.float32, np.float64):
        return torch.float32 if np_dtype == np.float32 else torch.float64
    if np_dtype == np.float16:
        return torch.float32
    kind = {"c": "complex", "b": "boolean", "O": "object", "U": "string", "S": "bytes"}.get(
        np_dtype.kind, "integer" if np_dtype.kind in "iu" else np_dtype.kind
    )
    raise InputValidationError(
        f"{name} has {kind} dtype {np_dtype}; pass real floating-point data (float32 or float64), "
        f"e.g. {name}.astype(np.float32)"
    )


def to_tensor_2d(
    x: Any,
    *,
    name: str = "A",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    check_finite: bool = True,
    columns: int | None = None,
) -> torch.Tensor:
    """Validate a 2-D float array or tensor and return it as a torch tensor.

    numpy input is wrapped without a copy where possible; float16/bfloat16 become float32.
    ``dtype``/``device`` default to the input's (numpy: CPU).
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        working_dtype(x.dtype, name=name)
        t = torch.from_numpy(np.ascontiguousarray(x) if not x.flags.writeable else x)
    elif isinstance(x, (list, tuple)) and x and all(isinstance(r, (list, tuple)) for r in x):
        arr = np.asarray(x)
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.float64)
        working_dtype(arr.dtype, name=name)
        t = torch.from_numpy(arr)
    else:
        raise InputValidationError(
            f"{name} must be a 2-D torch tensor or numpy array of shape (n_samples, n_features), got "
            f"{_describe(x)}"
        )
    if t.ndim != 2:
        hint = (
            f"reshape it to (n_samples, n_features), e.g. {name}.reshape(-1, 1) for one feature or "
            f"{name}.reshape(1, -1) for one sample"
            if t.ndim < 2
            else f"flatten the trailing dimensions, e.g. {name}.reshape(len({name}), -1)"
        )
        raise InputValidationError(
            f"{name} must be 2-D (n_samples, n_features), got {t.ndim}-D shape {tuple(t.shape)}; {hint}"
        )
    target = dtype if dtype is not None else working_dtype(t.dtype, name=name)
    if dtype is not None:
        working_dtype(t.dtype, name=name)
    if columns is not None and t.shape[1] != columns:
        raise InputValidationError(
            f"{name} has {t.shape[1]} features (columns) but {columns} were expected; pass data with "
            f"the layer width the estimator was fitted on"
        )
    t = t.to(device=device if device is not None else t.device, dtype=target)
    if check_finite and t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InputValidationError(
            f"{name} contains {bad} NaN or infinite value(s); remove or replace them (e.g. clamp the "
            "pre-activations, or drop the affected rows) before fitting"
        )
    return t


def output_like(t: torch.Tensor, like: Any) -> Any:
    """Return ``t`` as numpy when ``like`` is numpy (or 'numpy'), else as a tensor on like's device."""
    if isinstance(like, str):
        return t.detach().cpu().numpy() if like == "numpy" else t
    if isinstance(like, torch.Tensor):
        return t.to(like.device)
    return t.detach().cpu().numpy()


class RowSource:
    """Re-readable row blocks of an (N, d) data set held in memory or read in chunks.

    Parameters
    ----------
    data : tensor, ndarray, numpy memmap, list/tuple of 2-D chunks, or re-iterable of chunks
        A re-iterable must return a fresh iterator from every ``iter()`` call: a generator
        (one-shot) cannot be read more than once and is refused.
    device : torch device or None
        Where blocks are placed (default: the first chunk's device; numpy: CPU).
    block_rows : int or None
        Rows per processing block (default: about 8M elements per block).

    Attributes
    ----------
    n_rows, d : int
    dtype : torch.dtype (float32 or float64)
    device : torch.device
    in_memory : bool
        True for a single in-memory array/tensor (then coefficients may be cached in memory).

    Blocks are not checked for NaN/inf here: a consumer's first pass must check (see
    :func:`bregman._pca_solver.moments`).
    output_kind : "numpy" or "torch"
    """

    def __init__(self, data: Any, *, device: Any = None, block_rows: int | None = None, name: str = "A"):
        self.name = name
        self._block_rows_opt = block_rows
        self._tensor: torch.Tensor | None = None
        self._memmap: np.ndarray | None = None
        self._chunks: Any = None
        if isinstance(data, np.memmap):
            working_dtype(data.dtype, name=name)
            if data.ndim != 2:
                raise InputValidationError(
                    f"{name} is a memmap of shape {tuple(data.shape)}; it must be 2-D "
                    "(n_samples, n_features)"
                )
            self._memmap = data
            self.in_memory = False
            self.output_kind = "numpy"
            self.n_rows, self.d = int(data.shape[0]), int(data.shape[1])
            self.dtype = working_dtype(data.dtype, name=name)
            self.device = torch.device(device) if device is not None else torch.device("cpu")
            self._check_finite_blocks = False
        elif isinstance(data, (torch.Tensor, np.ndarray)):
            # Finiteness is checked by the consumer's first pass (the moments of the data are
            # non-finite iff an entry is), which saves a full pass over large inputs.
            # detached: a fit treats the data as constants (and its in-place kernels refuse
            # tensors that require grad)
            self._tensor = to_tensor_2d(data, name=name, device=device, check_finite=False).detach()
            self.in_memory = True
            self.output_kind = "torch" if isinstance(data, torch.Tensor) else "numpy"
            self.n_rows, self.d = map(int, self._tensor.shape)
            self.dtype = self._tensor.dtype
            self.device = self._tensor.device
            self._check_finite_blocks = False
        else:
            self._init_chunks(data, device)
        if self.n_rows == 0:
            raise InputValidationError(f"{name} has no rows; pass at least a few samples")
        if self.d == 0:
            raise InputValidationError(f"{name} has no features (0 columns)")

    # --- chunked input ----------------------------------------------------------------
    def _init_chunks(self, data: Any, device: Any) -> None:
        name = self.name
        if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
            raise InputValidationError(
                f"{name} must be a 2-D tensor or array, a numpy memmap, or a re-iterable of 2-D "
                f"chunks (e.g. a list of arrays), got {_describe(data)}"
            )
        first_iter = iter(data)
        if first_iter is data or isinstance(data, Iterator):
            raise InputValidationError(
                f"{name} is a one-shot iterator or generator, which cannot be re-read; the fit makes "
                "several passes over the data. Pass a list of chunks, a numpy memmap, or an object "
                "whose __iter__ returns a fresh iterator over (rows, n_features) chunks each time"
            )
        self._chunks = data
        self.in_memory = False
        n_rows, d, dtype, dev, kind = 0, None, None, None, None
        # Sources that know their size (bregman.capture.ChunkedActivations: n_rows, d) are not
        # read in full here: the first chunk gives dtype and device, and every pass checks the
        # row count and each chunk's shape.
        known = isinstance(getattr(data, "n_rows", None), int) and isinstance(getattr(data, "d", None), int)
        for i, chunk in enumerate(first_iter):
            if not isinstance(chunk, (torch.Tensor, np.ndarray)):
                raise InputValidationError(
                    f"chunk {i} of {name} is {_describe(chunk)}; every chunk must be a 2-D tensor or "
                    "numpy array of shape (rows, n_features)"
                )
            if chunk.ndim != 2:
                raise InputValidationError(
                    f"chunk {i} of {name} has shape {tuple(chunk.shape)}; every chunk must be 2-D "
                    "(rows, n_features)"
                )
            cdtype = working_dtype(chunk.dtype, name=f"chunk {i} of {name}")
            if d is None:
                d, dtype = int(chunk.shape[1]), cdtype
                kind = "torch" if isinstance(chunk, torch.Tensor) else "numpy"
                dev = chunk.device if isinstance(chunk, torch.Tensor) else torch.device("cpu")
            elif chunk.shape[1] != d:
                raise InputValidationError(
                    f"chunk {i} of {name} has {chunk.shape[1]} columns but chunk 0 has {d}; all chunks "
                    "must have the same number of features"
                )
            n_rows += int(chunk.shape[0])
            if known:
                if d != data.d:
                    raise InputValidationError(
                        f"{name} says d={data.d} but its chunks have {d} columns"
                    )
                n_rows = int(data.n_rows)
                break
        if d is None:
            raise InputValidationError(f"{name} is an empty collection of chunks; pass at least one chunk")
        self.n_rows, self.d, self.dtype = n_rows, d, dtype
        self.device = torch.device(device) if device is not None else dev
        self.output_kind = kind
        self._check_finite_blocks = False

    # --- reading ----------------------------------------------------------------------
    def block_rows(self, width: int) -> int:
        """Rows per processing block for work arrays about ``width`` columns wide."""
        if self._block_rows_opt:
            return max(1, int(self._block_rows_opt))
        budget = _DEFAULT_BLOCK_ELEMENTS if self.in_memory else _STREAM_BLOCK_ELEMENTS
        return max(64, budget // max(1, width))

    def blocks(self, width: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_row, block)`` over all rows, in the same order on every call."""
        rows = self.block_rows(width or self.d)
        if self._tensor is not None:
            for s in range(0, self.n_rows, rows):
                yield s, self._tensor[s : s + rows].to(self.dtype)  # a no-op unless compute_in changed it
            return
        if self._memmap is not None:
            for s in range(0, self.n_rows, rows):
                yield s, self._convert(np.array(self._memmap[s : s + rows]), f"rows {s}..")
            return
        start = 0
        for i, chunk in enumerate(self._chunks):
            if not isinstance(chunk, (torch.Tensor, np.ndarray)):
                raise InputValidationError(
                    f"chunk {i} of {self.name} is {_describe(chunk)}; every chunk must be a 2-D tensor or "
                    "numpy array of shape (rows, n_features)"
                )
            working_dtype(chunk.dtype, name=f"chunk {i} of {self.name}")
            if chunk.ndim != 2 or chunk.shape[1] != self.d:
                raise InputValidationError(
                    f"chunk {i} of {self.name} changed shape between passes ({tuple(chunk.shape)}); the "
                    "chunks must be the same on every pass"
                )
            for s in range(0, int(chunk.shape[0]), rows):
                part = chunk[s : s + rows]
                yield start + s, self._convert(part, f"chunk {i}")
            start += int(chunk.shape[0])
        if start != self.n_rows:
            raise InputValidationError(
                f"{self.name} yielded {start} rows but {self.n_rows} were expected (its declared n_rows, "
                "or the count of the first pass); the chunks must be the same on every pass"
            )

    def take_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of an in-memory source, as a tensor."""
        if self._tensor is None:
            raise ValueError("take_rows needs an in-memory source (a tensor or array)")
        return self._tensor[idx.to(self._tensor.device)].to(self.dtype)

    def compute_in(self, dtype: torch.dtype) -> "RowSource":
        """Yield every block in ``dtype`` from now on (converted block by block: the data itself
        is neither copied nor converted); returns self."""
        self.dtype = dtype
        return self

    def _convert(self, part: Any, where: str) -> torch.Tensor:
        if isinstance(part, np.ndarray):
            part = torch.from_numpy(np.ascontiguousarray(part))
        t = part.detach().to(device=self.device, dtype=self.dtype)
        if self._check_finite_blocks and not bool(torch.isfinite(t).all()):
            raise InputValidationError(
                f"{self.name} ({where}) contains NaN or infinite values; remove or replace them before fitting"
            )
        return t


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputValidationError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) and math.isfinite(value)
