"""Load and inspect users' files in a child process with memory and time limits.

Every teacher and data set is hostile until a child process has loaded it under limits. The
worker starts ``python -m workers.sandbox`` (a fresh interpreter: no fork of a worker that holds
threads, database connections or CUDA), which sets ``RLIMIT_DATA`` (heap and anonymous memory:
what a bomb or a huge model allocates), a coarser ``RLIMIT_AS`` and ``RLIMIT_CPU`` on itself before
importing torch, runs one of our functions on the file and writes its result as JSON. The worker
waits with a wall-clock deadline and kills the child's process group past it. Whatever the file
does (allocates too much, loops, crashes the interpreter) ends that child only: the worker
survives, and the teacher, data set or job that needed the file fails with a
:class:`SandboxFailure` whose message says which limit it hit. Other jobs lose nothing.

The child's peak memory is its ``VmHWM`` (the high-water mark of its own address space), which it
reports itself and which the parent also samples from ``/proc/<pid>/status`` while it waits (so a
killed child has one too). Not ``ru_maxrss`` from ``wait4``: Linux carries the maximum over
``exec``, and the child starts as a copy of the worker, so that number is the worker's size.

What crosses back is plain JSON produced by our code (numbers, lists, strings), read with a size
bound; nothing is unpickled, so even a compromised child could only hand back wrong numbers.

Limits (environment; defaults sized to the upload limit ``BREGKD_MAX_UPLOAD_BYTES``, U):

==============================  ====================================  ==========================
``BREGKD_SANDBOX_MEMORY_BYTES``  heap + anonymous memory of the child   4 U + 1 GiB (9 GiB at 2 GiB)
``BREGKD_SANDBOX_TIME_S``        wall-clock seconds                     60 + 60 per GiB of U, <= 240
``BREGKD_SANDBOX_THREADS``       torch/OpenMP threads in the child      2
==============================  ====================================  ==========================

The memory default covers the worst legal case: a data set of float16 inputs converted to float32
(2 U) and split into training and test rows (another 2 U), plus the interpreter and torch (about
250 MB). ``BREGKD_SANDBOX_PRELOAD`` (module names, comma-separated) is imported by the child
before it runs: a fault-injection hook for tests of the real stack, unused in production.

Public names: :class:`SandboxLimits`, :class:`SandboxFailure`, :class:`SandboxResult`,
:func:`run_in_sandbox`, :func:`vm_hwm`, the child functions :func:`inspect_teacher_file`,
:func:`check_teacher_file`, :func:`inspect_dataset_file`, and for every text a client sees:
:func:`client_message`, :func:`public_error`, :func:`new_error_id`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "SandboxFailure",
    "SandboxLimits",
    "SandboxResult",
    "check_teacher_file",
    "client_message",
    "dataset_summary",
    "inspect_dataset_file",
    "inspect_teacher_file",
    "new_error_id",
    "public_error",
    "run_in_sandbox",
    "vm_hwm",
]

GiB = 1024**3
#: largest result a child may hand back (a layer listing of a ResNet-110 is ~100 KB)
MAX_RESULT_BYTES = 64 * 1024 * 1024
#: the child's address space may exceed its data limit by this much (shared libraries, thread
#: stacks and the PROT_NONE arena reservations of glibc count there but hold no memory)
ADDRESS_SPACE_SLACK = 8 * GiB
_REPO_ROOT = Path(__file__).resolve().parents[1]
_MEMORY_WORDS = ("can't allocate memory", "unable to allocate", "out of memory", "bad_alloc", "cannot allocate memory")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    return value if value > 0 else default


@dataclass(frozen=True)
class SandboxLimits:
    """Memory (bytes of heap and anonymous mappings), wall-clock seconds and threads of one child."""

    memory_bytes: int
    time_s: float
    threads: int = 2

    @classmethod
    def from_env(cls, max_upload_bytes: int | None = None) -> "SandboxLimits":
        """The limits from ``BREGKD_SANDBOX_*``, with defaults derived from the upload limit."""
        if max_upload_bytes is None:
            max_upload_bytes = int(_env_number("BREGKD_MAX_UPLOAD_BYTES", 2 * GiB))
        memory = 4 * max_upload_bytes + GiB
        seconds = min(240.0, 60.0 + 60.0 * max_upload_bytes / GiB)
        return cls(
            memory_bytes=int(_env_number("BREGKD_SANDBOX_MEMORY_BYTES", memory)),
            time_s=_env_number("BREGKD_SANDBOX_TIME_S", seconds),
            threads=int(_env_number("BREGKD_SANDBOX_THREADS", 2)),
        )


@dataclass(frozen=True)
class SandboxResult:
    """What the child returned, and what it cost (its peak resident memory, ``VmHWM``)."""

    value: Any
    peak_rss_bytes: int
    wall_s: float


class SandboxFailure(Exception):
    """The child could not do its work; ``str(exc)`` is a one-line message meant for the user.

    ``kind`` is ``"invalid"`` (the file or manifest is unusable: the library's own message),
    ``"memory"``, ``"time"``, ``"crash"`` or ``"internal"`` (a bug of ours; ``error_id`` points at
    the worker's log, where the child's traceback is).
    """

    def __init__(self, kind: str, message: str, peak_rss_bytes: int = 0, error_id: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.peak_rss_bytes = peak_rss_bytes
        self.error_id = error_id


# ------------------------------------------------------------------------ client-safe text
_PATH = re.compile(r"(?<![\w.~:/])/(?:[\w.@+~-]+/)+[\w.@+~-]*")  # /a/b...; not URLs, not "x / 255"
_PACKAGE_PATH = re.compile(r"[\w.@+~/-]*(?:site-packages|dist-packages)[\w.@+~/-]*")


def new_error_id() -> str:
    """A short id that ties a client's message to the worker log's traceback."""
    return f"err_{uuid.uuid4().hex[:12]}"


def client_message(text: str, limit: int = 2000) -> str | None:
    """The text on one line with every server path replaced by ``<path>``; None when it is a
    traceback (not meant for a client at all)."""
    if "Traceback (most recent call last)" in text or 'File "' in text:
        return None
    text = _PACKAGE_PATH.sub("<path>", _PATH.sub("<path>", text))
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def internal_message(error_id: str, doing: str) -> str:
    return f"internal error {error_id} {doing}; the operators have the details"


def public_error(exc: BaseException, doing: str) -> str:
    """The message to store on a record for a failure ``doing`` (e.g. "while inspecting the
    teacher"): the user's own input errors (``ValueError`` and its library subclasses) and sandbox
    limits as one clean line; anything else logged with its traceback under a new error id."""
    if isinstance(exc, SandboxFailure):
        return str(exc)
    if isinstance(exc, ValueError):
        text = client_message(str(exc).strip() or type(exc).__name__)
        if text is not None:
            return text
    error_id = new_error_id()
    logger.error("%s %s:\n%s", error_id, doing, "".join(traceback.format_exception(exc)))
    return internal_message(error_id, doing)


# ------------------------------------------------------------------------------- the parent
def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 1024**2:.0f} MiB"


def _read_result(path: Path) -> dict[str, Any] | None:
    if not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
        return None
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _child_env(limits: SandboxLimits) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(max(1, limits.threads))
    # no GPU: loading and inspecting run on the CPU, and a CUDA context would reserve more address
    # space than RLIMIT_AS leaves
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p))
    return env


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_in_sandbox(target: str, kwargs: dict[str, Any], *, what: str = "loading the file",
                   limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``target`` (``"module:function"``, one of ours) with JSON-able ``kwargs`` in a child.

    Parameters
    ----------
    what : how the messages name the work, e.g. ``"loading the teacher"``.
    limits : None reads :meth:`SandboxLimits.from_env`.

    Returns
    -------
    SandboxResult
        The function's JSON-able return value and the child's peak memory.

    Raises
    ------
    SandboxFailure
        The function raised a ``ValueError`` (kind ``"invalid"``, its message), ran out of memory,
        out of time, crashed, or failed unexpectedly (``"internal"``, logged with an error id).
    """
    limits = limits or SandboxLimits.from_env()
    with tempfile.TemporaryDirectory(prefix="bregkd-sandbox-") as tmp:
        tmpdir = Path(tmp)
        request = {
            "target": target, "kwargs": kwargs, "result": str(tmpdir / "result.json"),
            "memory_bytes": int(limits.memory_bytes), "time_s": float(limits.time_s), "threads": int(limits.threads),
        }
        (tmpdir / "request.json").write_text(json.dumps(request))
        started = time.monotonic()
        with open(tmpdir / "child.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.sandbox", str(tmpdir / "request.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_child_env(limits),
                cwd=str(tmpdir), start_new_session=True, close_fds=True,
            )
        status, sampled, timed_out = _wait(proc, started + limits.time_s)
        wall = time.monotonic() - started
        result = _read_result(tmpdir / "result.json")
        reported = result.get("peak_rss_bytes") if result is not None else None
        peak = max(sampled, reported if isinstance(reported, int) else 0)
        log_tail = (tmpdir / "child.log").read_bytes()[-20000:].decode("utf-8", "replace")
    return _outcome(result, status, peak, wall, timed_out, limits, what, log_tail)


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident memory (``VmHWM``) of a live process in bytes; 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _wait(proc: subprocess.Popen, deadline: float) -> tuple[int, int, bool]:
    """Reap the child, sampling its peak memory while it runs; kill its group past the deadline
    (and on any exception in this thread, e.g. a job's asynchronous cancel)."""
    pause, timed_out, peak = 0.005, False, 0
    try:
        while True:
            peak = max(peak, vm_hwm(proc.pid))
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                peak = max(peak, vm_hwm(proc.pid))
                _kill_group(proc.pid)
                pid, status, _ = os.wait4(proc.pid, 0)
                break
            time.sleep(pause)
            pause = min(0.05, pause * 1.5)
    except BaseException:
        _kill_group(proc.pid)
        try:
            os.wait4(proc.pid, 0)
        except ChildProcessError:
            pass
        proc.returncode = -9
        raise
    _kill_group(proc.pid)  # anything the child left behind in its group
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, peak, timed_out


def _outcome(result: dict[str, Any] | None, status: int, peak: int, wall: float, timed_out: bool,
             limits: SandboxLimits, what: str, log_tail: str) -> SandboxResult:
    mem = _gib(limits.memory_bytes)
    if timed_out:
        raise SandboxFailure("time", f"{what} took longer than {limits.time_s:g} s (BREGKD_SANDBOX_TIME_S) and was "
                             "stopped; the file may be too large for this service", peak)
    if result is not None and result.get("ok") is True:
        return SandboxResult(result.get("value"), peak, wall)
    if result is not None:
        kind = result.get("kind")
        if kind == "invalid":
            return _raise("invalid", str(result.get("message") or "the file cannot be used"), peak)
        if kind == "memory":
            return _raise("memory", f"{what} used more than {mem} of memory (BREGKD_SANDBOX_MEMORY_BYTES); the file is "
                          "too large, or built to be", peak)
        error_id = new_error_id()
        logger.error("%s: %s failed in its sandbox:\n%s", error_id, what, log_tail)
        return _raise("internal", internal_message(error_id, f"while {what}"), peak, error_id)
    # no result: the interpreter itself died
    sig = -os.waitstatus_to_exitcode(status) if os.WIFSIGNALED(status) else None
    if sig == signal.SIGXCPU:
        return _raise("time", f"{what} used more CPU time than allowed ({limits.time_s:g} s per thread) and was stopped",
                      peak)
    if peak >= 0.9 * limits.memory_bytes or "bad_alloc" in log_tail or "MemoryError" in log_tail:
        return _raise("memory", f"{what} used more than {mem} of memory (BREGKD_SANDBOX_MEMORY_BYTES) and its process "
                      "was stopped", peak)
    error_id = new_error_id()
    how = f"signal {sig} ({signal.Signals(sig).name})" if sig else f"exit status {os.waitstatus_to_exitcode(status)}"
    logger.error("%s: %s crashed its sandbox (%s); its output:\n%s", error_id, what, how, log_tail)
    return _raise("crash", f"{what} crashed the process that loaded it ({how}, {error_id}); the file may be "
                  "damaged or need more memory than a worker allows", peak, error_id)


def _raise(kind: str, message: str, peak: int, error_id: str | None = None) -> SandboxResult:
    raise SandboxFailure(kind, message, peak, error_id)


# -------------------------------------------------------------------------------- the child
def _set_limits(memory_bytes: int, time_s: float, threads: int) -> None:
    import resource

    def lower(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    lower(resource.RLIMIT_DATA, int(memory_bytes))
    lower(resource.RLIMIT_AS, int(memory_bytes) + ADDRESS_SPACE_SLACK)
    # CPU seconds of all threads together: the wall-clock deadline is the real limit, this one
    # stops a child whose parent died
    lower(resource.RLIMIT_CPU, int(math.ceil(time_s * max(1, threads))) + 5)
    lower(resource.RLIMIT_CORE, 0)


def _is_memory_error(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, ValueError, OSError)) and any(w in text for w in _MEMORY_WORDS)


def _write_result(path: str, value: dict[str, Any]) -> None:
    value["peak_rss_bytes"] = vm_hwm()
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _child_main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    _set_limits(request["memory_bytes"], request["time_s"], request["threads"])
    out = request["result"]
    try:
        import importlib

        for name in filter(None, (m.strip() for m in os.environ.get("BREGKD_SANDBOX_PRELOAD", "").split(","))):
            importlib.import_module(name)
        module, _, func = request["target"].partition(":")
        fn = getattr(importlib.import_module(module), func)
        import torch

        torch.set_num_threads(max(1, int(request["threads"])))
        value = fn(**request["kwargs"])
        _write_result(out, {"ok": True, "value": value})
    except BaseException as exc:  # noqa: BLE001 - everything is reported; the parent decides
        if _is_memory_error(exc):
            traceback.clear_frames(exc.__traceback__)  # free what the frames hold before writing
            result = {"ok": False, "kind": "memory"}
        elif isinstance(exc, ValueError) and (text := client_message(str(exc).strip() or type(exc).__name__)):
            result = {"ok": False, "kind": "invalid", "message": text}
        else:
            traceback.print_exc()
            result = {"ok": False, "kind": "internal"}
        try:
            _write_result(out, result)
        except MemoryError:
            return 3
        return 1
    return 0


# ------------------------------------------------------- what the child runs (JSON in and out)
def inspect_teacher_file(path: str, manifest: Any = None) -> dict[str, Any]:
    """Load a teacher and list its layers: the record fields of an inspected teacher."""
    from bregman.layers import list_layers
    from bregman.teachers import load_teacher

    teacher = load_teacher(path, manifest=manifest)
    layers = [info.to_dict() for info in list_layers(teacher, teacher.example_input())]
    mark_auto_transfer(teacher, layers)
    return {
        "layers": json.loads(json.dumps(layers, default=str)),
        "parameter_count": int(teacher.parameter_count),
        "input_shape": [int(s) for s in teacher.input_shape],
        "format": teacher.format,
    }


def mark_auto_transfer(teacher: Any, layers: list[dict[str, Any]]) -> None:
    """Say in the listing what ``transfer: auto`` fits at each layer, so that the two agree: the
    output layer's listed transfer is the identity, but ``auto`` fits its softmax (the paper's choice)."""
    from bregman.distillation.cut import resolve_cut

    for layer in layers:
        layer["auto_transfer"] = layer.get("transfer") if layer.get("tappable") else None
    identity = [layer for layer in layers if layer["auto_transfer"] == "identity"]
    if identity:  # only the last such layer can be the output layer, whose head is the identity
        last = identity[-1]
        last["auto_transfer"] = resolve_cut(teacher, last["path"], teacher.example_input()).transfer.name


def check_teacher_file(path: str, manifest: Any = None) -> dict[str, Any]:
    """Load a teacher and run one batch through it (what a job does first)."""
    import torch

    from bregman.teachers import load_teacher

    teacher = load_teacher(path, manifest=manifest)
    with torch.no_grad():
        teacher.module(teacher.example_input(2))
    return {"parameter_count": int(teacher.parameter_count), "input_shape": [int(s) for s in teacher.input_shape]}


def inspect_dataset_file(path: str) -> dict[str, Any]:
    """Load a data set: the record fields of an inspected data set."""
    from bregman.datasets import load_dataset_file

    return dataset_summary(load_dataset_file(path))


def dataset_summary(ds: Any) -> dict[str, Any]:
    """The record fields of a loaded data set."""
    return {
        "input_shape": [int(s) for s in ds.x_train.shape[1:]],
        "num_classes": int(ds.num_classes) if ds.num_classes is not None else None,
        "n_train": int(ds.x_train.shape[0]),
        "n_test": int(ds.x_test.shape[0]) if ds.x_test is not None else 0,
        "has_labels": ds.y_train is not None,
    }


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
