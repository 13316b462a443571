"""Fault injection for the sandbox tests, imported by the sandbox child through
``BREGKD_SANDBOX_PRELOAD=tests.security._sandbox_faults`` (also by a real worker's children in the
end-to-end test). A file whose first 64 KB hold ``BREGKD-FAULT:<action>`` makes the loader:

- ``kill``: SIGKILL its own process (what the kernel's OOM killer does);
- ``segv``: dereference a null pointer (a crashing native loader);
- ``hang``: sleep for an hour (a loader that never ends);
- ``boom``: raise an unexpected error whose text holds a traceback and server paths;
- ``vpath``: raise a user error (ValueError) whose text names a server path.

Any other file loads normally.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time

import bregman.datasets as _datasets
import bregman.teachers as _teachers

MARKER = b"BREGKD-FAULT:"
SECRET_PATH = "/work/secret/bregkd/loader.py"


def fault(path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(65536)
    at = head.find(MARKER)
    if at < 0:
        return
    action = head[at + len(MARKER): at + len(MARKER) + 5]
    if action.startswith(b"kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith(b"segv"):
        ctypes.string_at(0)
    if action.startswith(b"hang"):
        time.sleep(3600)
    if action.startswith(b"boom"):
        raise RuntimeError(
            f"boom\nTraceback (most recent call last):\n  File \"{SECRET_PATH}\", line 1\n"
            "  File \"/usr/lib/python3/site-packages/torch/serialization.py\", line 2"
        )
    if action.startswith(b"vpath"):
        raise ValueError(f"cannot parse {SECRET_PATH}: the weights are damaged")


def _wrap(fn):
    def wrapped(path, *args, **kwargs):
        fault(path)
        return fn(path, *args, **kwargs)

    return wrapped


_teachers.load_teacher = _wrap(_teachers.load_teacher)
_datasets.load_dataset_file = _wrap(_datasets.load_dataset_file)
