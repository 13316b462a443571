"""Load a job's inputs from the records and the blob store (worker side only: imports torch)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from storage.blobs import BlobStore
from storage.config import Settings
from storage.models import Dataset, Teacher

_TEACHER_SUFFIX = {"pt2": ".pt2", "safetensors": ".safetensors", "state_dict": ".pt"}
_DATASET_SUFFIX = {"npz": ".npz", "safetensors": ".safetensors"}


def _named_link(settings: Settings, sha256: str, suffix: str) -> Path:
    """A path with the right suffix pointing at a blob (loaders that look at suffixes see one)."""
    blobs = BlobStore(settings.blob_dir)
    links = settings.scratch_dir / "links"
    links.mkdir(parents=True, exist_ok=True)
    link = links / f"{sha256}{suffix}"
    if not link.exists():
        tmp = links / f".{sha256}.{os.getpid()}{suffix}"
        tmp.unlink(missing_ok=True)
        os.symlink(blobs.path(sha256), tmp)
        os.replace(tmp, link)
    return link


def load_teacher_record(settings: Settings, record: Teacher):
    from bregman.teachers import load_teacher

    path = _named_link(settings, record.sha256, _TEACHER_SUFFIX.get(record.format, ""))
    return load_teacher(path, manifest=record.manifest)


def load_dataset_record(settings: Settings, record: Dataset):
    from bregman.datasets import load_builtin, load_dataset_file

    if record.builtin:
        return load_builtin(record.name)
    path = _named_link(settings, record.sha256, _DATASET_SUFFIX.get(record.format or "", ""))
    return load_dataset_file(path)


def dataset_summary(ds: Any) -> dict[str, Any]:
    """The record fields of a loaded data set."""
    return {
        "input_shape": [int(s) for s in ds.x_train.shape[1:]],
        "num_classes": int(ds.num_classes) if ds.num_classes is not None else None,
        "n_train": int(ds.x_train.shape[0]),
        "n_test": int(ds.x_test.shape[0]) if ds.x_test is not None else 0,
        "has_labels": ds.y_train is not None,
    }


def subsample(x: torch.Tensor, y: torch.Tensor | None, max_rows: int | None, seed: int):
    """At most ``max_rows`` rows, chosen by a seeded permutation (reproducible per seed)."""
    if max_rows is None or x.shape[0] <= max_rows:
        return x, y
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:max_rows]
    return x[idx], (y[idx] if y is not None else None)


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("the job asks for device 'cuda' but this worker has no CUDA device; use device 'cpu'")
    return torch.device(name)
