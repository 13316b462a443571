"""Data sets: the built-in ``digits`` and user uploads (``.npz`` / ``.safetensors``), validated.

Upload format (either container; ``.npz`` is read with ``allow_pickle=False``):

- ``x``: inputs, ``(N, *input_shape)``, floating point, or integer images (e.g. uint8) with a
  ``scale`` array (one value, e.g. ``1/255``) that turns them into floats;
- ``y`` (optional): integer class labels ``(N,)`` in ``[0, num_classes)``;
- ``split`` (optional): integer array ``(N,)``, ``0`` = training row, ``1`` = test row. Without
  it every row is a training row and the test set is empty.

Instead of ``x``/``y``/``split`` a file may hold ``x_train``, ``y_train``, ``x_test``, ``y_test``.
The container is recognised from the content (zip of ``.npy`` members or a safetensors header).
Safetensors files and uncompressed ``.npz`` files are memory-mapped, not read into memory
(:mod:`bregman._mmap_data`); integer images are converted to float32 into a temporary file
mapped in turn, so a data set of hundreds of MB costs a worker little memory.

Built in: ``digits`` (scikit-learn's ``load_digits``, imported only when asked for): 1797 8x8
grayscale images, float32 scaled to [0, 1], flattened to ``(N, 64)``, with a fixed stratified
train/test split of 1437/360 rows (``random_state=0``), 10 classes.

:func:`validate_for_teacher` checks a data set against a teacher and raises a
:class:`DatasetError` naming the field (``x``, ``y``, ``split``, ``x_train``) and the expected
value. Flat inputs whose size matches the teacher's input (64 -> 1x8x8) are reshaped.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "DatasetError",
    "load_builtin",
    "load_dataset_file",
    "validate_for_teacher",
]


class DatasetError(ValueError):
    """A data set does not fit; ``field`` names the offending field, ``expected`` what it should be."""

    def __init__(self, field: str, message: str, expected: Any = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.expected = expected


@dataclass
class Dataset:
    """Inputs and optional integer labels, split into training and test rows (torch tensors).

    Attributes
    ----------
    name : str
    x_train, x_test : Tensor (N, *input_shape), float32; ``x_test`` may have 0 rows.
    y_train, y_test : Tensor (N,) int64, or None when the data set has no labels.
    num_classes : int or None
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    num_classes: int | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def has_labels(self) -> bool:
        return self.y_train is not None

    def reshaped(self, input_shape: tuple[int, ...]) -> "Dataset":
        """The same rows with each example reshaped to ``input_shape`` (same number of values)."""
        shape = tuple(input_shape)
        return replace(
            self,
            x_train=self.x_train.reshape(self.n_train, *shape),
            x_test=self.x_test.reshape(self.n_test, *shape),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-able description for listings."""
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "has_labels": self.has_labels,
        }


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=360, stratify=y, random_state=0)
    idx_train.sort()
    idx_test.sort()
    return Dataset(
        "digits",
        torch.from_numpy(x[idx_train]),
        torch.from_numpy(y[idx_train]),
        torch.from_numpy(x[idx_test]),
        torch.from_numpy(y[idx_test]),
        10,
    )


BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    "digits": {
        "description": "scikit-learn digits: 8x8 grayscale handwritten digits, flattened to 64 values in [0, 1]",
        "n_train": 1437,
        "n_test": 360,
        "input_shape": [64],
        "num_classes": 10,
        "loader": _digits,
    },
}


def load_builtin(name: str) -> Dataset:
    """Load a built-in data set by name (see :data:`BUILTIN_DATASETS`)."""
    spec = BUILTIN_DATASETS.get(name)
    if spec is None:
        raise DatasetError("name", f"unknown built-in data set {name!r}", expected=sorted(BUILTIN_DATASETS))
    return spec["loader"]()


# ------------------------------------------------------------------------------ uploads
def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as fh:
        head = fh.read(16)
    size = path.stat().st_size
    if head.startswith(b"PK"):
        # bounded reads (members, sizes, bombs) and .npy headers checked before allocating; never
        # unpickles (the reader refuses object dtypes, as np.load(allow_pickle=False) would)
        from bregman._safe_zip import UnsafeArchiveError, read_npz

        try:
            return read_npz(path)
        except UnsafeArchiveError as exc:
            raise DatasetError("file", str(exc), expected=".npz of bool/int/float arrays (numpy.savez)") from None
        except OSError as exc:
            raise DatasetError("file", f"cannot read the .npz archive: {exc}") from exc
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            from safetensors.numpy import load_file

            try:
                return dict(load_file(str(path)))
            except Exception as exc:
                raise DatasetError("file", f"cannot read the safetensors file: {exc}") from exc
    raise DatasetError("file", "unrecognised data set file", expected=".npz (numpy.savez) or .safetensors with x, y, split")


_ARRAY_NAMES = ({"x", "y", "split", "scale"}, {"x_train", "y_train", "x_test", "y_test", "scale"})


def _check_array_names(arrays: dict[str, np.ndarray]) -> None:
    """Only the arrays a data set uses, with the dtypes they need (checked on the mapped or read
    headers, before any value is touched)."""
    names = set(arrays)
    if not any(names <= allowed for allowed in _ARRAY_NAMES):
        raise DatasetError("file", f"unexpected arrays {sorted(n[:80] for n in names)[:10]}",
                           expected="x, optional y and split; or x_train, y_train, x_test, y_test (and scale)")
    for name, arr in arrays.items():
        if name.startswith(("y", "split")) and (arr.dtype.kind not in "iub" or arr.ndim != 1):
            raise DatasetError(name, f"has dtype {arr.dtype} and shape {list(arr.shape)}", expected="integers, shape (N,)")


def _as_inputs(field: str, arr: np.ndarray, scale: float | None = None) -> torch.Tensor:
    if scale is not None and arr.dtype.kind in "iuf":
        from bregman._mmap_data import scaled_float32

        arr = scaled_float32(arr, scale)
    if arr.dtype.kind != "f":
        raise DatasetError(
            field,
            f"inputs have dtype {arr.dtype}; expected floating point (float32), or integer images with a 'scale' "
            "array (e.g. 1/255 for uint8) in the same file",
            expected="float32",
        )
    if arr.ndim < 2:
        raise DatasetError(field, f"inputs must be (N, *input_shape), got shape {arr.shape}", expected="(N, ...)")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _as_labels(field: str, arr: np.ndarray | None, n: int) -> torch.Tensor | None:
    if arr is None:
        return None
    if arr.dtype.kind not in "iu":
        raise DatasetError(field, f"labels have dtype {arr.dtype}; expected integer class indices", expected="int64")
    if arr.shape != (n,):
        raise DatasetError(field, f"labels have shape {arr.shape}; expected ({n},), one per input row", expected=[n])
    return torch.from_numpy(arr.astype(np.int64))


def load_dataset_file(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Load an uploaded data set (see the module docstring for the layout).

    Raises
    ------
    DatasetError
        Unreadable file, missing ``x``, wrong dtypes or lengths, bad ``split`` values.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError("file", f"{str(path)!r} does not exist")
    arrays = _mapped_or_read(path)
    _check_array_names(arrays)
    scale = _scale(arrays.pop("scale", None))
    name = name or path.stem
    if "x_train" in arrays:
        unknown = sorted(set(arrays) - {"x_train", "y_train", "x_test", "y_test"})  # (scale popped above)
        if unknown:
            raise DatasetError("file", f"unexpected arrays {unknown}", expected=["x_train", "y_train", "x_test", "y_test"])
        x_train = _as_inputs("x_train", arrays["x_train"], scale)
        x_test_arr = arrays.get("x_test")
        x_test = _as_inputs("x_test", x_test_arr, scale) if x_test_arr is not None else x_train[:0]
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DatasetError("x_test", f"per-example shape {tuple(x_test.shape[1:])} differs from x_train's {tuple(x_train.shape[1:])}")
        y_train = _as_labels("y_train", arrays.get("y_train"), x_train.shape[0])
        y_test = _as_labels("y_test", arrays.get("y_test"), x_test.shape[0])
        if (y_train is None) != (y_test is None) and x_test.shape[0]:
            raise DatasetError("y_test", "labels are given for only one of the training and test rows")
        if y_train is not None and y_test is None:
            y_test = y_train[:0]
    else:
        if "x" not in arrays:
            raise DatasetError("x", f"the file holds no 'x' array (found {sorted(arrays)})", expected="x, optional y, split")
        unknown = sorted(set(arrays) - {"x", "y", "split"})
        if unknown:
            raise DatasetError("file", f"unexpected arrays {unknown}", expected=["x", "y", "split"])
        x = _as_inputs("x", arrays["x"], scale)
        n = x.shape[0]
        y = _as_labels("y", arrays.get("y"), n)
        split = arrays.get("split")
        if split is None:
            train = torch.ones(n, dtype=torch.bool)
        else:
            if split.dtype.kind not in "iub" or split.shape != (n,):
                raise DatasetError("split", f"split has dtype {split.dtype} and shape {split.shape}", expected=f"integer array of shape ({n},)")
            bad = np.setdiff1d(np.unique(split), [0, 1])
            if bad.size:
                raise DatasetError("split", f"split holds values {bad.tolist()[:5]}", expected="0 (train) or 1 (test)")
            train = torch.from_numpy(split.astype(np.int64) == 0)
        x_train, x_test = _rows(x, train), _rows(x, ~train)
        y_train = y[train] if y is not None else None
        y_test = y[~train] if y is not None else None
    num_classes = None
    if y_train is not None:
        labels = torch.cat([y_train, y_test]) if y_test is not None else y_train
        num_classes = int(labels.max()) + 1 if labels.numel() else None
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def _mapped_or_read(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays memory-mapped where the container allows it, else read (bounded)."""
    from bregman._mmap_data import mapped_arrays

    try:
        arrays = mapped_arrays(path)
    except ValueError as exc:
        raise DatasetError("file", f"cannot read the data set: {exc}") from None
    return arrays if arrays is not None else _read_arrays(path)


def _scale(arr: np.ndarray | None) -> float | None:
    if arr is None:
        return None
    if arr.dtype.kind not in "fiu" or arr.size != 1:
        raise DatasetError("scale", f"scale must be one number, got dtype {arr.dtype} and shape {arr.shape}",
                           expected="a single positive float, e.g. 1/255")
    value = float(np.asarray(arr).reshape(()))
    if not math.isfinite(value) or value <= 0:
        raise DatasetError("scale", f"scale must be a positive finite number, got {value}", expected="e.g. 1/255")
    return value


def _rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x[mask]``, as a view (no copy of a mapped data set) when the chosen rows are one run."""
    idx = torch.nonzero(mask).flatten()
    if idx.numel() == 0:
        return x[:0]
    first, last = int(idx[0]), int(idx[-1])
    return x[first:last + 1] if last - first + 1 == idx.numel() else x[mask]


def _check_finite(field: str, x: torch.Tensor) -> None:
    # block by block: a mask of the whole data set would cost a byte per value
    rows = max(1, (1 << 22) // max(1, x[:1].numel()))
    for s in range(0, x.shape[0], rows):
        _check_finite_block(field, x[s:s + rows], s)


def _check_finite_block(field: str, x: torch.Tensor, offset: int = 0) -> None:
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        raise DatasetError(
            field, f"row {offset + int(rows[0])} (and {int(rows.numel()) - 1} more in its block) contains NaN or "
                   "infinite values",
            expected="finite values",
        )


def _teacher_num_classes(teacher: Any) -> int | None:
    with torch.no_grad():
        out = teacher.module(teacher.example_input(2))
    return int(out.shape[1]) if out.dim() == 2 else None


def validate_for_teacher(dataset: Dataset, teacher: Any, min_train: int = 10) -> Dataset:
    """Check a data set against a teacher; return it with inputs shaped as the teacher expects.

    Parameters
    ----------
    dataset : Dataset
    teacher : bregman.teachers.Teacher
    min_train : int
        Fewest training rows accepted.

    Raises
    ------
    DatasetError
        ``x`` / ``x_train`` / ``x_test`` (shape, dtype, NaN/inf, size) or ``y`` (label range),
        with the expected value.
    """
    want = tuple(teacher.input_shape)
    for field, x in (("x_train", dataset.x_train), ("x_test", dataset.x_test)):
        if not x.is_floating_point():
            raise DatasetError(field, f"inputs have dtype {x.dtype}", expected="float32")
    got = dataset.input_shape
    if got != want:
        if math.prod(got) == math.prod(want):
            dataset = dataset.reshaped(want)
        else:
            raise DatasetError(
                "x", f"examples have shape {list(got)} but the teacher takes {list(want)}", expected=list(want)
            )
    if dataset.n_train < min_train:
        raise DatasetError("x_train", f"only {dataset.n_train} training rows", expected=f"at least {min_train}")
    _check_finite("x_train", dataset.x_train)
    if dataset.n_test:
        _check_finite("x_test", dataset.x_test)
    if dataset.y_train is not None:
        n_classes = _teacher_num_classes(teacher)
        if n_classes is not None:
            for field, y in (("y_train", dataset.y_train), ("y_test", dataset.y_test)):
                if y is None or not y.numel():
                    continue
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or hi >= n_classes:
                    raise DatasetError(
                        "y", f"{field} holds labels from {lo} to {hi} but the teacher has {n_classes} outputs",
                        expected=f"integers in [0, {n_classes - 1}]",
                    )
            if dataset.num_classes is None or dataset.num_classes < n_classes:
                dataset = replace(dataset, num_classes=n_classes)
    return dataset

