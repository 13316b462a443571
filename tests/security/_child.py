"""Run one loader call in a fresh spawned process and report its peak memory and its outcome.

``run_in_child("bregman.teachers:load_teacher", path)`` imports the function in a new interpreter
(spawn: nothing inherited from the test process, so the peak is the loader's own), calls it,
and returns a :class:`ChildResult` with ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in bytes,
the exception's type and text (None when it returned) and a short repr of what it returned.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import resource
from dataclasses import dataclass
from typing import Any


@dataclass
class ChildResult:
    peak_bytes: int
    error_type: str | None
    error: str | None
    value: str | None


def _target(spec: str, args: tuple, kwargs: dict, queue: Any) -> None:
    import torch

    torch.set_num_threads(1)
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name)
    error_type = error = value = None
    try:
        value = repr(fn(*args, **kwargs))[:200]
    except BaseException as exc:  # report every outcome, MemoryError included
        error_type, error = type(exc).__name__, str(exc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    queue.put(ChildResult(peak, error_type, error, value))


def run_in_child(spec: str, *args: Any, timeout: float = 300, **kwargs: Any) -> ChildResult:
    """Call ``module:function(*args, **kwargs)`` in a spawned child; raise if it dies or hangs."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_target, args=(spec, args, kwargs, queue))
    proc.start()
    try:
        result = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return result
