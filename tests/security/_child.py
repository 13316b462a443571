"""Run loader calls in a fresh spawned process and report peak memory and outcome of each.

``run_in_child("bregman.teachers:load_teacher", path)`` imports the function in a new interpreter
(spawn: nothing inherited from the test process, so the peak is the loader's own), calls it and
returns a :class:`ChildResult`: the child's own peak resident memory in bytes (``VmHWM`` of
its address space: ``ru_maxrss`` would not do, Linux carries it across ``execve`` from the
forking test process, so every child of a 1 GB test runner would read 1 GB), the exception's
type and text (None when it returned) and a short repr of the return value.

:func:`run_many_in_child` makes several calls in one child (one interpreter start instead of
many): the peak is a high-water mark, so the peak read after each call bounds that call and
all before it. Put a clean load first and compare the later peaks with its peak.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import queue as queue_module
import time
from dataclasses import dataclass
from typing import Any

from workers.sandbox import vm_hwm

Call = tuple[str, tuple, dict]


@dataclass
class ChildResult:
    peak_bytes: int
    error_type: str | None
    error: str | None
    value: str | None


def _target(calls: list[Call], queue: Any) -> None:
    import torch

    torch.set_num_threads(1)
    results = []
    for spec, args, kwargs in calls:
        module, _, name = spec.partition(":")
        fn = getattr(importlib.import_module(module), name)
        error_type = error = value = None
        try:
            value = repr(fn(*args, **kwargs))[:200]
        except BaseException as exc:  # report every outcome, MemoryError included
            error_type, error = type(exc).__name__, str(exc)
        peak = vm_hwm()  # the one VmHWM reader (workers.sandbox); 0 would mean /proc cannot tell
        if peak <= 0:
            raise RuntimeError("no VmHWM in /proc/self/status: the child's peak memory cannot be measured")
        results.append(ChildResult(peak, error_type, error, value))
    queue.put(results)


def run_many_in_child(calls: list[Call], timeout: float = 300) -> list[ChildResult]:
    """Make each ``(module:function, args, kwargs)`` call in order in one spawned child."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_target, args=(calls, queue))
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return queue.get(timeout=1)
            except queue_module.Empty:
                if not proc.is_alive() and queue.empty():
                    raise RuntimeError(f"the child died with exit code {proc.exitcode} (killed for memory?)") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the child ran past {timeout} s") from None
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def run_in_child(spec: str, *args: Any, timeout: float = 300, **kwargs: Any) -> ChildResult:
    """Call ``module:function(*args, **kwargs)`` in a spawned child."""
    return run_many_in_child([(spec, args, kwargs)], timeout)[0]
