"""Load a job's inputs from the records and the blob store (worker side only: imports torch).

A user's file is first opened in a sandbox child (:mod:`workers.sandbox`) under memory and time
limits: :func:`inspect_teacher_record` / :func:`inspect_dataset_record` do all of an inspection
there, and :func:`load_teacher_record` / :func:`load_dataset_record` (a job's inputs) load the file
in this process only after a child has loaded the same file under the limits in this process's
lifetime (the same code on the same immutable blob, so it costs here what it cost there).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from storage.blobs import BlobStore
from storage.config import Settings
from storage.models import Dataset, Teacher
from workers.sandbox import dataset_summary  # noqa: F401  (the one definition; the sandbox child needs it light)

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


#: (kind, sha256, manifest) of the files a sandbox child loaded under the limits in this process
_VETTED: set[tuple[str, str, str]] = set()


def _limits(settings: Settings):
    from workers.sandbox import SandboxLimits

    return SandboxLimits.from_env(settings.max_upload_bytes)


def _teacher_path(settings: Settings, record: Teacher) -> Path:
    return _named_link(settings, record.sha256, _TEACHER_SUFFIX.get(record.format, ""))


def _dataset_path(settings: Settings, record: Dataset) -> Path:
    return _named_link(settings, record.sha256, _DATASET_SUFFIX.get(record.format or "", ""))


def inspect_teacher_record(settings: Settings, record: Teacher) -> dict[str, Any]:
    """Load the teacher in a sandbox child and list its layers; raises ``SandboxFailure``."""
    from workers.sandbox import run_in_sandbox

    kwargs = {"path": str(_teacher_path(settings, record)), "manifest": record.manifest}
    return run_in_sandbox("workers.sandbox:inspect_teacher_file", kwargs, what="loading the teacher",
                          limits=_limits(settings)).value


def inspect_dataset_record(settings: Settings, record: Dataset) -> dict[str, Any]:
    """Load an uploaded data set in a sandbox child; its record fields. Raises ``SandboxFailure``."""
    from workers.sandbox import run_in_sandbox

    return run_in_sandbox("workers.sandbox:inspect_dataset_file", {"path": str(_dataset_path(settings, record))},
                          what="loading the data set", limits=_limits(settings)).value


def load_teacher_record(settings: Settings, record: Teacher):
    from bregman.teachers import load_teacher
    from workers.sandbox import run_in_sandbox

    path = _teacher_path(settings, record)
    key = ("teacher", record.sha256, json.dumps(record.manifest, sort_keys=True, default=str))
    if key not in _VETTED:
        run_in_sandbox("workers.sandbox:check_teacher_file", {"path": str(path), "manifest": record.manifest},
                       what="loading the teacher", limits=_limits(settings))
        _VETTED.add(key)
    return load_teacher(path, manifest=record.manifest)


def load_dataset_record(settings: Settings, record: Dataset):
    from bregman.datasets import load_builtin, load_dataset_file
    from workers.sandbox import run_in_sandbox

    if record.builtin:
        return load_builtin(record.name)
    path = _dataset_path(settings, record)
    key = ("dataset", record.sha256, "")
    if key not in _VETTED:
        run_in_sandbox("workers.sandbox:inspect_dataset_file", {"path": str(path)}, what="loading the data set",
                       limits=_limits(settings))
        _VETTED.add(key)
    return load_dataset_file(path)


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
